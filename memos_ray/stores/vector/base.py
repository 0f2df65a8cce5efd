"""The vector store role: dense and sparse (keyword) vectors of memory items, per cube."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from memos_ray.domain.memory import SparseVector


class VectorRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    id: str
    dense: list[float]
    sparse: SparseVector = Field(default_factory=SparseVector)
    # Per-token unit vectors (rows), for late-interaction (MaxSim) scoring; optional.
    tokens: np.ndarray | None = None
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


@dataclass
class HybridCandidates:
    """Both recalls and the stored data of every hit, compact enough for one remote hop."""

    dense_hits: list[VectorHit]
    sparse_hits: list[VectorHit]
    ids: list[str] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    payloads: list[dict[str, Any]] = field(default_factory=list)
    # Keyword term ids of each hit (its sparse vector's indices), for term-overlap scoring.
    term_ids: list[list[int]] = field(default_factory=list)


@dataclass
class CubeScan:
    """Every matching point of a cube, for an in-memory ranking index.

    `revision` was read before the points, so a write racing the scan shows up as a newer
    revision on the next check rather than as a silently stale index.
    """

    ids: list[str]
    dense: np.ndarray
    payloads: list[dict[str, Any]]
    revision: str


@dataclass(frozen=True)
class WriteStamp:
    """A cube's revision just before and just after one write, from a store that is its
    shards' only writer: a reader whose index is at `before` may apply the write itself and
    be at `after`. Stores shared by several writers return None from writes instead."""

    before: str
    after: str


@dataclass
class LateScores:
    """MaxSim per id (sum over query tokens of the best cosine among the point's tokens);
    ids stored without token vectors are absent. Carries the cube's revision so a caller
    holding a cached index learns in the same round trip whether it is stale."""

    scores: dict[str, float]
    revision: str


class VectorStore(ABC):
    """Hybrid recall index. Every call is scoped to cubes; a cube never sees another's points."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Dense vector dimension."""

    @abstractmethod
    def upsert(self, cube_id: str, records: Sequence[VectorRecord]) -> WriteStamp | None:
        """Insert or replace points by id; the write's stamp where the store can vouch it."""

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

    def search_hybrid(
        self,
        cube_ids: Sequence[str],
        dense: Sequence[float],
        sparse: SparseVector,
        limit: int,
        filter: VectorFilter | None = None,
    ) -> HybridCandidates:
        """Dense and keyword recall plus each hit's vector and payload, in one call.

        Remote stores (an actor, a server) answer a search with one round trip this way.
        """
        dense_hits = self.search_dense(cube_ids, dense, limit, filter)
        sparse_hits = self.search_sparse(cube_ids, sparse, limit, filter)
        by_cube: dict[str, list[str]] = {}
        for hit in [*dense_hits, *sparse_hits]:
            ids = by_cube.setdefault(hit.cube_id, [])
            if hit.id not in ids:
                ids.append(hit.id)
        records = [r for cube, ids in by_cube.items() for r in self.retrieve(cube, ids)]
        vectors = (
            np.asarray([r.dense for r in records], dtype=np.float32)
            if records
            else np.zeros((0, self.dim), dtype=np.float32)
        )
        return HybridCandidates(
            dense_hits,
            sparse_hits,
            [r.id for r in records],
            vectors,
            [r.payload for r in records],
            [list(r.sparse.indices) for r in records],
        )

    @abstractmethod
    def revision(self, cube_id: str) -> str:
        """Changes whenever a write touches the cube (from any process sharing the store)."""

    @abstractmethod
    def scan(self, cube_id: str, filter: VectorFilter | None = None) -> CubeScan:
        """All points of the cube that match, with dense vectors and payloads."""

    @abstractmethod
    def late_scores(self, cube_id: str, query_tokens: np.ndarray, ids: Sequence[str]) -> LateScores:
        """MaxSim of the query's token vectors against each listed point's token vectors."""

    @abstractmethod
    def retrieve(
        self, cube_id: str, ids: Sequence[str], with_tokens: bool = False
    ) -> list[VectorRecord]:
        """The stored records with these ids (missing ids are skipped); `with_tokens` also
        reads each point's token vectors (a cube dump carries them, search never needs to)."""

    def existing_ids(self, cube_id: str, ids: Sequence[str]) -> set[str]:
        """The subset of `ids` with a point in the cube (an add's commit marker, see
        `MemoryService`). Stores override it to skip reading the vectors."""
        return {r.id for r in self.retrieve(cube_id, ids)}

    @abstractmethod
    def delete(self, cube_id: str, ids: Sequence[str]) -> None:
        """Remove points (dense and sparse) by id, only the cube's: a same id in another
        cube is never touched."""

    @abstractmethod
    def count(self, cube_id: str) -> int:
        """Number of points in the cube."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release the index."""
