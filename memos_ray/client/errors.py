"""The client's exceptions: one hierarchy, by HTTP status. Its own module, so that the client
needs nothing of the server package."""

from __future__ import annotations


class MemosClientError(Exception):
    """An error answer of the service (or no answer at all: `status_code` 0)."""

    status_code: int = 0

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class ConnectError(MemosClientError):
    """The service could not be reached (after the retries)."""


class BadRequestError(MemosClientError):
    status_code = 400


class UnauthorizedError(MemosClientError):
    status_code = 401


class ForbiddenError(MemosClientError):
    status_code = 403


class NotFoundError(MemosClientError):
    status_code = 404


class ConflictError(MemosClientError):
    status_code = 409


class PayloadTooLargeError(MemosClientError):
    status_code = 413


class RateLimitedError(MemosClientError):
    """429 after the retries: the service's queue stayed full."""

    status_code = 429


class ServiceUnavailableError(MemosClientError):
    """503 after the retries: a part of the service stayed down."""

    status_code = 503


class ServerError(MemosClientError):
    status_code = 500


BY_STATUS: dict[int, type[MemosClientError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: BadRequestError,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}


def error_for(status: int, message: str) -> MemosClientError:
    kind = BY_STATUS.get(status) or (ServerError if status >= 500 else MemosClientError)
    return kind(message, status)
