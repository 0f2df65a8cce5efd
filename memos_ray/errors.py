"""One exception hierarchy; the API maps each class to its HTTP status."""

from __future__ import annotations


class MemosError(Exception):
    """Base of every error memos-ray raises on purpose."""

    status_code: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(MemosError):
    status_code = 400


class FilterError(BadRequestError):
    """The filter DSL was malformed (unknown operator, wrong shape)."""


class UnauthorizedError(MemosError):
    status_code = 401


class ForbiddenError(MemosError):
    status_code = 403


class NotFoundError(MemosError):
    status_code = 404


class ConflictError(MemosError):
    status_code = 409


class PayloadTooLargeError(MemosError):
    status_code = 413


class RequestTooLargeError(PayloadTooLargeError):
    """A store cannot take one request this large (the embedded FalkorDB: 3,000 bytes, query
    included); the caller narrows it, typically its filter."""


class ServiceUnavailableError(MemosError):
    """A part the request needs is not running or not configured (starting, no LLM, ...)."""

    status_code = 503


class StoreError(MemosError):
    """A backing store failed; nothing the caller did wrong."""

    status_code = 500


class ConfigError(MemosError):
    """The configuration cannot be turned into running backends."""
