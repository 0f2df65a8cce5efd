"""MemoryService: what a route, a CLI command or a job calls. Knows stores, not HTTP or auth.

Write protocol (all or nothing per add, for any GraphStore / VectorStore pair). A memory
lives in two stores: its node in the graph (the inspectable record, edges, filters) and its
point in the vector store, which carries the dense vector *and* the keyword (BM25 sparse)
vector, so the keyword index and the per-cube ranking index (`memos_ray.services.ranking`, rebuilt
from a scan of the points) hold exactly what the vector store holds. Ids derive from cube
and text (`memory_id_for`), so every write below is an idempotent upsert.

- Add: embed first (no write yet), then write the graph node, then the vector point. The
  point is the commit marker: written last, so a point whose node is missing can only be
  left by a crash, a write that landed after its rollback, or a delete racing the add. A
  memory is a duplicate only when it is complete (node and point); otherwise the add writes
  whatever is missing, so a retried add completes what a crash left half done. If a write
  fails, the add removes the points and nodes it created (best effort: a dead store keeps
  them, and they are then incomplete, so the retry finishes them) and raises. Known limit:
  two adds of the same text into one cube at the same moment, one failing, may remove what
  the other wrote (no cross-process lock); the failed one's retry restores it.
- Delete: by id in every store, each one asked, so a memory that one store lost still
  leaves the other (vectors first, then the node: a half-done delete is never searchable).
  Every call is cube-scoped in both stores; another cube's same id is never touched.
- Search: only memories whose node exists are returned (the ranking index asks the graph
  once, on its first search, which of its ids have a node: nodes leave only after their
  points, which replaces the index; skipped when a filter already chose the ids from the
  graph). An orphan point is not deleted at search time: reads stay reads, and a retried
  add or a delete by id settles it; `reconcile` removes orphans and completes half-written
  memories of a cube for an operator.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from memos_ray import metrics
from memos_ray.config import SearchConfig
from memos_ray.core.filters import FilterExpr
from memos_ray.core.keywords import document_vector, query_vector
from memos_ray.core.reader import Window
from memos_ray.core.search import DedupMode, rrf_fuse, select
from memos_ray.core.turn_ranking import first_stage, head, late_rerank, spread_sessions
from memos_ray.domain.memory import (
    DEFAULT_SESSION,
    TEXT_MEMORY_TYPES,
    Edge,
    MemoryItem,
    MemoryMetadata,
    MemoryStatus,
    MemoryType,
    memory_id_for,
)
from memos_ray.models.embedder import Embedder, Encoded
from memos_ray.models.reranker import RerankCandidate, Reranker
from memos_ray.services.ranking import SEQ, TEXT, CubeIndexCache, IndexedCube, unit_payload
from memos_ray.stores.graph.base import GraphStore
from memos_ray.stores.vector.base import (
    CubeScan,
    LateScores,
    VectorFilter,
    VectorHit,
    VectorRecord,
    VectorStore,
)

logger = logging.getLogger("memos_ray.services.memory")

VISIBLE_STATUSES: tuple[str, ...] = (
    MemoryStatus.ACTIVATED,
    MemoryStatus.RESOLVING,
    MemoryStatus.ARCHIVED,
)
TEXT_TYPES: tuple[str, ...] = tuple(str(t) for t in TEXT_MEMORY_TYPES)
TOOL_TYPES: tuple[str, ...] = (str(MemoryType.TOOL_SCHEMA), str(MemoryType.TOOL_TRAJECTORY))
# Memory types stored as node and point; topic nodes live in the graph only.
POINT_TYPES: tuple[str, ...] = tuple(str(t) for t in MemoryType if t != MemoryType.TOPIC)


@dataclass(frozen=True)
class AddOutcome:
    # Written by this add (new, or completed after an earlier add left them half done).
    stored: list[MemoryItem]
    # Already complete in every store: nothing written.
    duplicates: list[MemoryItem]


@dataclass(frozen=True)
class Reconciled:
    """What `reconcile` found in a cube: points without a node (removed) and nodes
    without a point (their points written)."""

    orphan_points: list[str]
    completed: list[str]


@dataclass(frozen=True)
class SearchOptions:
    top_k: int = 10
    relativity: float = 0.45
    dedup: DedupMode = "mmr"
    rerank: bool = True
    memory_types: Sequence[str] | None = None
    session_id: str | None = None
    # When the question is asked: resolves "last week", "two months ago" (default: now).
    reference_time: str | None = None


class Query:
    """A question and its embeddings, encoded once per model whoever asks: one search hands
    the same Query to text, tool and preference search, which share the query embedder."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._encoded: dict[int, tuple[Embedder, Encoded]] = {}
        self._lock = threading.Lock()

    def encoded(self, embedder: Embedder) -> Encoded:
        with self._lock:
            found = self._encoded.get(id(embedder))
            if found is None:
                # The embedder is kept with its vectors, so its id cannot be reused meanwhile.
                found = (embedder, embedder.encode([self.text]))
                self._encoded[id(embedder)] = found
            return found[1]


def as_query(query: str | Query) -> Query:
    return query if isinstance(query, Query) else Query(query)


@dataclass
class SpaceBinding:
    """One embedding space: where its vectors live, the models that embed into it and the
    per-cube ranking indexes built from those vectors."""

    vectors: VectorStore
    embedder: Embedder
    # Queries may take another path (e.g. in-process) than bulk writes.
    query_embedder: Embedder
    indexes: CubeIndexCache


def bind_space(
    vectors: VectorStore,
    embedder: Embedder,
    search: SearchConfig,
    query_embedder: Embedder | None = None,
) -> SpaceBinding:
    indexes = CubeIndexCache(
        vectors,
        search.ranking,
        None,
        max_cubes=search.index_max_cubes,
        max_bytes=search.index_cache_mb << 20,
    )
    return SpaceBinding(vectors, embedder, query_embedder or embedder, indexes)


class CubeSpaces(Protocol):
    """Which space each cube is in (`services.spaces.SpaceResolver` reads the registry)."""

    @property
    def default(self) -> SpaceBinding: ...

    def of(self, cube_id: str) -> SpaceBinding: ...

    def groups(self, cube_ids: Sequence[str]) -> list[tuple[SpaceBinding, list[str]]]: ...

    def close(self) -> None: ...


class OneSpace:
    """Every cube in the configured space: a service that never moves cubes (jobs, tests)."""

    def __init__(self, space: SpaceBinding) -> None:
        self._space = space

    @property
    def default(self) -> SpaceBinding:
        return self._space

    def of(self, cube_id: str) -> SpaceBinding:
        return self._space

    def groups(self, cube_ids: Sequence[str]) -> list[tuple[SpaceBinding, list[str]]]:
        return [(self._space, list(cube_ids))]

    def close(self) -> None:
        self._space.vectors.close()


class MemoryService:
    """Text memory operations over one graph store and each cube's embedding space.

    Calls that name a cube use that cube's space (its vector store and model), so once
    `jobs.reembed` moves a cube, its queries are embedded with the new model and its new
    memories land in the new store, with no restart. Reads by id need no space: the graph
    is shared by all.
    """

    def __init__(
        self,
        graph: GraphStore,
        vectors: VectorStore | None = None,
        embedder: Embedder | None = None,
        reranker: Reranker | None = None,
        search_config: SearchConfig | None = None,
        query_embedder: Embedder | None = None,
        *,
        spaces: CubeSpaces | None = None,
    ) -> None:
        """One space from `vectors` and `embedder`, or every space `spaces` resolves."""
        self.graph = graph
        self.reranker = reranker
        self.search_config = search_config or SearchConfig()
        if spaces is None:
            if vectors is None or embedder is None:
                raise TypeError("MemoryService needs vectors and an embedder, or spaces")
            spaces = OneSpace(bind_space(vectors, embedder, self.search_config, query_embedder))
        self.spaces: CubeSpaces = spaces
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="memos-fanout")

    @property
    def vectors(self) -> VectorStore:
        """The configured (default) space's store; a cube's own is `vectors_of(cube)`."""
        return self.spaces.default.vectors

    @property
    def embedder(self) -> Embedder:
        """The configured model (preference memory is embedded with it and never moves)."""
        return self.spaces.default.embedder

    @property
    def query_embedder(self) -> Embedder:
        return self.spaces.default.query_embedder

    def vectors_of(self, cube_id: str) -> VectorStore:
        return self.spaces.of(cube_id).vectors

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
        """Store windows as memories; a text already complete in the cube is a duplicate.

        All or nothing (see the module docstring): node first, point last, and a failure
        removes what this call created before it raises.
        """
        at = self.spaces.of(cube_id)
        items = items_for_windows(cube_id, user_id, windows, session_id, tags, info, status)
        ids = list(items)
        in_graph = self.graph.existing_ids(cube_id, ids)
        in_vectors = at.vectors.existing_ids(cube_id, ids) if in_graph else set()
        complete = in_graph & in_vectors
        # A node left without its point keeps what it recorded (created_at, sources).
        half = [i for i in ids if i in in_graph and i not in complete]
        kept = {node.id: node for node in self.graph.get_nodes([cube_id], half)} if half else {}
        todo = [kept.get(i, items[i]) for i in ids if i not in complete]
        if todo:
            self._write_new(at, cube_id, todo, in_graph, in_vectors)
            for memory_type, n in Counter(str(i.metadata.memory_type) for i in todo).items():
                metrics.MEMORIES_WRITTEN.inc(n, memory_type=memory_type)
        duplicates = self.graph.get_nodes([cube_id], [i for i in ids if i in complete])
        return AddOutcome(stored=todo, duplicates=duplicates)

    def _write_new(
        self,
        at: SpaceBinding,
        cube_id: str,
        items: Sequence[MemoryItem],
        in_graph: set[str],
        in_vectors: set[str],
    ) -> None:
        """Nodes then points (the commit marker); on failure undo what this call created."""
        seq = time.time_ns()
        records = self._records(at, items, [seq + position for position in range(len(items))])
        nodes = [item for item in items if item.id not in in_graph]
        try:
            if nodes:
                self.graph.upsert_nodes(cube_id, nodes)
            stamp = None
            try:
                stamp = at.vectors.upsert(cube_id, records)
            finally:
                # A chat's next turn extends the cached index instead of costing a rebuild.
                at.indexes.written(
                    cube_id,
                    stamp,
                    [r.id for r in records],
                    np.asarray([r.dense for r in records], np.float32),
                    [r.payload for r in records],
                )
        except Exception:
            self._undo(
                at,
                cube_id,
                [item.id for item in items if item.id not in in_vectors],
                [node.id for node in nodes],
            )
            raise

    def _undo(
        self, at: SpaceBinding, cube_id: str, points: Sequence[str], nodes: Sequence[str]
    ) -> None:
        """Best effort: a store that is down keeps its part, which the retry completes
        (a node without a point) or search hides (a point without a node)."""
        steps: list[tuple[str, Sequence[str], Any]] = [
            ("vector points", points, at.vectors.delete),
            ("graph nodes", nodes, self.graph.delete_nodes),
        ]
        for what, ids, remove in steps:
            if not ids:
                continue
            try:
                remove(cube_id, list(ids))
            except Exception:
                logger.warning(
                    "cube %s: could not roll back %d %s of a failed add",
                    cube_id,
                    len(ids),
                    what,
                    exc_info=True,
                )
        at.indexes.invalidate(cube_id)

    def _records(
        self, at: SpaceBinding, items: Sequence[MemoryItem], seqs: Sequence[int]
    ) -> list[VectorRecord]:
        return vector_records(items, seqs, at.embedder.encode([embedding_text(i) for i in items]))

    @staticmethod
    def _reuse_or_encode(
        at: SpaceBinding, items: Sequence[MemoryItem], stored: Mapping[str, VectorRecord]
    ) -> Encoded:
        """Vectors for rewritten items: only a changed text needs the model; a status or
        metadata change (archive, delete, recover) keeps the vectors it has."""
        texts = [embedding_text(i) for i in items]
        fresh = [
            n
            for n, (item, text) in enumerate(zip(items, texts, strict=True))
            if (r := stored.get(item.id)) is None or r.payload.get(TEXT) != text
        ]
        encoded = at.embedder.encode([texts[n] for n in fresh]) if fresh else None
        dim = at.vectors.dim
        dense = np.zeros((len(items), dim), dtype=np.float32)
        none = np.zeros((0, dim), dtype=np.float16)
        tokens: list[np.ndarray] = [none] * len(items)
        row = {n: k for k, n in enumerate(fresh)}
        for n, item in enumerate(items):
            if n in row:
                assert encoded is not None
                dense[n] = encoded.dense[row[n]]
                if encoded.tokens:
                    tokens[n] = encoded.tokens[row[n]]
            else:
                record = stored[item.id]
                dense[n] = np.asarray(record.dense, dtype=np.float32)
                if record.tokens is not None:
                    tokens[n] = record.tokens
        has_tokens = any(len(t) for t in tokens)
        return Encoded(dense, tokens if has_tokens else None)

    def update_items(self, cube_id: str, items: Sequence[MemoryItem]) -> None:
        """Rewrite stored items whose text or metadata changed (status, sources, history).

        Vectors first: search reads them, so a failure after that leaves the graph (the
        inspectable record) one step behind rather than search showing a stale status.
        """
        at = self.spaces.of(cube_id)
        if not items:
            return
        stored = {
            r.id: r for r in at.vectors.retrieve(cube_id, [i.id for i in items], with_tokens=True)
        }
        now = time.time_ns()
        seqs = [
            int((r.payload.get(SEQ) if (r := stored.get(item.id)) else None) or now + n)
            for n, item in enumerate(items)
        ]
        records = vector_records(items, seqs, self._reuse_or_encode(at, items, stored))
        try:
            at.vectors.upsert(cube_id, records)
        finally:
            at.indexes.invalidate(cube_id)
        self.graph.upsert_nodes(cube_id, items)

    def delete(self, cube_id: str, ids: Sequence[str]) -> list[str]:
        """Remove every trace, also of a memory that one store lost: each store is asked
        which ids it holds in this cube (vectors first: a half-done delete is never
        searchable). Returns the ids found in either store."""
        at = self.spaces.of(cube_id)
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []
        in_graph = self.graph.existing_ids(cube_id, wanted)
        in_vectors = at.vectors.existing_ids(cube_id, [i for i in wanted if is_memory_id(i)])
        present = sorted(in_graph | in_vectors)
        if in_vectors:
            try:
                at.vectors.delete(cube_id, sorted(in_vectors))
            finally:
                at.indexes.invalidate(cube_id)
        if in_graph:
            self.graph.delete_nodes(cube_id, sorted(in_graph))
        return present

    def reconcile(self, cube_id: str) -> Reconciled:
        """Settle what crashes left in a cube: points without a node are removed (search
        hides them already), nodes without a point get their point (a half-done add).

        Topic nodes (graph only, by design) are left alone. Run it while the cube takes no
        adds: an add in flight has its node and not yet its point, which this would complete
        early (harmless: the same point is written).
        """
        at = self.spaces.of(cube_id)
        scan: CubeScan = at.vectors.scan(cube_id)
        alive = self.graph.existing_ids(cube_id, scan.ids)
        orphans = sorted(set(scan.ids) - alive)
        if orphans:
            try:
                at.vectors.delete(cube_id, orphans)
            finally:
                at.indexes.invalidate(cube_id)
        node_ids = self.graph.find_ids(cube_id, memory_types=POINT_TYPES)
        pointless = sorted(set(node_ids) - at.vectors.existing_ids(cube_id, node_ids))
        if pointless:
            nodes = self.graph.get_nodes([cube_id], pointless)
            seq = time.time_ns()
            try:
                at.vectors.upsert(
                    cube_id, self._records(at, nodes, [seq + n for n in range(len(nodes))])
                )
            finally:
                at.indexes.invalidate(cube_id)
        return Reconciled(orphan_points=orphans, completed=pointless)

    def delete_matching(self, cube_id: str, filter: FilterExpr) -> list[str]:
        return self.delete(cube_id, self.graph.find_ids(cube_id, filter))

    # -- read ----------------------------------------------------------------------------

    def locate(self, ids: Sequence[str]) -> dict[str, str]:
        return self.graph.locate(ids)

    def get_by_ids(self, cube_ids: Sequence[str], ids: Sequence[str]) -> list[MemoryItem]:
        items = self.graph.get_nodes(cube_ids, ids)
        return [i for i in items if i.metadata.status != MemoryStatus.DELETED]

    def get_page(
        self,
        cube_id: str,
        filter: FilterExpr | None = None,
        page: int | None = None,
        page_size: int | None = None,
    ) -> tuple[list[MemoryItem], int]:
        """Newest first; both page and page_size absent means everything."""
        limit = page_size
        offset = ((page or 1) - 1) * page_size if page_size else 0
        return self.graph.list_nodes(
            cube_id,
            filter=filter,
            memory_types=TEXT_TYPES,
            statuses=VISIBLE_STATUSES,
            offset=offset,
            limit=limit,
        )

    def get_graph(self, cube_id: str) -> tuple[list[MemoryItem], list[Edge]]:
        nodes, _ = self.graph.list_nodes(cube_id, statuses=VISIBLE_STATUSES)
        return nodes, self.graph.get_edges(cube_id)

    def statistics(self, cube_id: str, nodes: Sequence[MemoryItem] | None = None) -> dict[str, int]:
        """Counts per memory type; pass the cube's visible nodes when already fetched."""
        if nodes is None:
            nodes, _ = self.graph.list_nodes(cube_id, statuses=VISIBLE_STATUSES)
        stats: dict[str, int] = {}
        for node in nodes:
            key = str(node.metadata.memory_type)
            stats[key] = stats.get(key, 0) + 1
        return stats

    # -- search --------------------------------------------------------------------------

    def search(
        self,
        question: str | Query,
        cube_filters: Mapping[str, FilterExpr | None],
        options: SearchOptions,
    ) -> dict[str, list[MemoryItem]]:
        """Rank each cube's memories, threshold by relativity, de-duplicate. The question is
        embedded once per embedding space among the cubes (one, unless a move is under way)."""
        asked = as_query(question)
        query = asked.text
        jobs: list[tuple[str, Any]] = []
        for at, cubes in self.spaces.groups(list(cube_filters)):
            encoded = asked.encoded(at.query_embedder)
            dense = encoded.dense[0]
            tokens = encoded.tokens[0] if encoded.tokens else None
            for cube in cubes:
                if self.search_config.ranker == "turns":
                    args: tuple[Any, ...] = (at, query, dense, tokens, cube, cube_filters[cube])
                    jobs.append((cube, (self._rank_cube, *args, options)))
                else:
                    args = (at, query, dense, cube, cube_filters[cube])
                    jobs.append((cube, (self._hybrid_cube, *args, options)))
        if len(jobs) == 1:
            cube, (fn, *args) = jobs[0]
            return {cube: fn(*args)}
        futures = {cube: self._pool.submit(*call) for cube, call in jobs}
        return {cube: futures[cube].result() for cube in cube_filters}

    def nearest(
        self, cube_id: str, text: str, limit: int, filter: VectorFilter | None = None
    ) -> list[VectorHit]:
        """The cube's points closest to `text`, embedded as a query (one model per store:
        callers never pair an embedder with a store themselves). Hits may name a point left
        without its node by a crash: callers read the items from the graph (`get_by_ids`)."""
        at = self.spaces.of(cube_id)
        vector = at.query_embedder.embed([text])[0]
        return at.vectors.search_dense([cube_id], vector.tolist(), limit, filter)

    def has_types(self, cube_id: str, memory_types: Sequence[str]) -> bool:
        """Whether the cube holds any active memory of these types (from its cached index)."""
        at = self.spaces.of(cube_id)
        if self.search_config.ranker != "turns":
            return True
        return bool(at.indexes.get(cube_id).type_set & set(memory_types))

    def _rank_cube(
        self,
        at: SpaceBinding,
        query: str,
        query_dense: np.ndarray,
        query_tokens: np.ndarray | None,
        cube_id: str,
        filter: FilterExpr | None,
        options: SearchOptions,
    ) -> list[MemoryItem]:
        """The turn-ranking recipe over the cube's in-memory index, MaxSim from the store.

        The MaxSim call also returns the cube's revision: if a write from elsewhere made
        the cached index stale, it is rebuilt and the ranking runs once more.
        """
        params = self.search_config.ranking
        types = list(options.memory_types or TEXT_TYPES)
        allowed_ids: list[str] | None = None
        if filter is not None:
            allowed_ids = self.graph.find_ids(
                cube_id, filter, memory_types=types, statuses=[MemoryStatus.ACTIVATED]
            )
            if not allowed_ids:
                return []
        cube = at.indexes.get(cube_id)
        for attempt in range(2):
            index = cube.index
            if index.size == 0:
                late = LateScores({}, at.vectors.revision(cube_id))
                if late.revision != cube.revision and attempt == 0:
                    cube = at.indexes.get(cube_id, late.revision)
                    continue
                return []
            allowed = cube.allowed(types, allowed_ids)
            if allowed is not None and not allowed.any():
                return []
            score = first_stage(index, query, query_dense, options.reference_time, params, allowed)
            if options.session_id and params.w_session:
                score = score + params.w_session * (cube.sessions == options.session_id)
            top = head(score, max(params.rerank_n, 3 * options.top_k))
            rerank = top[: params.rerank_n]
            if query_tokens is not None and params.w_maxsim and len(rerank) > 1:
                late = at.vectors.late_scores(cube_id, query_tokens, [index.ids[i] for i in rerank])
            else:
                late = LateScores({}, at.vectors.revision(cube_id))
            if late.revision != cube.revision and attempt == 0:
                cube = at.indexes.get(cube_id, late.revision)
                continue
            break
        late_values = np.array([late.scores.get(index.ids[i], np.nan) for i in rerank])
        order = np.concatenate(
            [late_rerank(score, rerank, late_values, params), top[len(rerank) :]]
        )
        order = spread_sessions(index, query, order, params)
        order_ints = [int(i) for i in order]
        return self._finish(
            query, query_dense, cube_id, cube, order_ints, options, verify=allowed_ids is None
        )

    def _finish(
        self,
        query: str,
        query_dense: np.ndarray,
        cube_id: str,
        cube: IndexedCube,
        order: Sequence[int],
        options: SearchOptions,
        verify: bool = True,
    ) -> list[MemoryItem]:
        """Relativity, the threshold and de-dup, walking the ranker's order until top_k.

        With `verify`, only ids whose graph node exists (orphan points, see the module
        docstring; known per index); without it the ids came from the graph already.

        "mmr" drops near-duplicates here, like "sim": trading rank for diversity on top of
        the ranker's neighbour and session terms cost 0.025 R@5 on the LoCoMo dev file.
        """
        index = cube.index
        terms = index.terms or []
        dedup = options.dedup != "no"
        threshold = self.search_config.mmr_duplicate_threshold
        chosen: list[tuple[int, float]] = []
        chunk = max(options.top_k, 8)
        alive = (
            cube.alive_mask(functools.partial(self.graph.existing_ids, cube_id)) if verify else None
        )
        for start in range(0, len(order), chunk):
            part = list(order[start : start + chunk])
            if alive is not None:
                part = [i for i in part if alive[i]]
                if not part:
                    continue
            ids = [index.ids[i] for i in part]
            scores = self._relevance(
                query,
                query_dense,
                [
                    RerankCandidate(
                        str(cube.payloads[i].get(TEXT) or ""),
                        index.vectors[i],
                        terms=terms[i] if terms else None,
                    )
                    for i in part
                ],
                ids,
                {index.ids[i]: cube.payloads[i] for i in part},
                options,
            )
            for position, item_id in zip(part, ids, strict=True):
                if scores[item_id] < options.relativity:
                    continue
                if dedup and chosen:
                    picked = index.vectors[[p for p, _ in chosen]]
                    if float((picked @ index.vectors[position]).max()) >= threshold:
                        continue
                chosen.append((position, scores[item_id]))
                if len(chosen) == options.top_k:
                    break
            if len(chosen) == options.top_k:
                break
        results = []
        for position, score in chosen:
            item = MemoryItem.model_validate_json(cube.payloads[position]["item"])
            item.metadata.relativity = round(score, 6)
            results.append(item)
        return results

    def _hybrid_cube(
        self,
        at: SpaceBinding,
        query: str,
        query_dense: np.ndarray,
        cube_id: str,
        filter: FilterExpr | None,
        options: SearchOptions,
    ) -> list[MemoryItem]:
        cfg = self.search_config
        memory_types = list(options.memory_types or TEXT_TYPES)
        vfilter = VectorFilter(memory_types=memory_types, statuses=[MemoryStatus.ACTIVATED])
        if filter is not None:
            allowed = self.graph.find_ids(
                cube_id, filter, memory_types=memory_types, statuses=[MemoryStatus.ACTIVATED]
            )
            if not allowed:
                return []
            vfilter.ids = allowed
        recall = max(cfg.min_recall, options.top_k * cfg.recall_factor)
        found = at.vectors.search_hybrid(
            [cube_id], query_dense.tolist(), query_vector(query), recall, vfilter
        )
        fused = rrf_fuse(
            [[h.id for h in found.dense_hits], [h.id for h in found.sparse_hits]], k=cfg.rrf_k
        )
        if not fused:
            return []
        payloads = dict(zip(found.ids, found.payloads, strict=True))
        missing = [i for i, p in payloads.items() if "item" not in p]
        if missing:  # points written without the item copy: read them from the graph
            for node in self.graph.get_nodes([cube_id], missing):
                payloads[node.id] = _payload(node)
        vectors = {item_id: found.vectors[row] for row, item_id in enumerate(found.ids)}
        terms = {
            item_id: frozenset(found.term_ids[row])
            for row, item_id in enumerate(found.ids)
            if row < len(found.term_ids)
        }
        candidate_ids = [
            item_id
            for item_id, _ in fused[:recall]
            if payloads.get(item_id, {}).get("status") == MemoryStatus.ACTIVATED
        ]
        if vfilter.ids is None and candidate_ids:  # only memories with a node (orphan points)
            alive = self.graph.existing_ids(cube_id, candidate_ids)
            candidate_ids = [i for i in candidate_ids if i in alive]
        candidates = [
            RerankCandidate(payloads[i]["memory"], vectors.get(i), terms.get(i))
            for i in candidate_ids
        ]
        scores = self._relevance(query, query_dense, candidates, candidate_ids, payloads, options)
        ranked = sorted(
            (i for i in candidate_ids if scores[i] >= options.relativity),
            key=lambda i: (-scores[i], i),
        )
        chosen = select(
            ranked,
            scores,
            vectors,
            options.top_k,
            mode=options.dedup,
            mmr_lambda=cfg.mmr_lambda,
            duplicate_threshold=cfg.mmr_duplicate_threshold,
        )
        results = []
        for item_id in chosen:
            # Search reads the copy kept in the vector payload: no graph round trip.
            item = MemoryItem.model_validate_json(payloads[item_id]["item"])
            item.metadata.relativity = round(scores[item_id], 6)
            results.append(item)
        return results

    def _relevance(
        self,
        query: str,
        query_dense: np.ndarray,
        candidates: Sequence[RerankCandidate],
        ids: Sequence[str],
        payloads: Mapping[str, Mapping[str, Any]],
        options: SearchOptions,
    ) -> dict[str, float]:
        if options.rerank and self.reranker is not None:
            raw = self.reranker.rerank(query, query_dense, candidates)
        else:
            raw = [
                float(np.dot(query_dense, c.dense)) if c.dense is not None else 0.0
                for c in candidates
            ]
        cfg = self.search_config
        span = max(cfg.score_ceiling - cfg.score_floor, 1e-6)
        scores: dict[str, float] = {}
        for item_id, raw_score in zip(ids, raw, strict=True):
            score = (raw_score - cfg.score_floor) / span
            if options.session_id and payloads[item_id].get("session_id") == options.session_id:
                score += cfg.session_boost
            scores[item_id] = min(max(score, 0.0), 1.0)
        return scores

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.graph.close()
        self.spaces.close()


def items_for_windows(
    cube_id: str,
    user_id: str,
    windows: Sequence[Window],
    session_id: str = DEFAULT_SESSION,
    tags: Sequence[str] = (),
    info: Mapping[str, Any] | None = None,
    status: MemoryStatus = MemoryStatus.ACTIVATED,
) -> dict[str, MemoryItem]:
    """The memories one add of these windows stores, by id (shared with the bulk ingest job)."""
    items: dict[str, MemoryItem] = {}
    for window in windows:
        item_id = memory_id_for(cube_id, window.text)
        if item_id in items:
            # The same text twice in one request (a repeated message): one memory that
            # keeps every source, so no message loses its provenance.
            sources = items[item_id].metadata.sources
            sources.extend(s for s in window.sources if s not in sources)
            continue
        item_info = dict(info or {})
        if window.file_ids:
            item_info["file_ids"] = list(window.file_ids)
        items[item_id] = MemoryItem(
            id=item_id,
            memory=window.text,
            cube_id=cube_id,
            metadata=MemoryMetadata(
                user_id=user_id,
                session_id=session_id,
                memory_type=window.memory_type,
                sources=list(window.sources),
                tags=list(dict.fromkeys([f"mode:{window.mode}", *window.tags, *tags])),
                info=item_info,
                key=window.key,
                background=window.background,
                status=status,
            ),
        )
    return items


def is_memory_id(value: str) -> bool:
    """Memory ids are UUIDs (`memory_id_for`): anything else names no stored memory."""
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def embedding_text(item: MemoryItem) -> str:
    """What vectors and keywords describe: what was said (`speaker: content`), not the
    rendered memory line, whose timestamps would only add noise to both."""
    return str(unit_payload(item, 0)[TEXT])


def vector_records(
    items: Sequence[MemoryItem], seqs: Sequence[int], encoded: Encoded
) -> list[VectorRecord]:
    """Vector points for items whose `embedding_text` was encoded (row i for item i)."""
    payloads = [_payload(item, seq) for item, seq in zip(items, seqs, strict=True)]
    texts = [str(p[TEXT]) for p in payloads]
    tokens: list[np.ndarray | None] = (
        list(encoded.tokens) if encoded.tokens else [None] * len(items)
    )
    # Built from values made here: skip re-validating 384 floats a record.
    return [
        VectorRecord.model_construct(
            id=item.id,
            dense=vec.tolist(),
            sparse=document_vector(text),
            payload=payload,
            tokens=tok,
        )
        for item, text, payload, vec, tok in zip(
            items, texts, payloads, encoded.dense, tokens, strict=True
        )
    ]


def _payload(item: MemoryItem, seq: int = 0) -> dict[str, Any]:
    meta = item.metadata
    return {
        **unit_payload(item, seq),
        "memory_type": str(meta.memory_type),
        "status": str(meta.status),
        "session_id": meta.session_id,
        "user_id": meta.user_id,
        "created_at": meta.created_at,
        "memory": item.memory,
        # A copy of the item, so that search needs no graph round trip.
        "item": item.model_dump_json(exclude={"metadata": {"embedding", "relativity"}}),
    }
