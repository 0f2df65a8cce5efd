"""What each client method sends and how its answer is read: pure, no I/O, shared by the sync
and the async client (they differ only in how they wait)."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter

from memos_ray.client.errors import MemosClientError, NotFoundError, error_for
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

# Statuses the service uses for "try again": a full queue, a part restarting.
RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)

    def query(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if v is not None}


@dataclass(frozen=True)
class Backoff:
    """Retries on 429 / 503 and on connection errors: the service's `Retry-After` when it
    gives one (capped), else exponential with jitter."""

    retries: int = 3
    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        given = parse_retry_after(retry_after)
        if given is not None:
            return min(given, self.cap_s)
        return min(self.cap_s, self.base_s * 2**attempt) * (0.5 + random.random() / 2)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_of(status: int, body: bytes, reason: str) -> MemosClientError:
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return error_for(status, str(message or reason or f"HTTP {status}"))


def data_of(body: bytes) -> Any:
    """The MemOS envelope's `data` (a body without an envelope is returned whole)."""
    value = json.loads(body) if body else None
    return value.get("data", value) if isinstance(value, dict) else value


def frame_of(line: str) -> ChatFrame | None:
    if not line.startswith("data: "):
        return None
    return ChatFrame.model_validate_json(line[len("data: ") :])


def _model(kind: type[BaseModel]) -> Callable[[Any], Any]:
    return kind.model_validate


def _list_of(kind: type[T]) -> Callable[[Any], list[T]]:
    adapter = TypeAdapter(list[kind])  # type: ignore[valid-type]
    return adapter.validate_python


def _cubes(cube_ids: list[str] | None, key: str) -> dict[str, Any]:
    return {key: cube_ids} if cube_ids else {}


def health() -> Call[Record]:
    return Call("GET", "/health", _model(Record))


def add(
    user_id: str, messages: str | list[dict[str, Any]], cube_id: str | None, fields: Mapping
) -> Call[list[AddedMemory]]:
    body = {"user_id": user_id, "messages": messages, **fields}
    body.update(_cubes([cube_id] if cube_id else None, "writable_cube_ids"))
    return Call("POST", "/product/add", _list_of(AddedMemory), json=body)


def search(
    user_id: str, query: str, cube_ids: list[str] | None, fields: Mapping
) -> Call[MemoryBuckets]:
    body = {"user_id": user_id, "query": query, **fields, **_cubes(cube_ids, "readable_cube_ids")}
    return Call("POST", "/product/search", _model(MemoryBuckets), json=body)


def chat_body(
    user_id: str, query: str, cube_ids: list[str] | None, fields: Mapping
) -> dict[str, Any]:
    return {"user_id": user_id, "query": query, **fields, **_cubes(cube_ids, "readable_cube_ids")}


def chat(user_id: str, query: str, cube_ids: list[str] | None, fields: Mapping) -> Call[ChatAnswer]:
    body = chat_body(user_id, query, cube_ids, fields)
    return Call("POST", "/product/chat/complete", _model(ChatAnswer), json=body)


def get_memory(user_id: str, cube_id: str | None, fields: Mapping) -> Call[MemoryBuckets]:
    body = {"user_id": user_id, "mem_cube_id": cube_id, **fields}
    return Call("POST", "/product/get_memory", _model(MemoryBuckets), json=body)


def get_memory_by_id(memory_id: str, user_id: str | None) -> Call[Memory]:
    def parse(data: Any) -> Memory:
        # MemOS answers an unknown (or unreadable) id with `data: null`.
        if data is None:
            raise NotFoundError(f"memory {memory_id!r} not found", 404)
        return Memory.model_validate(data)

    params = {"user_id": user_id}
    return Call("GET", f"/product/get_memory/{memory_id}", parse, params=params)


def get_memory_by_ids(memory_ids: list[str], user_id: str | None) -> Call[list[Memory]]:
    def parse(data: Any) -> list[Memory]:
        return [Memory.model_validate(m) for m in data["memories"]]

    path = "/product/get_memory_by_ids"
    return Call("POST", path, parse, json=memory_ids, params={"user_id": user_id})


def get_all(user_id: str, cube_ids: list[str] | None, fields: Mapping) -> Call[Any]:
    body = {"user_id": user_id, "mem_cube_ids": cube_ids, **fields}
    return Call("POST", "/product/get_all", lambda data: data, json=body)


def delete_memory(user_id: str, cube_id: str | None, selector: Mapping) -> Call[Deleted]:
    body = {
        "user_id": user_id,
        **selector,
        **_cubes([cube_id] if cube_id else None, "writable_cube_ids"),
    }
    return Call("POST", "/product/delete_memory", _model(Deleted), json=body)


def update_memory(user_id: str | None, cube_id: str, memory_id: str, text: str) -> Call[Memory]:
    body = {"user_id": user_id, "mem_cube_id": cube_id, "memory_id": memory_id, "memory": text}
    return Call("POST", "/product/update_memory", _model(Memory), json=body)


def create_cube(owner_id: str, cube_id: str | None, name: str | None) -> Call[Cube]:
    body = {"owner_id": owner_id, "cube_id": cube_id, "cube_name": name}
    return Call("POST", "/product/create_cube", _model(Cube), json=body)


def create_user(user_id: str) -> Call[NewKey]:
    return Call("POST", "/admin/users", _model(NewKey), json={"user_id": user_id})


def grant(cube_id: str, user_id: str, access: str) -> Call[Grant]:
    body = {"cube_id": cube_id, "user_id": user_id, "access": access}
    return Call("POST", "/admin/grants", _model(Grant), json=body)


def llm_usage(user_id: str, cube_id: str) -> Call[Record]:
    path = f"/product/cubes/{cube_id}/llm_usage"
    return Call("GET", path, _model(Record), params={"user_id": user_id})


def set_adapter(user_id: str, cube_id: str, folder: str | Path) -> Call[Record]:
    """A LoRA adapter saved by PEFT (`save_pretrained`) as the cube's adapter."""
    folder = Path(folder)
    body = {
        "user_id": user_id,
        "adapter_config": json.loads((folder / "adapter_config.json").read_text()),
        "weights_base64": base64.b64encode(
            (folder / "adapter_model.safetensors").read_bytes()
        ).decode(),
    }
    return Call("PUT", f"/product/cubes/{cube_id}/adapter", _model(Record), json=body)
