"""`AsyncMemosClient`: the asynchronous client (httpx), the same methods as `MemosClient`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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
from memos_ray.client.sync import _settings

T = TypeVar("T")


class AsyncMemosClient:
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
        self._http = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout)
        self.backoff = backoff or Backoff()

    async def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, json=call.json, params=call.query()
                )
            except httpx.TransportError as exc:
                if attempt >= self.backoff.retries:
                    raise ConnectError(f"{self._http.base_url} not reachable: {exc!r}") from exc
                await asyncio.sleep(self.backoff.delay(attempt))
                attempt += 1
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.backoff.retries:
                await asyncio.sleep(
                    self.backoff.delay(attempt, response.headers.get("retry-after"))
                )
                attempt += 1
                continue
            if response.status_code >= 400:
                raise calls.error_of(response.status_code, response.content, response.reason_phrase)
            return call.parse(calls.data_of(response.content))

    async def health(self) -> Record:
        return await self._send(calls.health())

    async def add(
        self,
        user_id: str,
        messages: str | list[dict[str, Any]],
        cube_id: str | None = None,
        **fields: Any,
    ) -> list[AddedMemory]:
        return await self._send(calls.add(user_id, messages, cube_id, fields))

    async def search(
        self, user_id: str, query: str, cube_ids: list[str] | None = None, **fields: Any
    ) -> MemoryBuckets:
        return await self._send(calls.search(user_id, query, cube_ids, fields))

    async def chat(
        self, user_id: str, query: str, cube_ids: list[str] | None = None, **fields: Any
    ) -> ChatAnswer:
        return await self._send(calls.chat(user_id, query, cube_ids, fields))

    async def chat_stream(
        self, user_id: str, query: str, cube_ids: list[str] | None = None, **fields: Any
    ) -> AsyncIterator[ChatFrame]:
        """`/product/chat/stream` frames, as they come (not retried: a stream is not
        repeated behind the caller's back)."""
        body = calls.chat_body(user_id, query, cube_ids, fields)
        async with self._http.stream("POST", "/product/chat/stream", json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                raise calls.error_of(response.status_code, response.content, response.reason_phrase)
            async for line in response.aiter_lines():
                frame = calls.frame_of(line)
                if frame is not None:
                    yield frame

    async def get_memory(
        self, user_id: str, cube_id: str | None = None, **fields: Any
    ) -> MemoryBuckets:
        return await self._send(calls.get_memory(user_id, cube_id, fields))

    async def get_memory_by_id(self, memory_id: str, user_id: str | None = None) -> Memory:
        """NotFoundError for an id unknown, deleted, or in a cube this key may not read."""
        return await self._send(calls.get_memory_by_id(memory_id, user_id))

    async def get_memory_by_ids(
        self, memory_ids: list[str], user_id: str | None = None
    ) -> list[Memory]:
        return await self._send(calls.get_memory_by_ids(memory_ids, user_id))

    async def get_all(self, user_id: str, cube_ids: list[str] | None = None, **fields: Any) -> Any:
        return await self._send(calls.get_all(user_id, cube_ids, fields))

    async def delete_memory(
        self, user_id: str, cube_id: str | None = None, **selector: Any
    ) -> Deleted:
        return await self._send(calls.delete_memory(user_id, cube_id, selector))

    async def update_memory(
        self, cube_id: str, memory_id: str, text: str, user_id: str | None = None
    ) -> Memory:
        return await self._send(calls.update_memory(user_id, cube_id, memory_id, text))

    async def create_cube(
        self, owner_id: str, cube_id: str | None = None, name: str | None = None
    ) -> Cube:
        return await self._send(calls.create_cube(owner_id, cube_id, name))

    async def create_user(self, user_id: str) -> NewKey:
        return await self._send(calls.create_user(user_id))

    async def grant(self, cube_id: str, user_id: str, access: str = "read") -> Grant:
        return await self._send(calls.grant(cube_id, user_id, access))

    async def llm_usage(self, user_id: str, cube_id: str) -> Record:
        return await self._send(calls.llm_usage(user_id, cube_id))

    async def set_adapter(self, user_id: str, cube_id: str, folder: str | Path) -> Record:
        return await self._send(calls.set_adapter(user_id, cube_id, folder))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncMemosClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
