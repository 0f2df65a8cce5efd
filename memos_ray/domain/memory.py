"""Memory items, their metadata and the edges between them (MemOS field names)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# The session of memories added without one (MemOS's name for it).
DEFAULT_SESSION = "default_session"

# Deterministic ids: the same text in the same cube always gets the same id, so a
# duplicate write is an idempotent upsert instead of a race between "check" and "insert".
_MEMORY_NAMESPACE = uuid.UUID("6f1c2a52-5d0e-4c57-9a57-3c0d8e1b7a10")


class MemoryType(StrEnum):
    WORKING = "WorkingMemory"
    LONG_TERM = "LongTermMemory"
    USER = "UserMemory"
    OUTER = "OuterMemory"
    RAW_FILE = "RawFileMemory"
    TOOL_SCHEMA = "ToolSchemaMemory"
    TOOL_TRAJECTORY = "ToolTrajectoryMemory"
    SKILL = "SkillMemory"
    PREFERENCE = "PreferenceMemory"
    # A node of the topic tree built by reorganisation: a key and a summary over the
    # memories below it (PARENT edges). Not a text memory: never searched or listed as one.
    TOPIC = "TopicMemory"


TEXT_MEMORY_TYPES: tuple[MemoryType, ...] = (
    MemoryType.WORKING,
    MemoryType.LONG_TERM,
    MemoryType.USER,
    MemoryType.OUTER,
    MemoryType.RAW_FILE,
)


class MemoryStatus(StrEnum):
    ACTIVATED = "activated"
    RESOLVING = "resolving"
    ARCHIVED = "archived"
    DELETED = "deleted"


class EdgeType(StrEnum):
    PARENT = "PARENT"
    MERGED_TO = "MERGED_TO"
    SUMMARY = "SUMMARY"
    MATERIAL = "MATERIAL"
    PRECEDING = "PRECEDING"
    FOLLOWING = "FOLLOWING"


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """Fixed-width UTC ISO text, so stores can compare timestamps as strings."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SourceMessage(BaseModel):
    """Provenance of a memory: one turn (or document part) it was made from."""

    model_config = ConfigDict(extra="allow")

    type: str = "chat"
    role: str | None = None
    chat_time: str | None = None
    message_id: str | None = None
    content: str | None = None
    doc_path: str | None = None
    # The speaker's name when the message carried one (OpenAI `name`), e.g. in group chats.
    name: str | None = None


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: int
    memory: str
    updated_at: str
    reason: str | None = None


class MemoryMetadata(BaseModel):
    model_config = ConfigDict(extra="allow", use_enum_values=True)

    user_id: str
    session_id: str = DEFAULT_SESSION
    status: MemoryStatus = MemoryStatus.ACTIVATED
    memory_type: MemoryType = MemoryType.LONG_TERM
    key: str | None = None
    tags: list[str] = Field(default_factory=list)
    sources: list[SourceMessage] = Field(default_factory=list)
    background: str = ""
    confidence: float = 0.99
    created_at: str = Field(default_factory=lambda: iso(utc_now()))
    updated_at: str = Field(default_factory=lambda: iso(utc_now()))
    version: int = 1
    history: list[HistoryEntry] = Field(default_factory=list)
    info: dict[str, Any] = Field(default_factory=dict)
    embedding: list[float] | None = None
    relativity: float | None = None


class MemoryItem(BaseModel):
    """One textual memory; `cube_id` is the tenant it belongs to."""

    model_config = ConfigDict(extra="forbid")

    id: str
    memory: str
    cube_id: str
    metadata: MemoryMetadata

    @property
    def content_hash(self) -> str:
        return content_hash(self.memory)

    def revised(self, reason: str, **metadata: Any) -> MemoryItem:
        """A new version: `metadata` fields changed, the version it leaves kept in history."""
        meta = self.metadata
        now = iso(utc_now())
        entry = HistoryEntry(
            version=meta.version, memory=self.memory, updated_at=now, reason=reason
        )
        changes = {
            **metadata,
            "version": meta.version + 1,
            "updated_at": now,
            "history": [*meta.history, entry],
        }
        return self.model_copy(update={"metadata": meta.model_copy(update=changes)})


class Edge(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    source: str
    target: str
    type: EdgeType


def content_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


def memory_id_for(cube_id: str, text: str) -> str:
    return str(uuid.uuid5(_MEMORY_NAMESPACE, f"{cube_id}\x00{content_hash(text)}"))


class SparseVector(BaseModel):
    """Keyword weights by hashed term id (BM25 term-frequency part; IDF applied at query)."""

    model_config = ConfigDict(extra="forbid")

    indices: list[int] = Field(default_factory=list)
    values: list[float] = Field(default_factory=list)
