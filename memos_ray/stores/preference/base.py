"""The preference store role: MemOS's PreferenceMemory (explicit and implicit preferences).

Preferences live apart from text memories because they are recalled on their own (to steer
an answer's style and choices) and MemOS keeps them in their own Milvus collections.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from memos_ray.domain.memory import DEFAULT_SESSION, iso, utc_now

PreferenceKind = Literal["explicit", "implicit"]
PreferenceStatus = Literal["activated", "archived", "deleted"]


def _now() -> str:
    return iso(utc_now())


class Preference(BaseModel):
    """One preference of a user, in one cube. `score` is set on search results only."""

    model_config = ConfigDict(extra="forbid")

    id: str
    cube_id: str
    user_id: str
    kind: PreferenceKind
    # The preference itself, e.g. "Prefers aisle seats on long flights".
    preference: str
    reasoning: str = ""
    topic: str = ""
    source_memory_ids: list[str] = Field(default_factory=list)
    session_id: str = DEFAULT_SESSION
    # Fixed-width UTC ISO text (memos_ray.domain.memory.iso), so they sort as strings.
    created_at: str = Field(default_factory=_now)
    updated_at: str = Field(default_factory=_now)
    status: PreferenceStatus = "activated"
    score: float | None = None


class PreferenceStore(ABC):
    """Preferences by cube. Every call is scoped to one cube and never sees another's rows:
    the cube is part of each query's filter (and of the row key), not checked afterwards."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Dense vector dimension, fixed when the store is made."""

    @abstractmethod
    def upsert(self, cube_id: str, items: Sequence[Preference], dense: np.ndarray) -> None:
        """Insert or replace preferences by id; `dense` rows (float32, `dim` wide) align with
        `items`. Every item's cube_id must be `cube_id`."""

    @abstractmethod
    def search(
        self,
        cube_id: str,
        query: str,
        query_dense: np.ndarray,
        top_k: int,
        kinds: Sequence[str] | None = None,
    ) -> list[Preference]:
        """Activated preferences that best match, by meaning (dense cosine) and by keywords
        (BM25), fused into one ranking; best first, `score` set (higher is better)."""

    @abstractmethod
    def get(self, cube_id: str, ids: Sequence[str]) -> list[Preference]:
        """Preferences with these ids, whatever their status, in the order asked; missing
        ids are skipped."""

    @abstractmethod
    def set_status(self, cube_id: str, ids: Sequence[str], status: PreferenceStatus) -> int:
        """Change the status (and updated_at) of these preferences; returns how many."""

    @abstractmethod
    def delete(self, cube_id: str, ids: Sequence[str]) -> int:
        """Remove preferences for good; returns how many existed."""

    @abstractmethod
    def delete_cube(self, cube_id: str) -> int:
        """Remove every preference of the cube; returns how many."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection (data is already durable)."""

    # Last, so that `list` below does not shadow the builtin in the annotations above.
    @abstractmethod
    def list(
        self, cube_id: str, offset: int = 0, limit: int | None = None
    ) -> tuple[list[Preference], int]:
        """A page of the cube's preferences, newest first (any status), and the total count."""
