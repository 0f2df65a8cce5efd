"""MemoryService's interface over every embedding space, for services that run while cubes move.

The API and the scheduler hand a `SpaceRouter` to routes, chat, fine extraction and
preferences in place of one MemoryService. Each call that names a cube goes to the
MemoryService of that cube's current space (`SpaceResolver`), so once `jobs.reembed`
switches a cube, its queries are embedded with the new model and its new memories land in
the new store, with no restart. Reads by id need no space: the graph is shared by all.

While no cube has ever been moved, every call goes straight to the configured service after
one cached check (see `SpaceResolver.space_of`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
from sqlalchemy import Engine

from memos_ray.config import MemosConfig
from memos_ray.core.filters import FilterExpr
from memos_ray.core.reader import Window
from memos_ray.domain.memory import DEFAULT_SESSION, Edge, MemoryItem, MemoryStatus
from memos_ray.errors import StoreError
from memos_ray.services.memory import (
    AddOutcome,
    MemoryService,
    Query,
    Reconciled,
    SearchOptions,
    as_query,
)
from memos_ray.services.space_registry import EmbeddingSpace, SpaceRegistry
from memos_ray.services.spaces import SPACE_TTL_S, EmbedderFactory, SpaceResolver, SpaceStores
from memos_ray.stores.vector.base import (
    CubeScan,
    HybridCandidates,
    LateScores,
    SparseVector,
    VectorFilter,
    VectorHit,
    VectorRecord,
    VectorStore,
)


class SpaceRouter:
    """The methods and attributes of MemoryService that callers use, each routed by cube.

    `embedder` and `query_embedder` stay the configured model's: preference memory (Milvus)
    is embedded with it and is not moved. Code that pairs a text with a cube's vectors calls
    `nearest`, which embeds with the cube's own model.
    """

    def __init__(self, resolver: SpaceResolver) -> None:
        self.resolver = resolver
        default = resolver.default_service
        self.default = default
        self.graph = default.graph
        self.embedder = default.embedder
        self.query_embedder = default.query_embedder
        self.reranker = default.reranker
        self.search_config = default.search_config
        self.vectors: VectorStore = RoutedVectorStore(resolver)

    def service_for(self, cube_id: str) -> MemoryService:
        return self.resolver.service_for(cube_id)

    # -- write ---------------------------------------------------------------------------

    def add_windows(
        self,
        cube_id: str,
        user_id: str,
        windows: Sequence[Window],
        session_id: str = DEFAULT_SESSION,
        tags: Sequence[str] = (),
        info: Mapping[str, Any] | None = None,
        status: MemoryStatus = MemoryStatus.ACTIVATED,
    ) -> AddOutcome:
        return self.service_for(cube_id).add_windows(
            cube_id, user_id, windows, session_id, tags, info, status
        )

    def update_items(self, cube_id: str, items: Sequence[MemoryItem]) -> None:
        self.service_for(cube_id).update_items(cube_id, items)

    def delete(self, cube_id: str, ids: Sequence[str]) -> list[str]:
        return self.service_for(cube_id).delete(cube_id, ids)

    def delete_matching(self, cube_id: str, filter: FilterExpr) -> list[str]:
        return self.service_for(cube_id).delete_matching(cube_id, filter)

    def reconcile(self, cube_id: str) -> Reconciled:
        return self.service_for(cube_id).reconcile(cube_id)

    # -- read ----------------------------------------------------------------------------

    def locate(self, ids: Sequence[str]) -> dict[str, str]:
        return self.default.locate(ids)

    def get_by_ids(self, cube_ids: Sequence[str], ids: Sequence[str]) -> list[MemoryItem]:
        return self.default.get_by_ids(cube_ids, ids)

    def get_page(
        self,
        cube_id: str,
        filter: FilterExpr | None = None,
        page: int | None = None,
        page_size: int | None = None,
    ) -> tuple[list[MemoryItem], int]:
        return self.service_for(cube_id).get_page(cube_id, filter, page, page_size)

    def get_graph(self, cube_id: str) -> tuple[list[MemoryItem], list[Edge]]:
        return self.service_for(cube_id).get_graph(cube_id)

    def statistics(self, cube_id: str, nodes: Sequence[MemoryItem] | None = None) -> dict[str, int]:
        return self.service_for(cube_id).statistics(cube_id, nodes)

    def has_types(self, cube_id: str, memory_types: Sequence[str]) -> bool:
        return self.service_for(cube_id).has_types(cube_id, memory_types)

    def nearest(
        self, cube_id: str, text: str, limit: int, filter: VectorFilter | None = None
    ) -> list[VectorHit]:
        return self.service_for(cube_id).nearest(cube_id, text, limit, filter)

    def search(
        self,
        query: str | Query,
        cube_filters: Mapping[str, FilterExpr | None],
        options: SearchOptions,
    ) -> dict[str, list[MemoryItem]]:
        """Cubes grouped by space, each group searched with its own query embedding; results
        are per cube, so the groups' answers merge as they are."""
        spaces = self.resolver.spaces_of(list(cube_filters))
        groups: dict[EmbeddingSpace, dict[str, FilterExpr | None]] = {}
        for cube, selector in cube_filters.items():
            groups.setdefault(spaces[cube], {})[cube] = selector
        merged: dict[str, list[MemoryItem]] = {}
        # Several groups only while cubes of one search sit in different spaces (a partial
        # move): rare enough that the groups run one after the other.
        for space, filters in groups.items():
            asked = as_query(query)  # encoded once per space model
            merged.update(self.resolver.service_in(space).search(asked, filters, options))
        return {cube: merged[cube] for cube in cube_filters}

    def close(self) -> None:
        self.resolver.stores.close()
        self.default.close()


class RoutedVectorStore(VectorStore):
    """`router.vectors`: each call goes to the store of its cube's space, for code that
    reads a cube's points directly (e.g. reorganisation scanning a cube)."""

    def __init__(self, resolver: SpaceResolver) -> None:
        self._resolver = resolver

    def _store(self, cube_id: str) -> VectorStore:
        return self._resolver.service_for(cube_id).vectors

    def _shared(self, cube_ids: Sequence[str]) -> VectorStore:
        spaces = set(self._resolver.spaces_of(list(cube_ids)).values())
        if len(spaces) > 1:
            raise StoreError(
                f"cubes {sorted(cube_ids)} are in different embedding spaces: "
                "search them one space at a time"
            )
        space = spaces.pop() if spaces else self._resolver.default
        return self._resolver.service_in(space).vectors

    @property
    def dim(self) -> int:
        """The default space's; a moved cube's points have their own space's dimension."""
        return self._resolver.default.dim

    def upsert(self, cube_id: str, records: Sequence[VectorRecord]) -> None:
        self._store(cube_id).upsert(cube_id, records)

    def search_dense(
        self,
        cube_ids: Sequence[str],
        vector: Sequence[float],
        limit: int,
        filter: VectorFilter | None = None,
    ) -> list[VectorHit]:
        return self._shared(cube_ids).search_dense(cube_ids, vector, limit, filter)

    def search_sparse(
        self,
        cube_ids: Sequence[str],
        vector: SparseVector,
        limit: int,
        filter: VectorFilter | None = None,
    ) -> list[VectorHit]:
        return self._shared(cube_ids).search_sparse(cube_ids, vector, limit, filter)

    def search_hybrid(
        self,
        cube_ids: Sequence[str],
        dense: Sequence[float],
        sparse: SparseVector,
        limit: int,
        filter: VectorFilter | None = None,
    ) -> HybridCandidates:
        return self._shared(cube_ids).search_hybrid(cube_ids, dense, sparse, limit, filter)

    def revision(self, cube_id: str) -> str:
        return self._store(cube_id).revision(cube_id)

    def scan(self, cube_id: str, filter: VectorFilter | None = None) -> CubeScan:
        return self._store(cube_id).scan(cube_id, filter)

    def late_scores(self, cube_id: str, query_tokens: np.ndarray, ids: Sequence[str]) -> LateScores:
        return self._store(cube_id).late_scores(cube_id, query_tokens, ids)

    def retrieve(self, cube_id: str, ids: Sequence[str]) -> list[VectorRecord]:
        return self._store(cube_id).retrieve(cube_id, ids)

    def existing_ids(self, cube_id: str, ids: Sequence[str]) -> set[str]:
        return self._store(cube_id).existing_ids(cube_id, ids)

    def delete(self, cube_id: str, ids: Sequence[str]) -> None:
        self._store(cube_id).delete(cube_id, ids)

    def count(self, cube_id: str) -> int:
        return self._store(cube_id).count(cube_id)

    def close(self) -> None:
        """Nothing: the stores belong to the resolver."""


def route_spaces(
    config: MemosConfig,
    service: MemoryService,
    engine: Engine,
    embedder_for: EmbedderFactory,
    *,
    in_ray: bool = True,
    ttl_s: float = SPACE_TTL_S,
) -> SpaceRouter:
    """A router whose default space is `service` (the configured stores and models, as
    built today); `embedder_for` gives the embedder of any other space's model."""
    resolver = SpaceResolver(
        config,
        service.graph,
        SpaceRegistry(engine),
        SpaceStores(config, service.vectors, in_ray=in_ray),
        service.embedder,
        default_service=service,
        embedder_for=embedder_for,
        reranker=service.reranker,
        ttl_s=ttl_s,
    )
    return SpaceRouter(resolver)


# What the services that keep running while cubes move (fine extraction, preferences, chat,
# feedback, documents, reorganisation, the scheduler's tasks) are handed: the MemoryService
# of one space, or the router over all of them.
Memories: TypeAlias = MemoryService | SpaceRouter
