"""Embedding spaces: which model embedded a cube's vectors, and where those vectors live.

A space is (model, dim, location). The configured embedder and vector store form the
default space; `jobs.reembed` moves a cube into another one, whose vectors live beside the
default ones (another qdrant-edge shard or Qdrant collection), never mixed with them, since
vectors of two models are not comparable and may differ in dimension.

Which space each cube uses is durable state, a row per moved cube in the SQL store
(`embedding_spaces`); a cube without a row is in the default space. Anything that embeds for
a cube (a search query, an add) must use the cube's space: `SpaceResolver` answers that
question and hands out a `MemoryService` per space.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from memos_ray.config import MemosConfig, QdrantConfig, QdrantEdgeConfig
from memos_ray.domain.memory import iso, utc_now
from memos_ray.errors import ConflictError, StoreError
from memos_ray.models.embedder import Embedder, SentenceTransformerEmbedder
from memos_ray.service import MemoryService
from memos_ray.stores.graph.base import GraphStore
from memos_ray.stores.vector.base import VectorStore

SpaceState = Literal["active", "migrating"]


class EmbeddingSpace(BaseModel):
    """`location` names the vector store holding the space's vectors: a shard or local path
    relative to the data dir, or a Qdrant collection (with a Qdrant url)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = ""  # "" is the packaged all-MiniLM-L6-v2
    dim: int = Field(ge=1)
    location: str

    @property
    def slug(self) -> str:
        name = self.model.rstrip("/").split("/")[-1] or "all-minilm-l6-v2"
        base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]
        digest = hashlib.sha1(f"{self.model}\x00{self.dim}".encode()).hexdigest()[:8]
        return f"{base}-{self.dim}-{digest}"


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


class CubeSpace(BaseModel):
    cube_id: str
    active: EmbeddingSpace
    state: SpaceState = "active"
    target: EmbeddingSpace | None = None
    updated_at: str = ""


_META = MetaData()
SPACES_TABLE = Table(
    "embedding_spaces",
    _META,
    Column("cube_id", String(128), primary_key=True),
    Column("model", String(1024), nullable=False),
    Column("dim", Integer, nullable=False),
    Column("location", String(1024), nullable=False),
    Column("state", String(16), nullable=False),
    Column("target_model", String(1024)),
    Column("target_dim", Integer),
    Column("target_location", String(1024)),
    Column("updated_at", String(32), nullable=False),
)


class SpaceRegistry:
    """Per-cube space records in the SQL store; every change is one short transaction, so
    the switch from old to new space is atomic for every reader."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        try:
            _META.create_all(engine, checkfirst=True)
        except SQLAlchemyError:
            # Another process created it at the same moment (SQLite has no DDL lock).
            _META.create_all(engine, checkfirst=True)

    def get(self, cube_id: str) -> CubeSpace | None:
        with self._guard("read"), self._engine.connect() as conn:
            row = conn.execute(select(SPACES_TABLE).where(SPACES_TABLE.c.cube_id == cube_id))
            found = row.mappings().first()
        if found is None:
            return None
        target = None
        if found["target_dim"] is not None:
            target = EmbeddingSpace(
                model=found["target_model"] or "",
                dim=found["target_dim"],
                location=found["target_location"],
            )
        return CubeSpace(
            cube_id=cube_id,
            active=EmbeddingSpace(
                model=found["model"], dim=found["dim"], location=found["location"]
            ),
            state=found["state"],
            target=target,
            updated_at=found["updated_at"],
        )

    def active(self, cube_id: str, default: EmbeddingSpace) -> EmbeddingSpace:
        record = self.get(cube_id)
        return record.active if record is not None else default

    def begin(self, cube_id: str, source: EmbeddingSpace, target: EmbeddingSpace) -> None:
        """Record the move (idempotent: resuming the same move is fine, another is refused)."""
        record = self.get(cube_id)
        if record is not None and record.state == "migrating" and record.target != target:
            raise ConflictError(
                f"cube {cube_id} is already moving to {record.target}; finish that move first"
            )
        values = {
            "model": source.model,
            "dim": source.dim,
            "location": source.location,
            "state": "migrating",
            "target_model": target.model,
            "target_dim": target.dim,
            "target_location": target.location,
            "updated_at": iso(utc_now()),
        }
        self._upsert(cube_id, values, exists=record is not None)

    def switch(self, cube_id: str, target: EmbeddingSpace) -> None:
        """From now on the cube is in `target`: one UPDATE, seen by every reader at once."""
        values = {
            "model": target.model,
            "dim": target.dim,
            "location": target.location,
            "state": "active",
            "target_model": None,
            "target_dim": None,
            "target_location": None,
            "updated_at": iso(utc_now()),
        }
        self._upsert(cube_id, values, exists=self.get(cube_id) is not None)

    def _upsert(self, cube_id: str, values: dict[str, object], *, exists: bool) -> None:
        with self._guard("write"), self._engine.begin() as conn:
            if exists:
                conn.execute(
                    update(SPACES_TABLE).where(SPACES_TABLE.c.cube_id == cube_id).values(**values)
                )
            else:
                try:
                    conn.execute(insert(SPACES_TABLE).values(cube_id=cube_id, **values))
                except IntegrityError as exc:
                    raise ConflictError(f"cube {cube_id}: its space changed meanwhile") from exc

    @staticmethod
    @contextmanager
    def _guard(what: str) -> Iterator[None]:
        try:
            yield
        except (ConflictError, IntegrityError):
            raise
        except SQLAlchemyError as exc:
            raise StoreError(f"embedding space registry {what} failed: {exc}") from exc


def space_embedder(config: MemosConfig, space: EmbeddingSpace) -> Embedder:
    cfg = config.embedder
    return SentenceTransformerEmbedder(
        space.model or None, device=cfg.device, batch_size=cfg.batch_size
    )


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
            from memos_ray.stores.vector.qdrant_edge import QdrantEdgeVectorStore

            return QdrantEdgeVectorStore(space.dim, path)
        from memos_ray.stores.actors import get_or_create_vector_actor

        spec = (
            "memos_ray.stores.vector.qdrant_edge:QdrantEdgeVectorStore",
            {"dim": space.dim, "path": str(path)},
        )
        return get_or_create_vector_actor(
            space_actor_name(config, space), config.serving.namespace, spec
        )

    def close(self) -> None:
        """Closes what this opened (an actor proxy only lets go; the shard stays up)."""
        with self._lock:
            for store in self._opened.values():
                store.close()
            self._opened.clear()


def space_actor_name(config: MemosConfig, space: EmbeddingSpace) -> str:
    from memos_ray.runtime import actor_suffix

    digest = hashlib.sha1(space.location.encode()).hexdigest()[:10]
    return f"memos-vector-{actor_suffix(config)}-{digest}"


def stop_space_store(config: MemosConfig, space: EmbeddingSpace) -> None:
    """Flush and stop the actor owning a space's shard (a job that started its own cluster
    calls it before the cluster goes, as `runtime.stop_embedded` does for the default)."""
    if not isinstance(config.vector, QdrantEdgeConfig) or space == default_space(config):
        return
    import ray

    try:
        actor = ray.get_actor(space_actor_name(config, space), namespace=config.serving.namespace)
    except ValueError:
        return
    try:
        ray.get(actor.close.remote(), timeout=60)
    finally:
        ray.kill(actor, no_restart=True)


def _qdrant(config: MemosConfig, vector: QdrantConfig, space: EmbeddingSpace) -> VectorStore:
    from memos_ray.stores.vector.qdrant import QdrantVectorStore

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


class SpaceResolver:
    """What a service needs per cube: the cube's space, its store and its embedder.

    `service_for(cube)` returns a MemoryService bound to the cube's current space, so a
    caller that resolves per request searches with the old model until the switch and with
    the new one right after it. Stores and embedders are opened once per space.
    """

    def __init__(
        self,
        config: MemosConfig,
        graph: GraphStore,
        registry: SpaceRegistry,
        stores: SpaceStores,
        default_embedder: Embedder,
    ) -> None:
        self.config = config
        self.graph = graph
        self.registry = registry
        self.default = default_space(config)
        self.stores = stores
        self._default_embedder = default_embedder
        self._services: dict[EmbeddingSpace, MemoryService] = {}
        self._lock = threading.Lock()

    def space_of(self, cube_id: str) -> EmbeddingSpace:
        return self.registry.active(cube_id, self.default)

    def service_for(self, cube_id: str) -> MemoryService:
        return self.service_in(self.space_of(cube_id))

    def service_in(self, space: EmbeddingSpace) -> MemoryService:
        with self._lock:
            service = self._services.get(space)
            if service is None:
                embedder = (
                    self._default_embedder
                    if (space.model, space.dim) == (self.default.model, self.default.dim)
                    else space_embedder(self.config, space)
                )
                service = MemoryService(
                    self.graph, self.stores.store(space), embedder, None, self.config.search
                )
                self._services[space] = service
            return service
