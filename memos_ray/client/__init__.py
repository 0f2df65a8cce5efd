"""memos-ray's Python client: sync and async, typed answers, retries on 429 / 503.

Importing it needs only httpx and pydantic: nothing of the server (no torch, Ray or stores).
"""

from memos_ray.client.asynchronous import AsyncMemosClient
from memos_ray.client.calls import Backoff
from memos_ray.client.errors import (
    BadRequestError,
    ConflictError,
    ConnectError,
    ForbiddenError,
    MemosClientError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    UnauthorizedError,
)
from memos_ray.client.models import (
    AddedMemory,
    ChatAnswer,
    ChatFrame,
    Cube,
    Deleted,
    Grant,
    Memory,
    MemoryBuckets,
    NewKey,
    Record,
)
from memos_ray.client.sync import MemosClient

__all__ = [
    "AddedMemory",
    "AsyncMemosClient",
    "Backoff",
    "BadRequestError",
    "ChatAnswer",
    "ChatFrame",
    "ConflictError",
    "ConnectError",
    "Cube",
    "Deleted",
    "ForbiddenError",
    "Grant",
    "Memory",
    "MemoryBuckets",
    "MemosClient",
    "MemosClientError",
    "NewKey",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "Record",
    "ServerError",
    "ServiceUnavailableError",
    "UnauthorizedError",
]
