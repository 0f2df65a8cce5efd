"""Ray glue: one process owns a single-process embedded engine, every other process proxies to it.

qdrant-edge (and qdrant-client local mode) lock their data directory to one process, while
Serve replicas and jobs are many processes. So the engine lives in one named, detached Ray
actor and callers hold an `ActorVectorStore`, a picklable VectorStore that forwards each call.

Concurrency inside the actor: it is a threaded actor. Reads run concurrently when the store
says it is safe (`concurrent_reads`; qdrant-edge is, and releases the GIL while searching);
writes are serialised; `close` waits for in-flight calls.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from memos_ray import metrics
from memos_ray.core.threads import one_blas_thread
from memos_ray.errors import ConfigError, MemosError, StoreError, StoreUnavailableError
from memos_ray.stores.vector.base import (
    CubeScan,
    HybridCandidates,
    LateScores,
    SparseVector,
    VectorFilter,
    VectorHit,
    VectorRecord,
    VectorStore,
    WriteStamp,
)

# A zero-arg factory (must pickle: a module-level function or functools.partial), or an
# import path "package.module:Class" (or "package.module.Class") with constructor kwargs.
StoreSpec = Callable[[], VectorStore] | tuple[str, Mapping[str, Any]]


def build_store(spec: StoreSpec) -> VectorStore:
    """Runs inside the actor, so the engine is opened by the process that will own it."""
    if callable(spec):
        store = spec()
    else:
        path, kwargs = spec
        module_name, sep, attr = path.partition(":")
        if not sep:
            module_name, _, attr = path.rpartition(".")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(f"cannot import vector store {path!r}: {exc}") from exc
        store = target(**dict(kwargs))
    if not isinstance(store, VectorStore):
        raise ConfigError(f"vector store spec built {type(store).__name__}, not a VectorStore")
    return store


class _Gate:
    """Calls enter shared; close enters exclusive once in-flight calls have drained."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._closing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            if self._closing:
                raise StoreError("vector store actor is closed")
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[bool]:
        """Yields False if it was already closed."""
        with self._cond:
            first = not self._closing
            self._closing = True
            self._cond.wait_for(lambda: self._active == 0)
            yield first


class VectorStoreActor:
    """Owns the engine; decorated as a Ray actor by `get_or_create_vector_actor`."""

    def __init__(self, spec: StoreSpec) -> None:
        metrics.actor_started("vector")
        one_blas_thread()  # MaxSim matmuls per search (see memos_ray.core.threads)
        self._store = build_store(spec)
        self._gate = _Gate()
        self._write_lock = threading.Lock()
        # Stores not known to be thread-safe get every call serialised.
        concurrent = bool(getattr(self._store, "concurrent_reads", False))
        self._read_lock: threading.Lock | None = None if concurrent else self._write_lock

    @contextmanager
    def _reading(self) -> Iterator[VectorStore]:
        with self._gate.shared():
            if self._read_lock is None:
                yield self._store
            else:
                with self._read_lock:
                    yield self._store

    @contextmanager
    def _writing(self) -> Iterator[VectorStore]:
        with self._gate.shared(), self._write_lock:
            yield self._store

    def dim(self) -> int:
        return self._store.dim

    def upsert(self, cube_id: str, records: Sequence[VectorRecord]) -> WriteStamp | None:
        with self._writing() as store:
            return store.upsert(cube_id, records)

    def search_dense(
        self,
        cube_ids: Sequence[str],
        vector: Sequence[float],
        limit: int,
        filter: VectorFilter | None = None,
    ) -> list[VectorHit]:
        with self._reading() as store:
            return store.search_dense(cube_ids, vector, limit, filter)

    def search_sparse(
        self,
        cube_ids: Sequence[str],
        vector: SparseVector,
        limit: int,
        filter: VectorFilter | None = None,
    ) -> list[VectorHit]:
        with self._reading() as store:
            return store.search_sparse(cube_ids, vector, limit, filter)

    def search_hybrid(
        self,
        cube_ids: Sequence[str],
        dense: Sequence[float],
        sparse: SparseVector,
        limit: int,
        filter: VectorFilter | None = None,
    ) -> HybridCandidates:
        with self._reading() as store:
            return store.search_hybrid(cube_ids, dense, sparse, limit, filter)

    def retrieve(
        self, cube_id: str, ids: Sequence[str], with_tokens: bool = False
    ) -> list[VectorRecord]:
        with self._reading() as store:
            return store.retrieve(cube_id, ids, with_tokens)

    def revision(self, cube_id: str) -> str:
        with self._reading() as store:
            return store.revision(cube_id)

    def scan(self, cube_id: str, filter: VectorFilter | None = None) -> CubeScan:
        with self._reading() as store:
            return store.scan(cube_id, filter)

    def late_scores(self, cube_id: str, query_tokens: np.ndarray, ids: Sequence[str]) -> LateScores:
        with self._reading() as store:
            return store.late_scores(cube_id, query_tokens, ids)

    def existing_ids(self, cube_id: str, ids: Sequence[str]) -> set[str]:
        with self._reading() as store:
            return store.existing_ids(cube_id, ids)

    def delete(self, cube_id: str, ids: Sequence[str]) -> None:
        with self._writing() as store:
            store.delete(cube_id, ids)

    def count(self, cube_id: str) -> int:
        with self._reading() as store:
            return store.count(cube_id)

    def maintain(self, method: str) -> Any:
        """Optional store extras such as `flush` or `optimize`, run as a write."""
        if method not in ("flush", "optimize"):
            raise ConfigError(f"unknown maintenance method {method!r}")
        with self._writing() as store:
            fn = getattr(store, method, None)
            return fn() if fn is not None else None

    def close(self) -> None:
        with self._gate.exclusive() as first:
            if first:
                self._store.close()


class ActorVectorStore(VectorStore):
    """Picklable proxy: hand it to Serve replicas or jobs; calls block on `ray.get`."""

    def __init__(self, actor: ActorHandle, dim: int, *, timeout_s: float | None = 60.0) -> None:
        self._actor = actor
        self._dim = dim
        self._timeout_s = timeout_s

    @property
    def actor(self) -> ActorHandle:
        return self._actor

    @property
    def dim(self) -> int:
        return self._dim

    def _call(self, method: str, *args: Any) -> Any:
        """The actor's own errors come back as their exact class (the API maps the status;
        the actor's store counted them); failures to reach it are counted here."""
        try:
            return ray.get(getattr(self._actor, method).remote(*args), timeout=self._timeout_s)
        except RayTaskError as exc:
            if isinstance(exc.cause, MemosError):
                raise exc.cause from None
            metrics.store_error("vector", "actor", method)
            raise StoreError(f"vector store actor {method} failed: {exc.cause!r}") from exc
        except RayActorError as exc:
            metrics.store_error("vector", "actor", method)
            if exc.actor_init_failed:
                raise ConfigError(f"vector store actor could not open its store: {exc}") from exc
            # Restarting (Ray brings it back): the caller may retry, so 503, not 500.
            raise StoreUnavailableError(f"the vector store is restarting ({method})") from exc
        except GetTimeoutError as exc:
            metrics.store_error("vector", "actor", method)
            raise StoreUnavailableError(f"the vector store did not answer ({method})") from exc

    def upsert(self, cube_id: str, records: Sequence[VectorRecord]) -> WriteStamp | None:
        return cast(WriteStamp | None, self._call("upsert", cube_id, list(records)))

    def search_dense(
        self,
        cube_ids: Sequence[str],
        vector: Sequence[float],
        limit: int,
        filter: VectorFilter | None = None,
    ) -> list[VectorHit]:
        return self._call("search_dense", list(cube_ids), list(vector), limit, filter)

    def search_sparse(
        self,
        cube_ids: Sequence[str],
        vector: SparseVector,
        limit: int,
        filter: VectorFilter | None = None,
    ) -> list[VectorHit]:
        return self._call("search_sparse", list(cube_ids), vector, limit, filter)

    def search_hybrid(
        self,
        cube_ids: Sequence[str],
        dense: Sequence[float],
        sparse: SparseVector,
        limit: int,
        filter: VectorFilter | None = None,
    ) -> HybridCandidates:
        return self._call("search_hybrid", list(cube_ids), list(dense), sparse, limit, filter)

    def retrieve(
        self, cube_id: str, ids: Sequence[str], with_tokens: bool = False
    ) -> list[VectorRecord]:
        return self._call("retrieve", cube_id, list(ids), with_tokens)

    def revision(self, cube_id: str) -> str:
        return self._call("revision", cube_id)

    def scan(self, cube_id: str, filter: VectorFilter | None = None) -> CubeScan:
        return self._call("scan", cube_id, filter)

    def late_scores(self, cube_id: str, query_tokens: np.ndarray, ids: Sequence[str]) -> LateScores:
        return self._call("late_scores", cube_id, query_tokens, list(ids))

    def existing_ids(self, cube_id: str, ids: Sequence[str]) -> set[str]:
        return self._call("existing_ids", cube_id, list(ids))

    def delete(self, cube_id: str, ids: Sequence[str]) -> None:
        self._call("delete", cube_id, list(ids))

    def count(self, cube_id: str) -> int:
        return self._call("count", cube_id)

    def flush(self) -> None:
        self._call("maintain", "flush")

    def optimize(self) -> bool:
        return bool(self._call("maintain", "optimize"))

    def close(self) -> None:
        """Releases this proxy only: other processes share the engine, which stays up."""

    def shutdown(self) -> None:
        """Flush and close the shared engine, then end the actor for good."""
        try:
            self._call("close")
        finally:
            ray.kill(self._actor, no_restart=True)


def get_or_create_vector_actor(
    name: str,
    namespace: str,
    spec: StoreSpec,
    *,
    num_cpus: float = 0,
    max_concurrency: int = 8,
    max_task_retries: int = 3,
    scheduling_strategy: Any = None,
    resources: Mapping[str, float] | None = None,
    timeout_s: float | None = 60.0,
) -> ActorVectorStore:
    """The named engine actor, created by the first caller and found by every later one.

    Detached and restarted on failure (`max_restarts=-1`); its constructor reopens the data
    directory, which the engine recovers from its WAL. Every call is idempotent (upsert and
    delete by id), so in-flight calls are retried on restart (`max_task_retries`). A local
    data path ties the engine to one node: on multi-node clusters pin it with `resources`
    (a custom resource only that node has: a restarted actor comes back to the same files,
    even when the node's id changed) or `scheduling_strategy`.
    """
    options: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "get_if_exists": True,
        "lifetime": "detached",
        "max_restarts": -1,
        "max_task_retries": max_task_retries,
        "max_concurrency": max_concurrency,
        "num_cpus": num_cpus,
    }
    if scheduling_strategy is not None:
        options["scheduling_strategy"] = scheduling_strategy
    if resources:
        options["resources"] = dict(resources)
    handle = cast(ActorHandle, ray.remote(VectorStoreActor).options(**options).remote(spec))
    # The first call also surfaces a constructor failure (bad spec, locked directory).
    dim = ActorVectorStore(handle, 0, timeout_s=timeout_s)._call("dim")
    return ActorVectorStore(handle, int(dim), timeout_s=timeout_s)
