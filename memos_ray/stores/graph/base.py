"""The graph store role: memory nodes and the edges between them, per cube."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from memos_ray.core.filters import FilterExpr
from memos_ray.domain.memory import Edge, MemoryItem


class GraphStore(ABC):
    """Source of truth for memory items. Every call is scoped to one or more cubes.

    Items are stored without `metadata.embedding` and `metadata.relativity` (vectors live
    in the vector store; relativity is a per-search score).
    """

    @abstractmethod
    def upsert_nodes(self, cube_id: str, items: Sequence[MemoryItem]) -> None:
        """Create or replace nodes by id (all items belong to `cube_id`)."""

    @abstractmethod
    def get_nodes(self, cube_ids: Sequence[str], ids: Sequence[str]) -> list[MemoryItem]:
        """Items with these ids that live in one of `cube_ids`, in the order of `ids`."""

    @abstractmethod
    def locate(self, ids: Sequence[str]) -> dict[str, str]:
        """The cube of each id that exists (any cube): callers check access before reading."""

    @abstractmethod
    def existing_ids(self, cube_id: str, ids: Sequence[str]) -> set[str]:
        """The subset of `ids` present in the cube."""

    @abstractmethod
    def find_ids(
        self,
        cube_id: str,
        filter: FilterExpr | None = None,
        memory_types: Sequence[str] | None = None,
        statuses: Sequence[str] | None = None,
    ) -> list[str]:
        """Ids of the cube's nodes matching the filter, types and statuses."""

    @abstractmethod
    def list_nodes(
        self,
        cube_id: str,
        filter: FilterExpr | None = None,
        memory_types: Sequence[str] | None = None,
        statuses: Sequence[str] | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> tuple[list[MemoryItem], int]:
        """A page of matching nodes, newest `created_at` first, and the total match count."""

    @abstractmethod
    def nodes_after(self, cube_id: str, after: str | None, limit: int) -> list[MemoryItem]:
        """Up to `limit` nodes of the cube with ids above `after` (None: from the start), in
        id order: keyset pages that visit each node once, however writes shift the cube."""

    @abstractmethod
    def delete_nodes(self, cube_id: str, ids: Sequence[str]) -> int:
        """Remove the nodes and every edge touching them; returns how many were removed."""

    @abstractmethod
    def add_edges(self, cube_id: str, edges: Sequence[Edge]) -> None:
        """Create edges between nodes of the cube (idempotent per source, target, type)."""

    @abstractmethod
    def get_edges(self, cube_id: str, node_ids: Sequence[str] | None = None) -> list[Edge]:
        """Edges of the cube, or only those touching `node_ids`."""

    @abstractmethod
    def count(self, cube_id: str) -> int:
        """Number of nodes in the cube."""

    @abstractmethod
    def cube_ids(self) -> list[str]:
        """Every cube that holds at least one node, sorted (bulk jobs over all cubes)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
