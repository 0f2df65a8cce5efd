"""Ray actors that own the embedded servers, so every process of the app shares them."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import ray

from memos_ray import metrics
from memos_ray.config import FalkorDBConfig, MemosConfig
from memos_ray.embedded.falkordb_server import falkordb_server
from memos_ray.embedded.supervisor import Supervisor, SupervisorStatus
from memos_ray.stores.graph.falkordb import FalkorDBAddress


def actor_suffix(config: MemosConfig) -> str:
    """Actors are per data dir: two apps on different data dirs never share a store."""
    return hashlib.sha1(str(config.data_dir).encode()).hexdigest()[:10]


logger = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3)
class FalkorDBServerActor:
    """Owns the FalkorDB server: starts it, restarts it if it dies, stops it on `stop`.

    A supervisor thread polls the process; after a crash the server comes back (with
    back-off, see Supervisor) on the same port and password from its AOF, and clients
    reconnect by themselves; while it is down they get 503s. The supervisor is also the
    thread the server's parent-death signal is tied to, so it starts the server too.
    """

    def __init__(self, data_dir: str, config: FalkorDBConfig, poll_s: float = 0.5) -> None:
        metrics.actor_started("falkordb")
        self._server = falkordb_server(Path(data_dir), config)
        self._supervisor = Supervisor(self._server, "FalkorDB", poll_s)

    def address(self) -> FalkorDBAddress:
        """Host, port and password of the native protocol (stable across restarts)."""
        return self._server.address

    def status(self) -> SupervisorStatus:
        """Up or restarting, restart count, next back-off delay."""
        return self._supervisor.status()

    def is_up(self) -> bool:
        return self._supervisor.is_up()

    def pid(self) -> int | None:
        return self._server.pid

    def restart_count(self) -> int:
        return self._supervisor.restarts

    def stop(self) -> None:
        self._supervisor.stop()


def falkordb_actor(config: MemosConfig):
    assert isinstance(config.graph, FalkorDBConfig)
    return FalkorDBServerActor.options(  # type: ignore[attr-defined]
        name=f"memos-falkordb-{actor_suffix(config)}",
        namespace=config.serving.namespace,
        get_if_exists=True,
        lifetime="detached",
    ).remote(str(config.data_path("falkordb")), config.graph)
