"""Pure data of memos-ray: no I/O, no SDKs."""

from memos_ray.domain.memory import (
    TEXT_MEMORY_TYPES,
    Edge,
    EdgeType,
    HistoryEntry,
    MemoryItem,
    MemoryMetadata,
    MemoryStatus,
    MemoryType,
    SourceMessage,
    content_hash,
    iso,
    memory_id_for,
    utc_now,
)
from memos_ray.domain.tenancy import Access, Cube, Grant, User

__all__ = [
    "TEXT_MEMORY_TYPES",
    "Access",
    "Cube",
    "Edge",
    "EdgeType",
    "Grant",
    "HistoryEntry",
    "MemoryItem",
    "MemoryMetadata",
    "MemoryStatus",
    "MemoryType",
    "SourceMessage",
    "User",
    "content_hash",
    "iso",
    "memory_id_for",
    "utc_now",
]
