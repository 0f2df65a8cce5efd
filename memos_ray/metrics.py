"""The service's Prometheus metrics, in one place, exported through Ray's metrics agent.

Every metric is a `ray.util.metrics` object, so a Ray process (Serve replicas, scheduler and
store actors, a driver that called `ray.init`) reports it to its node's metrics agent, which
Prometheus scrapes beside Ray's and Ray Serve's own metrics. Ray prefixes the names with
`ray_` and counters get `_total`: `memos_search_seconds` is scraped as
`ray_memos_search_seconds_bucket` and friends, `memos_memories_written` as
`ray_memos_memories_written_total`.

The objects are made on first use and only where Ray is initialised: the same code runs
outside Ray (the tests' LocalStack, the CLI, jobs' local runs), where recording is a no-op.
Recording never raises: a metric must not fail the request it describes.

Labels are small fixed sets (route templates, modes, task labels, outcomes, purposes, store
roles and operations), never ids or raw paths: `bounded` folds anything unexpected into
"other". The one exception, a cube label, exists only for the cubes `metrics.watch_cubes`
names.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger("memos_ray.metrics")

Kind = Literal["counter", "gauge", "histogram"]

# Seconds: from a cache hit (ms) to a slow LLM-backed request (minutes).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

OTHER = "other"
_LABEL_VALUE = re.compile(r"[a-z][a-z0-9_]{0,47}")


@dataclass(frozen=True)
class Spec:
    """What a metric is: its Ray name (before Ray's `ray_` prefix), kind and tag keys."""

    name: str
    kind: Kind
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    def exported(self) -> set[str]:
        """The series names Prometheus sees for it."""
        base = f"ray_{self.name}"
        if self.kind == "counter":
            return {f"{base}_total"}
        if self.kind == "histogram":
            return {f"{base}_bucket", f"{base}_count", f"{base}_sum"}
        return {base}


class Metric:
    """A Ray metric made lazily; records nothing where Ray is not initialised."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self._impl: Any = None
        self._lock = threading.Lock()
        self._warned = False

    def _get(self) -> Any:
        if self._impl is not None:
            return self._impl
        # Never import Ray for this: a process without it loaded cannot be in a cluster.
        ray = sys.modules.get("ray")
        if ray is None or not ray.is_initialized():
            return None
        with self._lock:
            if self._impl is None:
                from ray.util import metrics

                spec = self.spec
                keys = spec.tag_keys or None
                if spec.kind == "counter":
                    impl: Any = metrics.Counter(spec.name, spec.description, tag_keys=keys)
                elif spec.kind == "gauge":
                    impl = metrics.Gauge(spec.name, spec.description, tag_keys=keys)
                else:
                    impl = metrics.Histogram(
                        spec.name, spec.description, list(spec.boundaries), tag_keys=keys
                    )
                self._impl = impl
        return self._impl

    def _record(self, method: str, value: float, tags: dict[str, str]) -> None:
        try:
            impl = self._get()
            if impl is not None:
                getattr(impl, method)(value, tags=tags or None)
        except Exception:
            if not self._warned:
                self._warned = True
                logger.warning("metric %s not recorded", self.spec.name, exc_info=True)

    def inc(self, value: float = 1.0, **tags: str) -> None:
        if value > 0:
            self._record("inc", value, tags)

    def set(self, value: float, **tags: str) -> None:
        self._record("set", value, tags)

    def observe(self, value: float, **tags: str) -> None:
        self._record("observe", value, tags)


def bounded(value: str | None, allowed: Iterable[str] | None = None) -> str:
    """A label value from a small set: one of `allowed`, else a short snake_case word made
    in code (an operation, a task label); anything else, ids and paths included, is "other"."""
    if value is None:
        return OTHER
    word = value.strip().lower().replace(" ", "_").replace("-", "_")
    if allowed is not None:
        return word if word in allowed else OTHER
    return word if _LABEL_VALUE.fullmatch(word) else OTHER


def _m(
    name: str, kind: Kind, description: str, tag_keys: Sequence[str] = (), boundaries: Any = ()
) -> Metric:
    return Metric(Spec(name, kind, description, tuple(tag_keys), tuple(boundaries)))


HTTP_SECONDS = _m(
    "memos_http_request_seconds",
    "histogram",
    "Time the API took to answer, by route template, method and status class.",
    ("route", "method", "status"),
    LATENCY_BUCKETS_S,
)
SEARCH_SECONDS = _m(
    "memos_search_seconds",
    "histogram",
    "Time a search took in the service, by search mode and outcome.",
    ("mode", "outcome"),
    LATENCY_BUCKETS_S,
)
ADD_SECONDS = _m(
    "memos_add_seconds",
    "histogram",
    "Time an add took in the service, by mode (fast/fine/default), sync/async and outcome.",
    ("mode", "async_mode", "outcome"),
    LATENCY_BUCKETS_S,
)
MEMORIES_WRITTEN = _m(
    "memos_memories_written",
    "counter",
    "New memories stored (duplicates not counted), by memory type.",
    ("memory_type",),
)
LLM_TOKENS = _m(
    "memos_llm_tokens",
    "counter",
    "LLM tokens used, by purpose and kind (prompt or completion).",
    ("purpose", "kind"),
)
SCHEDULER_TASKS = _m(
    "memos_scheduler_tasks",
    "counter",
    "Scheduler tasks finished, by label and outcome.",
    ("label", "outcome"),
)
SCHEDULER_TASK_SECONDS = _m(
    "memos_scheduler_task_seconds",
    "histogram",
    "Time a scheduler task's handler ran.",
    ("label",),
    (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)
SCHEDULER_QUEUE = _m(
    "memos_scheduler_queue_length",
    "gauge",
    "Unfinished tasks of the cube a scheduler actor runs (one series per actor, no cube "
    "label): sum them for the total queued.",
)
SCHEDULER_CUBE_QUEUE = _m(
    "memos_scheduler_cube_queue_length",
    "gauge",
    "Unfinished tasks of the cubes named in metrics.watch_cubes, by cube.",
    ("cube",),
)
STORE_ERRORS = _m(
    "memos_store_errors",
    "counter",
    "Store failures turned into service errors, by store role, backend and operation.",
    ("store", "backend", "operation"),
)
STORE_RESTARTS = _m(
    "memos_store_restarts",
    "counter",
    "Restarts of embedded stores: a server its supervisor brought back, or a store actor "
    "Ray restarted.",
    ("store", "how"),
)
SEARCH_INDEX_CACHE = _m(
    "memos_search_index_cache",
    "counter",
    "Ranking index lookups of a search, by outcome: hit (the cached index served it) or "
    "miss (built from a scan of the cube). A stale index found then rebuilt counts both.",
    ("outcome",),
)
EMBEDDER_BATCH = _m(
    "memos_embedder_batch_size",
    "histogram",
    "Texts per embedder model call, by call path (batched singles, bulk, other model).",
    ("call",),
    BATCH_BUCKETS,
)

ALL: tuple[Metric, ...] = (
    HTTP_SECONDS,
    SEARCH_SECONDS,
    SEARCH_INDEX_CACHE,
    ADD_SECONDS,
    MEMORIES_WRITTEN,
    LLM_TOKENS,
    SCHEDULER_TASKS,
    SCHEDULER_TASK_SECONDS,
    SCHEDULER_QUEUE,
    SCHEDULER_CUBE_QUEUE,
    STORE_ERRORS,
    STORE_RESTARTS,
    EMBEDDER_BATCH,
)

# The purposes LLM tokens are counted for.
PURPOSES = ("chat", "fine_extraction", "reorganize", "feedback", "ingest")


def llm_tokens(purpose: str, prompt_tokens: int, completion_tokens: int) -> None:
    purpose = bounded(purpose, PURPOSES)
    LLM_TOKENS.inc(prompt_tokens, purpose=purpose, kind="prompt")
    LLM_TOKENS.inc(completion_tokens, purpose=purpose, kind="completion")


def store_error(store: str, backend: str, operation: str) -> None:
    STORE_ERRORS.inc(store=bounded(store), backend=bounded(backend), operation=bounded(operation))


def store_restart(store: str, how: Literal["server", "actor"]) -> None:
    STORE_RESTARTS.inc(store=bounded(store), how=how)


def actor_started(store: str) -> None:
    """Call in a restartable store actor's constructor: counts the restarts Ray made."""
    ray = sys.modules.get("ray")
    try:
        context = ray.get_runtime_context() if ray is not None and ray.is_initialized() else None
        if context is not None and context.was_current_actor_reconstructed:
            store_restart(store, "actor")
    except Exception:  # not in an actor (a test builds one directly): nothing to count
        pass


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else OTHER
