"""Ray actors that own the embedded servers, so every process of the app shares them."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

import ray

from memos_ray.config import FalkorDBConfig, MemosConfig
from memos_ray.stores.local import FalkorDBServer


def actor_suffix(config: MemosConfig) -> str:
    """Actors are per data dir: two apps on different data dirs never share a store."""
    return hashlib.sha1(str(config.data_dir).encode()).hexdigest()[:10]


logger = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3)
class FalkorDBServerActor:
    """Owns the FalkorDB server: starts it, restarts it if it dies, stops it on `stop`.

    A supervisor thread polls the process; after a crash the server comes back on the same
    ports from its last snapshot (RDB every second), and clients' drivers reconnect and retry
    their transactions. The supervisor is also the thread the server's parent-death signal
    is tied to, so it starts the server too (see FalkorDBServer).
    """

    def __init__(self, data_dir: str, config: FalkorDBConfig, poll_s: float = 0.5) -> None:
        self._server = FalkorDBServer(
            Path(data_dir),
            host=config.host,
            redis_port=config.redis_port,
            bolt_port=config.bolt_port,
        )
        self._lock = threading.Lock()
        self._stopping = False
        self._poll_s = poll_s
        self.restarts = 0
        started = threading.Event()
        failure: list[BaseException] = []
        threading.Thread(
            target=self._supervise, args=(started, failure), name="falkordb-supervisor", daemon=True
        ).start()
        started.wait()
        if failure:
            raise failure[0]

    def _supervise(self, started: threading.Event, failure: list[BaseException]) -> None:
        try:
            self._server.start()
        except BaseException as exc:
            failure.append(exc)
            started.set()
            return
        started.set()
        while True:
            time.sleep(self._poll_s)
            with self._lock:
                if self._stopping:
                    return
                if self._server.is_running():
                    continue
                logger.error("FalkorDB server exited unexpectedly; restarting it")
                try:
                    self._server.start()
                    self.restarts += 1
                except Exception:
                    logger.exception("FalkorDB restart failed; trying again")

    def bolt_uri(self) -> str:
        with self._lock:
            if not self._server.is_running() and not self._stopping:
                self._server.start()
            return self._server.bolt_uri

    def pid(self) -> int | None:
        return self._server.pid

    def restart_count(self) -> int:
        return self.restarts

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._server.stop()


def falkordb_actor(config: MemosConfig):  # type: ignore[no-untyped-def]
    assert isinstance(config.graph, FalkorDBConfig)
    return FalkorDBServerActor.options(
        name=f"memos-falkordb-{actor_suffix(config)}",
        namespace=config.serving.namespace,
        get_if_exists=True,
        lifetime="detached",
    ).remote(str(config.data_path("falkordb")), config.graph)


def stop_embedded(config: MemosConfig) -> None:
    """Stop the embedded stores of this data dir cleanly (data flushed), then drop the actors."""
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
