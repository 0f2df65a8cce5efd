"""Ray actors that own the embedded servers, so every process of the app shares them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import ray

from memos_ray.config import FalkorDBConfig, MemosConfig
from memos_ray.stores.local import FalkorDBServer


def actor_suffix(config: MemosConfig) -> str:
    """Actors are per data dir: two apps on different data dirs never share a store."""
    return hashlib.sha1(str(config.data_dir).encode()).hexdigest()[:10]


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3)
class FalkorDBServerActor:
    """Starts the FalkorDB server on creation and after a restart; stops it on `stop`."""

    def __init__(self, data_dir: str, config: FalkorDBConfig) -> None:
        self._server = FalkorDBServer(
            Path(data_dir),
            host=config.host,
            redis_port=config.redis_port,
            bolt_port=config.bolt_port,
        )
        self._server.start()

    def bolt_uri(self) -> str:
        if not self._server.is_running():
            self._server.start()
        return self._server.bolt_uri

    def stop(self) -> None:
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
    for name, method in ((f"memos-vector-{suffix}", "close"), (f"memos-falkordb-{suffix}", "stop")):
        try:
            actor = ray.get_actor(name, namespace=config.serving.namespace)
        except ValueError:
            continue
        try:
            ray.get(getattr(actor, method).remote(), timeout=60)
        finally:
            ray.kill(actor, no_restart=True)
