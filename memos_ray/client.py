"""A small synchronous Python client for the memos-ray (MemOS dialect) HTTP API."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from memos_ray.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    MemosError,
    NotFoundError,
    PayloadTooLargeError,
    UnauthorizedError,
)

_BY_STATUS: dict[int, type[MemosError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: BadRequestError,
}


class MemosClient:
    """Calls return the envelope's `data`; an error status raises the matching MemosError."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        base_url = base_url or os.environ.get("MEMOS_URL", "http://127.0.0.1:8000")
        api_key = api_key or os.environ.get("MEMOS_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            self._raise(response)
        body = response.json()
        return body.get("data", body) if isinstance(body, dict) else body

    @staticmethod
    def _raise(response: httpx.Response) -> None:
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text}
        error = _BY_STATUS.get(response.status_code, MemosError)
        exc = error(str(body.get("message", response.reason_phrase)))
        exc.status_code = response.status_code
        raise exc

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def add(
        self,
        user_id: str,
        messages: str | list[dict[str, Any]],
        cube_id: str | None = None,
        **fields: Any,
    ) -> list[dict[str, Any]]:
        body = {"user_id": user_id, "messages": messages, **fields}
        if cube_id:
            body["writable_cube_ids"] = [cube_id]
        return self._call("POST", "/product/add", json=body)

    def search(
        self, user_id: str, query: str, cube_ids: list[str] | None = None, **fields: Any
    ) -> dict[str, Any]:
        body = {"user_id": user_id, "query": query, **fields}
        if cube_ids:
            body["readable_cube_ids"] = cube_ids
        return self._call("POST", "/product/search", json=body)

    def chat(
        self, user_id: str, query: str, cube_ids: list[str] | None = None, **fields: Any
    ) -> dict[str, Any]:
        """`/product/chat/complete`: `{response, reasoning, memory_ids, usage, ...}`."""
        body = {"user_id": user_id, "query": query, **fields}
        if cube_ids:
            body["readable_cube_ids"] = cube_ids
        return self._call("POST", "/product/chat/complete", json=body)

    def chat_stream(
        self, user_id: str, query: str, cube_ids: list[str] | None = None, **fields: Any
    ) -> Iterator[dict[str, Any]]:
        """`/product/chat/stream` frames: `{"type": "text"|"reasoning"|"error"|"end", "data"}`."""
        body = {"user_id": user_id, "query": query, **fields}
        if cube_ids:
            body["readable_cube_ids"] = cube_ids
        with self._http.stream("POST", "/product/chat/stream", json=body) as response:
            if response.status_code >= 400:
                response.read()
                self._raise(response)
            for line in response.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[len("data: ") :])

    def llm_usage(self, user_id: str, cube_id: str) -> dict[str, Any]:
        """LLM calls and tokens spent for the cube, and its budget."""
        return self._call("GET", f"/product/cubes/{cube_id}/llm_usage", params={"user_id": user_id})

    def set_adapter(self, user_id: str, cube_id: str, folder: str | Path) -> dict[str, Any]:
        """Upload a LoRA adapter saved by PEFT (`save_pretrained`) as the cube's adapter."""
        folder = Path(folder)
        body = {
            "user_id": user_id,
            "adapter_config": json.loads((folder / "adapter_config.json").read_text()),
            "weights_base64": base64.b64encode(
                (folder / "adapter_model.safetensors").read_bytes()
            ).decode(),
        }
        return self._call("PUT", f"/product/cubes/{cube_id}/adapter", json=body)

    def get_memory(self, user_id: str, cube_id: str | None = None, **fields: Any) -> Any:
        body = {"user_id": user_id, "mem_cube_id": cube_id, **fields}
        return self._call("POST", "/product/get_memory", json=body)

    def get_memory_by_id(self, memory_id: str, user_id: str | None = None) -> Any:
        """The memory; NotFoundError where the service answers MemOS's `data: null` (an id
        unknown, deleted, or in a cube this key may not read)."""
        params = {"user_id": user_id} if user_id else None
        found = self._call("GET", f"/product/get_memory/{memory_id}", params=params)
        if found is None:
            raise NotFoundError(f"memory {memory_id!r} not found")
        return found

    def get_memory_by_ids(self, memory_ids: list[str], user_id: str | None = None) -> Any:
        params = {"user_id": user_id} if user_id else None
        return self._call("POST", "/product/get_memory_by_ids", json=memory_ids, params=params)

    def get_all(self, user_id: str, cube_ids: list[str] | None = None, **fields: Any) -> Any:
        body = {"user_id": user_id, "mem_cube_ids": cube_ids, **fields}
        return self._call("POST", "/product/get_all", json=body)

    def delete_memory(self, user_id: str, cube_id: str | None = None, **selector: Any) -> Any:
        body = {"user_id": user_id, **selector}
        if cube_id:
            body["writable_cube_ids"] = [cube_id]
        return self._call("POST", "/product/delete_memory", json=body)

    def create_cube(self, owner_id: str, cube_id: str | None = None, name: str | None = None):
        body = {"owner_id": owner_id, "cube_id": cube_id, "cube_name": name}
        return self._call("POST", "/product/create_cube", json=body)

    def create_user(self, user_id: str) -> dict[str, Any]:
        return self._call("POST", "/admin/users", json={"user_id": user_id})

    def grant(self, cube_id: str, user_id: str, access: str = "read") -> dict[str, Any]:
        body = {"cube_id": cube_id, "user_id": user_id, "access": access}
        return self._call("POST", "/admin/grants", json=body)

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
