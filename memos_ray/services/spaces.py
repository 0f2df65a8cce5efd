"""Embedding spaces: which model embedded a cube's vectors, and where those vectors live.

A space is (model, dim, location). The configured embedder and vector store form the
default space; `jobs.reembed` moves a cube into another one, whose vectors live beside the
default ones (another qdrant-edge shard or Qdrant collection), never mixed with them, since
vectors of two models are not comparable and may differ in dimension.

Which space each cube uses is durable state, a row per moved cube in the SQL store
(`embedding_spaces`, see `memos_ray.services.space_registry`); a cube without a row is in
the default space. Anything that embeds for a cube (a search query, an add) must use the
cube's space: `SpaceResolver` answers that question, and a `MemoryService` built over it
(`route_spaces`) sends each cube's calls to its space's store and model.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import ray
from ray.util import list_named_actors
from sqlalchemy import Engine

from memos_ray.config import MemosConfig, QdrantConfig, QdrantEdgeConfig
from memos_ray.embedded.actors import get_or_create_vector_actor
from memos_ray.embedded.falkordb_actor import actor_suffix
from memos_ray.models.embedder import Embedder
from memos_ray.models.runtimes import configured_embedder
from memos_ray.services.memory import MemoryService, SpaceBinding, bind_space
from memos_ray.services.space_registry import CubeSpace, EmbeddingSpace, SpaceRegistry
from memos_ray.stores.vector.base import VectorStore
from memos_ray.stores.vector.qdrant import QdrantVectorStore

logger = logging.getLogger("memos_ray.services.spaces")


def configured_location(config: MemosConfig) -> str:
    vector = config.vector
    if isinstance(vector, QdrantEdgeConfig):
        return vector.path
    if vector.url:
        return vector.collection
    return vector.path or ":memory:"


def default_space(config: MemosConfig) -> EmbeddingSpace:
    """The configured embedder over the configured store: where cubes without a record are."""
    return EmbeddingSpace(
        model=config.embedder.model or "",
        dim=config.embedder.dim,
        location=configured_location(config),
    )


def space_for_model(config: MemosConfig, model: str, dim: int) -> EmbeddingSpace:
    """Where a model's vectors go: the configured store for the configured model, else a
    store of their own beside it, named after the model and dimension."""
    default = default_space(config)
    if (model, dim) == (default.model, default.dim):
        return default
    slug = EmbeddingSpace(model=model, dim=dim, location="").slug
    vector = config.vector
    if isinstance(vector, QdrantConfig) and vector.url:
        location = f"{vector.collection}__{slug}"
    else:
        location = f"{default.location.rstrip('/')}-spaces/{slug}"
    return EmbeddingSpace(model=model, dim=dim, location=location)


def space_embedder(config: MemosConfig, space: EmbeddingSpace) -> Embedder:
    return configured_embedder(config.embedder, space.model or None)


class SpaceStores:
    """The vector store of each space, opened once: the configured store for the default
    location, and beside it one store per other location. `in_ray` puts an embedded shard
    in a named actor (shared by every process of the cluster), else it opens in-process."""

    def __init__(self, config: MemosConfig, default: VectorStore, *, in_ray: bool) -> None:
        self.config = config
        self.default = default
        self.in_ray = in_ray
        self._opened: dict[str, VectorStore] = {}
        self._lock = threading.Lock()

    def store(self, space: EmbeddingSpace) -> VectorStore:
        if space.location == configured_location(self.config):
            return self.default
        with self._lock:
            store = self._opened.get(space.location)
            if store is None:
                store = self._open(space)
                self._opened[space.location] = store
            return store

    def _open(self, space: EmbeddingSpace) -> VectorStore:
        config, vector = self.config, self.config.vector
        if not isinstance(vector, QdrantEdgeConfig):
            return _qdrant(config, vector, space)
        path = config.data_path(space.location)
        if not self.in_ray:
            # deferred: imports the qdrant-edge engine
            from memos_ray.stores.vector.qdrant_edge import QdrantEdgeVectorStore

            return QdrantEdgeVectorStore(space.dim, path)

        spec = (
            "memos_ray.stores.vector.qdrant_edge:QdrantEdgeVectorStore",
            {"dim": space.dim, "path": str(path)},
        )
        # On the node of the configured engine (`vector.node_resource`), like its own actor:
        # a shard's files are local to the node that opened them.
        pinned = vector.node_resource
        return get_or_create_vector_actor(
            space_actor_name(config, space),
            config.serving.namespace,
            spec,
            resources={pinned: 0.001} if pinned else None,
        )

    def close(self) -> None:
        """Closes what this opened (an actor proxy only lets go; the shard stays up)."""
        with self._lock:
            for store in self._opened.values():
                store.close()
            self._opened.clear()


def space_actor_name(config: MemosConfig, space: EmbeddingSpace) -> str:

    digest = hashlib.sha1(space.location.encode()).hexdigest()[:10]
    return f"memos-vector-{actor_suffix(config)}-{digest}"


def stop_space_store(config: MemosConfig, space: EmbeddingSpace) -> None:
    """Flush and stop the actor owning one space's shard."""
    if not isinstance(config.vector, QdrantEdgeConfig) or space == default_space(config):
        return

    try:
        actor = ray.get_actor(space_actor_name(config, space), namespace=config.serving.namespace)
    except ValueError:
        return
    try:
        ray.get(actor.close.remote(), timeout=60)
    finally:
        ray.kill(actor, no_restart=True)


def stop_space_stores(config: MemosConfig) -> None:
    """Flush and stop every space shard actor of this data dir. `runtime.stop_embedded`
    calls it, so whatever stops its stores (the app, a job that started its own cluster)
    leaves no shard owned by an actor that outlives it."""
    if not isinstance(config.vector, QdrantEdgeConfig):
        return

    namespace = config.serving.namespace
    prefix = f"memos-vector-{actor_suffix(config)}-"
    for entry in list_named_actors(all_namespaces=True):
        if entry["namespace"] != namespace or not entry["name"].startswith(prefix):
            continue
        try:
            actor = ray.get_actor(entry["name"], namespace=namespace)
        except ValueError:
            continue
        try:
            ray.get(actor.close.remote(), timeout=60)
        finally:
            ray.kill(actor, no_restart=True)


def _qdrant(config: MemosConfig, vector: QdrantConfig, space: EmbeddingSpace) -> VectorStore:

    if vector.url:
        return QdrantVectorStore(
            space.dim,
            url=vector.url,
            api_key=vector.api_key.get_secret_value() if vector.api_key else None,
            collection=space.location,
            timeout_s=vector.timeout_s,
        )
    path = str(config.data_path(space.location))
    return QdrantVectorStore(space.dim, path=path, collection=vector.collection)


# How long a running service trusts what it read of the registry. A move's grace period
# (`jobs.reembed --grace-s`, 5 s by default) must be longer than this plus the longest request.
SPACE_TTL_S = 1.0
# Per-cube entries a resolver keeps before starting afresh (each is a few hundred bytes).
_MAX_CACHED = 100_000

EmbedderFactory = Callable[[EmbeddingSpace], Embedder]


class SpaceResolver:
    """Which embedding space each cube is in, and that space's store and models
    (`memory.CubeSpaces`, for a MemoryService over every space).

    A caller that resolves per request searches with the old model until the switch and
    with the new one right after it. Stores and embedders are opened once per space.

    A job reads the registry on every call (`ttl_s` 0). A running service passes `ttl_s`:
    what it read is trusted that long, and while no cube has a record at all the default
    space is answered without any per-cube query. A cube seen migrating gets its target
    space opened (and its model warmed) in the background, so the switch finds it ready.
    """

    def __init__(
        self,
        config: MemosConfig,
        registry: SpaceRegistry,
        stores: SpaceStores,
        default_embedder: Embedder,
        *,
        default: SpaceBinding | None = None,
        embedder_for: EmbedderFactory | None = None,
        ttl_s: float = 0.0,
    ) -> None:
        self.config = config
        self.registry = registry
        self.default_space = default_space(config)
        self.stores = stores
        self.ttl_s = ttl_s
        self._default_embedder = default_embedder
        self._embedder_for = embedder_for
        self._bindings: dict[EmbeddingSpace, SpaceBinding] = {}
        if default is not None:
            self._bindings[self.default_space] = default
        self._lock = threading.Lock()
        self._refresh = threading.Lock()
        self._moved_until = 0.0
        self._moved = True
        self._cached: dict[str, tuple[float, EmbeddingSpace]] = {}
        self._warming: set[EmbeddingSpace] = set()

    @property
    def default(self) -> SpaceBinding:
        return self.binding(self.default_space)

    def of(self, cube_id: str) -> SpaceBinding:
        return self.binding(self.space_of(cube_id))

    def groups(self, cube_ids: Sequence[str]) -> list[tuple[SpaceBinding, list[str]]]:
        """The cubes by space (one group unless a move is under way)."""
        grouped: dict[EmbeddingSpace, list[str]] = {}
        for cube, space in self.spaces_of(cube_ids).items():
            grouped.setdefault(space, []).append(cube)
        return [(self.binding(space), cubes) for space, cubes in grouped.items()]

    def close(self) -> None:
        self.stores.close()
        self.stores.default.close()

    def space_of(self, cube_id: str) -> EmbeddingSpace:
        if self.ttl_s > 0 and not self._anything_moved():
            return self.default_space
        return self.spaces_of([cube_id])[cube_id]

    def spaces_of(self, cube_ids: Sequence[str]) -> dict[str, EmbeddingSpace]:
        """Each cube's current space, with one registry query for those not cached."""
        if self.ttl_s <= 0:
            records = self.registry.get_many(cube_ids)
            return {c: records[c].active if c in records else self.default_space for c in cube_ids}
        if not self._anything_moved():
            return dict.fromkeys(cube_ids, self.default_space)
        now = time.monotonic()
        spaces: dict[str, EmbeddingSpace] = {}
        for cube in cube_ids:
            hit = self._cached.get(cube)
            if hit is not None and hit[0] > now:
                spaces[cube] = hit[1]
        missing = [c for c in cube_ids if c not in spaces]
        if missing:
            records = self.registry.get_many(missing)
            self._prefetch(records.values())
            if len(self._cached) > _MAX_CACHED:
                self._cached.clear()
            for cube in missing:
                space = records[cube].active if cube in records else self.default_space
                self._cached[cube] = (now + self.ttl_s, space)
                spaces[cube] = space
        return {c: spaces[c] for c in cube_ids}

    def _anything_moved(self) -> bool:
        """Re-read at most once per ttl; a thread that finds another refreshing keeps the
        answer it has rather than queueing behind the query."""
        now = time.monotonic()
        if now >= self._moved_until and self._refresh.acquire(blocking=False):
            try:
                self._moved = self.registry.any_moved()
                self._moved_until = now + self.ttl_s
            finally:
                self._refresh.release()
        return self._moved

    def binding(self, space: EmbeddingSpace) -> SpaceBinding:
        found = self._bindings.get(space)
        if found is not None:
            return found
        with self._lock:
            found = self._bindings.get(space)
            if found is None:
                store = self.stores.store(space)
                found = bind_space(store, self._embedder(space), self.config.search)
                self._bindings[space] = found
            return found

    def _embedder(self, space: EmbeddingSpace) -> Embedder:
        if (space.model, space.dim) == (self.default_space.model, self.default_space.dim):
            return self._default_embedder
        if self._embedder_for is not None:
            return self._embedder_for(space)
        return space_embedder(self.config, space)

    def _prefetch(self, records: Iterable[CubeSpace]) -> None:
        for record in records:
            target = record.target
            if record.state != "migrating" or target is None:
                continue
            with self._lock:
                if target in self._bindings or target in self._warming:
                    continue
                self._warming.add(target)
            threading.Thread(
                target=self._warm, args=(target,), name="memos-space-warm", daemon=True
            ).start()

    def _warm(self, space: EmbeddingSpace) -> None:
        try:
            binding = self.binding(space)
            binding.embedder.embed(["warm up"])
            if binding.query_embedder is not binding.embedder:
                binding.query_embedder.embed(["warm up"])
        except Exception:
            # Not fatal: the first request in that space opens it again.
            logger.warning("warming embedding space %s failed", space.slug, exc_info=True)
        finally:
            with self._lock:
                self._warming.discard(space)


def route_spaces(
    config: MemosConfig,
    service: MemoryService,
    engine: Engine,
    embedder_for: EmbedderFactory,
    *,
    in_ray: bool = True,
    ttl_s: float = SPACE_TTL_S,
) -> MemoryService:
    """`service` (the configured stores and models) over every embedding space, for the
    services that keep running while cubes move; `embedder_for` gives the embedder of any
    other space's model."""
    resolver = SpaceResolver(
        config,
        SpaceRegistry(engine),
        SpaceStores(config, service.vectors, in_ray=in_ray),
        service.embedder,
        default=service.spaces.default,
        embedder_for=embedder_for,
        ttl_s=ttl_s,
    )
    return MemoryService(
        service.graph,
        reranker=service.reranker,
        search_config=service.search_config,
        spaces=resolver,
    )
