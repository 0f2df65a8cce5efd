"""MemOS's `{code, message, data}` envelope."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    code: int = 200
    message: str = "ok"
    data: T | None = None


def ok(data: Any, message: str = "ok") -> dict[str, Any]:
    return {"code": 200, "message": message, "data": data}


def error_body(
    status: int, message: str, detail: Any = None, request_id: str | None = None
) -> dict[str, Any]:
    """MemOS's error envelope; `request_id` (memos-ray's) names the server's log lines."""
    body: dict[str, Any] = {"code": status, "message": message, "data": None}
    if detail is not None:
        body["detail"] = detail
    if request_id is not None:
        body["request_id"] = request_id
    return body
