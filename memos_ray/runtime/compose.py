"""The composition root: configuration into stores, models and the services over them.

`build_services` assembles the services for every place that serves memory: the ingress
replica, a cube's scheduler actor, job workers, the benches and the tests. Places differ
only in how they reach stores and models: inside Ray (embedded servers owned by named
actors, models through the Serve app's deployment handles) or in one plain process
(`LocalStack`: embedded servers and models owned by that process).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import ray
from ray.serve.handle import DeploymentHandle

from memos_ray.config import (
    FalkorDBConfig,
    MemosConfig,
    MilvusConfig,
    Neo4jConfig,
    NoPreferenceConfig,
    OpenAILLMConfig,
    QdrantConfig,
    QdrantEdgeConfig,
    TransformersLLMConfig,
    VLLMConfig,
)
from memos_ray.embedded.actors import get_or_create_vector_actor
from memos_ray.embedded.falkordb_actor import actor_suffix, falkordb_actor
from memos_ray.embedded.falkordb_server import FalkorDBServer, falkordb_server
from memos_ray.errors import ConfigError
from memos_ray.models import smollm2
from memos_ray.models.adapters import AdapterStore
from memos_ray.models.batching import BatchingEmbedder
from memos_ray.models.chat import ChatModel
from memos_ray.models.embedder import Embedder
from memos_ray.models.handles import HandleChatModel, HandleEmbedder
from memos_ray.models.openai_chat import OpenAIChatModel
from memos_ray.models.reranker import EmbeddingReranker, Reranker
from memos_ray.models.runtimes import configured_embedder
from memos_ray.services.chat import ChatService
from memos_ray.services.fine import FineService
from memos_ray.services.memory import MemoryService
from memos_ray.services.preferences import PreferenceService
from memos_ray.services.spaces import (
    SPACE_TTL_S,
    EmbedderFactory,
    route_spaces,
    space_embedder,
    stop_space_stores,
)
from memos_ray.services.tenancy import AccessControl
from memos_ray.stores.graph.base import GraphStore
from memos_ray.stores.graph.falkordb import FalkorDBAddress, falkordb_graph_store
from memos_ray.stores.graph.neo4j import Neo4jGraphStore
from memos_ray.stores.sql.base import TenancyStore
from memos_ray.stores.sql.sqlalchemy import SQLTenancyStore
from memos_ray.stores.vector.base import VectorStore
from memos_ray.stores.vector.qdrant import QdrantVectorStore


def build_embedder(
    config: MemosConfig, threads: int | None = None, *, for_queries: bool = False
) -> Embedder:
    cfg = config.embedder
    return configured_embedder(cfg, cfg.model, threads=threads, for_queries=for_queries)


def build_query_embedder(config: MemosConfig) -> Embedder | None:
    """An in-process, naturally batched query embedder, or None to use the deployment."""
    if not config.embedder.local_queries:
        return None
    # deferred: imports torch
    import torch

    torch.set_num_threads(config.embedder.query_threads)
    embedder = build_embedder(config, threads=config.embedder.query_threads, for_queries=True)
    batching = BatchingEmbedder(embedder, threads=config.embedder.query_threads)
    batching.embed(["warm up"])
    return batching


def build_reranker(config: MemosConfig) -> Reranker | None:
    if config.reranker.backend == "none":
        return None
    return EmbeddingReranker(keyword_weight=config.reranker.keyword_weight)


def build_chat_model(config: MemosConfig) -> ChatModel | None:
    """The configured chat backend in this process; None when chat is switched off."""
    llm = config.llm
    if isinstance(llm, TransformersLLMConfig):
        # deferred: imports torch and transformers
        from memos_ray.models.hf_chat import TransformersChatModel

        models_dir = config.data_path(llm.models_dir)
        if llm.model is None:
            path, name = smollm2.hf_dir(models_dir), smollm2.MODEL_NAME
        else:
            path, name = Path(llm.model).expanduser(), Path(llm.model).name
        return TransformersChatModel(
            path,
            served_name=llm.served_name or name,
            device=llm.device,
            dtype=llm.dtype,
            threads=llm.threads or os.cpu_count(),
            kv_cache_dir=models_dir / "kv-cache",
            max_prefix_caches=llm.max_prefix_caches,
            kv_cache_disk_bytes=llm.kv_cache_disk_mb << 20,
            max_context_tokens=llm.max_context_tokens,
        )
    if isinstance(llm, VLLMConfig):
        # deferred: vLLM, on GPU machines only
        from memos_ray.models.vllm_engine import VLLMEngineChatModel

        return VLLMEngineChatModel(
            llm.model,
            served_model_name=llm.served_name or llm.model,
            dtype=llm.dtype,
            max_model_len=llm.max_model_len,
            gpu_memory_utilization=llm.gpu_memory_utilization,
            enforce_eager=llm.enforce_eager,
            max_loras=llm.max_loras,
            max_lora_rank=llm.max_lora_rank,
            engine_kwargs=llm.engine_kwargs,
        )
    if isinstance(llm, OpenAILLMConfig):
        return OpenAIChatModel(
            llm.base_url,
            model=llm.model,
            api_key=llm.api_key.get_secret_value() if llm.api_key else None,
            extra_models=llm.extra_models,
            read_timeout_s=llm.read_timeout_s,
            connect_timeout_s=llm.connect_timeout_s,
            max_retries=llm.max_retries,
            cache_block_tokens=llm.cache_block_tokens,
        )
    return None


def build_fine_service(
    config: MemosConfig,
    service: MemoryService,
    model: ChatModel,
    ledger: TenancyStore,
    preferences: PreferenceService | None = None,
) -> FineService:
    fine = config.fine
    return FineService(
        service,
        model,
        max_attempts=fine.max_attempts,
        max_tokens=fine.max_tokens,
        similarity=fine.similarity,
        candidates=fine.candidates,
        ledger=ledger,
        preferences=preferences,
    )


def build_preferences(
    config: MemosConfig, service: MemoryService, *, in_ray: bool
) -> PreferenceService | None:
    """The preference store: inside Ray an embedded Milvus Lite is a server owned by a named
    actor (every replica shares it); in one plain process it is a file."""
    cfg = config.preference
    if isinstance(cfg, NoPreferenceConfig):
        return None
    # deferred: imports pymilvus
    from memos_ray.stores.preference.milvus import MilvusPreferenceStore

    uri: str
    if isinstance(cfg, MilvusConfig):
        token = cfg.token.get_secret_value() if cfg.token else None
        uri, collection = cfg.uri, cfg.collection
    else:
        folder = config.data_path(cfg.path)
        folder.mkdir(parents=True, exist_ok=True)
        token, collection = None, cfg.collection
        if in_ray:
            # deferred: imports milvus_lite
            from memos_ray.embedded.milvus_server import milvus_lite_actor

            # The same folder the single-process file mode opens: either sees the other's data.
            actor = milvus_lite_actor(
                f"memos-milvus-{actor_suffix(config)}",
                config.serving.namespace,
                folder / "preferences.db",
            )
            uri = str(ray.get(actor.uri.remote()))
        else:
            uri = str(folder / "preferences.db")
    store = MilvusPreferenceStore(config.embedder.dim, uri=uri, token=token, collection=collection)
    return PreferenceService(
        service,
        store,
        implicit_evidence=config.fine.implicit_evidence,
        similarity=config.fine.preference_similarity,
    )


def build_tenancy_store(config: MemosConfig) -> SQLTenancyStore:
    return SQLTenancyStore.for_config(config)


def _neo4j(cfg: Neo4jConfig) -> GraphStore:
    auth = (cfg.user, cfg.password.get_secret_value()) if cfg.password else None
    return Neo4jGraphStore(cfg.uri, auth=auth, database=cfg.database)


def _qdrant(cfg: QdrantConfig, config: MemosConfig) -> VectorStore:
    return QdrantVectorStore(
        config.embedder.dim,
        url=cfg.url,
        api_key=cfg.api_key.get_secret_value() if cfg.api_key else None,
        path=str(config.data_path(cfg.path)) if cfg.path else None,
        collection=cfg.collection,
        timeout_s=cfg.timeout_s,
    )


def build_ray_stores(config: MemosConfig) -> tuple[GraphStore, VectorStore]:
    """Stores for a process inside Ray: embedded engines are reached through named actors."""

    if isinstance(config.graph, FalkorDBConfig):
        address = standalone_falkordb(config.graph) or ray.get(
            falkordb_actor(config).address.remote()
        )
        graph: GraphStore = falkordb_graph_store(address, config.graph)
    else:
        graph = _neo4j(config.graph)
    if isinstance(config.vector, QdrantEdgeConfig):
        pinned = config.vector.node_resource
        vectors: VectorStore = get_or_create_vector_actor(
            f"memos-vector-{actor_suffix(config)}",
            config.serving.namespace,
            _edge_spec(config),
            # A sliver of the resource only the node with the engine's files has.
            resources={pinned: 0.001} if pinned else None,
        )
    else:
        vectors = _qdrant(config.vector, config)
    return graph, vectors


def standalone_falkordb(cfg: FalkorDBConfig) -> FalkorDBAddress | None:
    """The address of a FalkorDB server that runs on its own (`graph.address`), else None."""
    if not cfg.address:
        return None
    host, sep, port = cfg.address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"graph.address must be host:port, not {cfg.address!r}")
    password = cfg.password.get_secret_value() if cfg.password else ""
    return FalkorDBAddress(host.strip("[]"), int(port), password)


def _edge_spec(config: MemosConfig) -> tuple[str, dict]:
    assert isinstance(config.vector, QdrantEdgeConfig)
    return (
        "memos_ray.stores.vector.qdrant_edge:QdrantEdgeVectorStore",
        {"dim": config.embedder.dim, "path": str(config.data_path(config.vector.path))},
    )


@dataclass
class Models:
    """How a process reaches its models."""

    # The configured embedder, for writes (and queries unless `query_embedder` is set).
    embedder: Embedder
    # Other embedding spaces' models (cubes moved by jobs.reembed); None loads them here.
    embedder_for: EmbedderFactory | None = None
    # Queries may take another path, e.g. an in-process batching embedder.
    query_embedder: Embedder | None = None
    # None: no chat, no fine reading, no feedback (llm.backend "none").
    chat: ChatModel | None = None


def served_models(
    config: MemosConfig,
    embedder: DeploymentHandle,
    llm: DeploymentHandle | None = None,
    *,
    query_embedder: Embedder | None = None,
) -> Models:
    """Models through the Serve app's deployments (an OpenAI-compatible LLM is called from
    this process directly)."""
    chat: ChatModel | None = HandleChatModel(llm) if llm is not None else None
    if chat is None and isinstance(config.llm, OpenAILLMConfig):
        chat = build_chat_model(config)
    return Models(
        embedder=HandleEmbedder(embedder, config.embedder.dim),
        embedder_for=lambda space: HandleEmbedder(embedder, space.dim, model=space.model),
        query_embedder=query_embedder,
        chat=chat,
    )


@dataclass
class Services:
    """What a process serves memory with, built once from a config by `build_services`."""

    config: MemosConfig
    # Over every embedding space: each cube's calls go to its space's store and model.
    memory: MemoryService
    tenancy: SQLTenancyStore
    access: AccessControl
    # Preference memory (Milvus); None when switched off.
    preferences: PreferenceService | None = None
    # None without a chat model.
    chat: ChatService | None = None
    # Fine mode (LLM extraction, feedback); None without a chat model.
    fine: FineService | None = None

    def close(self) -> None:
        if self.preferences is not None:
            self.preferences.store.close()
        self.memory.close()
        self.tenancy.close()


def build_services(
    config: MemosConfig,
    graph: GraphStore,
    vectors: VectorStore,
    models: Models,
    *,
    in_ray: bool,
    tenancy: SQLTenancyStore | None = None,
    fine_writes_preferences: bool = True,
    space_ttl_s: float = SPACE_TTL_S,
) -> Services:
    """The services over these stores and models; `in_ray` says whether embedded engines
    other processes share (Milvus Lite, moved cubes' shards) are reached through actors.
    Without `fine_writes_preferences`, fine reading returns the preferences it finds
    instead of storing them (the scheduler queues them as their own task). A job passes
    `space_ttl_s` 0: it reads each cube's embedding space afresh, a server caches it."""
    tenancy = tenancy or build_tenancy_store(config)
    configured = MemoryService(
        graph,
        vectors,
        models.embedder,
        build_reranker(config),
        config.search,
        query_embedder=models.query_embedder,
    )
    embedder_for = models.embedder_for or (lambda space: space_embedder(config, space))
    memory = route_spaces(
        config, configured, tenancy.engine, embedder_for, in_ray=in_ray, ttl_s=space_ttl_s
    )
    preferences = build_preferences(config, memory, in_ray=in_ray)
    chat = fine = None
    if models.chat is not None:
        adapters = AdapterStore.for_config(config)
        chat = ChatService(
            memory, models.chat, config.chat, config.reader, adapters, tenancy, preferences
        )
        fine = build_fine_service(
            config, memory, models.chat, tenancy, preferences if fine_writes_preferences else None
        )
    return Services(
        config,
        memory,
        tenancy,
        AccessControl(tenancy, config.admin_key_plain, config.admin_key_sha256),
        preferences=preferences,
        chat=chat,
        fine=fine,
    )


class LocalStack(AbstractContextManager["LocalStack"]):
    """All backends in this process, no Ray: for the CLI, tests and scripts.

    Embedded engines are single-process: do not run this beside a Serve app on the same
    data dir.
    """

    def __init__(
        self,
        config: MemosConfig,
        embedder: Embedder | None = None,
        chat: ChatModel | None = None,
    ) -> None:
        # deferred: imports the qdrant-edge engine
        from memos_ray.stores.vector.qdrant_edge import QdrantEdgeVectorStore

        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self._falkordb: FalkorDBServer | None = None
        if isinstance(config.graph, FalkorDBConfig):
            address = standalone_falkordb(config.graph)
            if address is None:  # the embedded server, owned by this process
                self._falkordb = falkordb_server(config.data_path("falkordb"), config.graph)
                self._falkordb.start()
                address = self._falkordb.address
            graph: GraphStore = falkordb_graph_store(address, config.graph)
        else:
            graph = _neo4j(config.graph)
        if isinstance(config.vector, QdrantEdgeConfig):
            vectors: VectorStore = QdrantEdgeVectorStore(
                config.embedder.dim, config.data_path(config.vector.path)
            )
        else:
            vectors = _qdrant(config.vector, config)
        models = Models(embedder or build_embedder(config), chat=chat)
        self.services = build_services(config, graph, vectors, models, in_ray=False)
        self.tenancy = self.services.tenancy
        self.service = self.services.memory
        self.preferences = self.services.preferences

    def close(self) -> None:
        self.services.close()
        if self._falkordb is not None:
            self._falkordb.stop()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def stop_embedded(config: MemosConfig) -> None:
    """Stop the embedded stores of this data dir cleanly (data flushed), then drop the actors."""
    stop_space_stores(config)  # the shards of cubes moved to other embedding spaces
    suffix = actor_suffix(config)
    actors = (
        (f"memos-vector-{suffix}", "close"),
        (f"memos-falkordb-{suffix}", "stop"),
        (f"memos-milvus-{suffix}", "stop"),
    )
    for name, method in actors:
        try:
            actor = ray.get_actor(name, namespace=config.serving.namespace)
        except ValueError:
            continue
        try:
            ray.get(getattr(actor, method).remote(), timeout=60)
        finally:
            ray.kill(actor, no_restart=True)
