"""The vector store role: dense and sparse (keyword) vectors of memory items, per cube."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SparseVector(BaseModel):
    """Keyword weights by hashed term id (BM25 term-frequency part; IDF applied at query)."""

    model_config = ConfigDict(extra="forbid")

    indices: list[int] = Field(default_factory=list)
    values: list[float] = Field(default_factory=list)


class VectorRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    dense: list[float]
    sparse: SparseVector = Field(default_factory=SparseVector)
    # Filterable scalars: memory_type, status, session_id, created_at (ISO) ...
    payload: dict[str, Any] = Field(default_factory=dict)


class VectorFilter(BaseModel):
    """Restrictions applied inside the index, so that `limit` counts only matching points."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = None
    memory_types: list[str] | None = None
    statuses: list[str] | None = None


class VectorHit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    cube_id: str
    score: float


class VectorStore(ABC):
    """Hybrid recall index. Every call is scoped to cubes; a cube never sees another's points."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Dense vector dimension."""

    @abstractmethod
    def upsert(self, cube_id: str, records: Sequence[VectorRecord]) -> None:
        """Insert or replace points by id."""

    @abstractmethod
    def search_dense(
        self,
        cube_ids: Sequence[str],
        vector: Sequence[float],
        limit: int,
        filter: VectorFilter | None = None,
    ) -> list[VectorHit]:
        """Nearest points by cosine similarity (score in [-1, 1], higher is closer)."""

    @abstractmethod
    def search_sparse(
        self,
        cube_ids: Sequence[str],
        vector: SparseVector,
        limit: int,
        filter: VectorFilter | None = None,
    ) -> list[VectorHit]:
        """Best keyword matches (BM25-style score, higher is better)."""

    @abstractmethod
    def retrieve(self, cube_id: str, ids: Sequence[str]) -> list[VectorRecord]:
        """The stored records with these ids (missing ids are skipped)."""

    @abstractmethod
    def delete(self, cube_id: str, ids: Sequence[str]) -> None:
        """Remove points (dense and sparse) by id."""

    @abstractmethod
    def count(self, cube_id: str) -> int:
        """Number of points in the cube."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release the index."""
