"""`MemosClient`: the synchronous client (httpx)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from memos_ray.client import calls
from memos_ray.client.calls import RETRY_STATUSES, Backoff, Call
from memos_ray.client.errors import ConnectError
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

T = TypeVar("T")


def _settings(base_url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    base_url = base_url or os.environ.get("MEMOS_URL") or "http://127.0.0.1:8000"
    api_key = api_key or os.environ.get("MEMOS_API_KEY")
    return base_url, ({"Authorization": f"Bearer {api_key}"} if api_key else {})


class MemosClient:
    """Calls return typed answers; an error status raises the matching MemosClientError,
    after `backoff.retries` retries for 429, 503 and connection errors."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        backoff: Backoff | None = None,
    ) -> None:
        url, headers = _settings(base_url, api_key)
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self.backoff = backoff or Backoff()

    def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, json=call.json, params=call.query()
                )
            except httpx.TransportError as exc:
                if attempt >= self.backoff.retries:
                    raise ConnectError(f"{self._http.base_url} not reachable: {exc!r}") from exc
                time.sleep(self.backoff.delay(attempt))
                attempt += 1
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.backoff.retries:
                time.sleep(self.backoff.delay(attempt, response.headers.get("retry-after")))
                attempt += 1
                continue
            if response.status_code >= 400:
                raise calls.error_of(response.status_code, response.content, response.reason_phrase)
            return call.parse(calls.data_of(response.content))

    def health(self) -> Record:
        return self._send(calls.health())

    def add(
        self,
        user_id: str,
        messages: str | list[dict[str, Any]],
        cube_id: str | None = None,
        **fields: Any,
    ) -> list[AddedMemory]:
        return self._send(calls.add(user_id, messages, cube_id, fields))

    def search(
        self, user_id: str, query: str, cube_ids: list[str] | None = None, **fields: Any
    ) -> MemoryBuckets:
        return self._send(calls.search(user_id, query, cube_ids, fields))

    def chat(
        self, user_id: str, query: str, cube_ids: list[str] | None = None, **fields: Any
    ) -> ChatAnswer:
        return self._send(calls.chat(user_id, query, cube_ids, fields))

    def chat_stream(
        self, user_id: str, query: str, cube_ids: list[str] | None = None, **fields: Any
    ) -> Iterator[ChatFrame]:
        """`/product/chat/stream` frames, as they come (not retried: a stream is not
        repeated behind the caller's back)."""
        body = calls.chat_body(user_id, query, cube_ids, fields)
        with self._http.stream("POST", "/product/chat/stream", json=body) as response:
            if response.status_code >= 400:
                response.read()
                raise calls.error_of(response.status_code, response.content, response.reason_phrase)
            for line in response.iter_lines():
                frame = calls.frame_of(line)
                if frame is not None:
                    yield frame

    def get_memory(self, user_id: str, cube_id: str | None = None, **fields: Any) -> MemoryBuckets:
        return self._send(calls.get_memory(user_id, cube_id, fields))

    def get_memory_by_id(self, memory_id: str, user_id: str | None = None) -> Memory:
        """NotFoundError for an id unknown, deleted, or in a cube this key may not read."""
        return self._send(calls.get_memory_by_id(memory_id, user_id))

    def get_memory_by_ids(self, memory_ids: list[str], user_id: str | None = None) -> list[Memory]:
        return self._send(calls.get_memory_by_ids(memory_ids, user_id))

    def get_all(self, user_id: str, cube_ids: list[str] | None = None, **fields: Any) -> Any:
        return self._send(calls.get_all(user_id, cube_ids, fields))

    def delete_memory(self, user_id: str, cube_id: str | None = None, **selector: Any) -> Deleted:
        return self._send(calls.delete_memory(user_id, cube_id, selector))

    def update_memory(
        self, cube_id: str, memory_id: str, text: str, user_id: str | None = None
    ) -> Memory:
        return self._send(calls.update_memory(user_id, cube_id, memory_id, text))

    def create_cube(
        self, owner_id: str, cube_id: str | None = None, name: str | None = None
    ) -> Cube:
        return self._send(calls.create_cube(owner_id, cube_id, name))

    def create_user(self, user_id: str) -> NewKey:
        return self._send(calls.create_user(user_id))

    def grant(self, cube_id: str, user_id: str, access: str = "read") -> Grant:
        return self._send(calls.grant(cube_id, user_id, access))

    def llm_usage(self, user_id: str, cube_id: str) -> Record:
        return self._send(calls.llm_usage(user_id, cube_id))

    def set_adapter(self, user_id: str, cube_id: str, folder: str | Path) -> Record:
        return self._send(calls.set_adapter(user_id, cube_id, folder))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MemosClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
