"""Typed answers. Each keeps fields it does not name (`extra="allow"`), so a newer service's
additions reach the caller instead of being dropped."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class Memory(_Answer):
    id: str
    memory: str
    cube_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class AddedMemory(_Answer):
    memory: str
    memory_id: str
    memory_type: str
    cube_id: str


class CubeMemories(_Answer):
    cube_id: str
    memories: list[dict[str, Any]] = Field(default_factory=list)
    total_nodes: int = 0


class MemoryBuckets(_Answer):
    """Search results, or a cube's page of memories: one bucket per cube and kind."""

    text_mem: list[CubeMemories] = Field(default_factory=list)
    pref_mem: list[CubeMemories] = Field(default_factory=list)
    tool_mem: list[CubeMemories] = Field(default_factory=list)
    skill_mem: list[CubeMemories] = Field(default_factory=list)

    def texts(self) -> list[str]:
        """The text memories' texts, best first within each cube."""
        return [m["memory"] for bucket in self.text_mem for m in bucket.memories]


class Deleted(_Answer):
    deleted_count: int
    deleted: dict[str, list[str]] = Field(default_factory=dict)


class ChatAnswer(_Answer):
    response: str
    memory_ids: list[str] = Field(default_factory=list)
    reasoning: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


class ChatFrame(_Answer):
    """One server-sent frame of a chat stream: `text`, `reasoning`, `error` or `end`."""

    type: str
    data: Any = None


class Cube(_Answer):
    cube_id: str
    cube_name: str | None = None
    owner_id: str | None = None


class NewKey(_Answer):
    user_id: str
    api_key: str
    key_id: str | None = None
    scopes: list[str] = Field(default_factory=list)


class Grant(_Answer):
    cube_id: str
    user_id: str
    access: str


class Record(_Answer):
    """Any other answer: its fields as given."""
