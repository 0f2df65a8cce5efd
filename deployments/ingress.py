"""MemosIngress: the HTTP entry point (FastAPI on Ray Serve)."""

from __future__ import annotations

import logging
import threading

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from memos_ray import __version__
from memos_ray.api.app import create_app
from memos_ray.api.context import ApiContext
from memos_ray.config import MemosConfig
from memos_ray.core.threads import one_blas_thread
from memos_ray.errors import ServiceUnavailableError
from memos_ray.logs import configure as configure_logging
from memos_ray.runtime.cluster import check_cluster
from memos_ray.runtime.compose import (
    build_query_embedder,
    build_ray_stores,
    build_services,
    served_models,
)
from memos_ray.runtime.netguard import keep_serve_grpc_on_loopback, let_ingress_rebind_its_port
from memos_ray.scheduler.actor import SchedulerClient
from memos_ray.stores.sql.tasks import SQLTaskStore

logger = logging.getLogger("memos_ray.deployments.ingress")

# Serve pickles the decorated class by value, so its methods get a copy of this module's
# globals: the replica registers itself through a module function, which is pickled by
# reference and therefore writes the real module global that `current_context` reads.
_replica: MemosIngress | None = None


def register_replica(replica: MemosIngress) -> None:
    global _replica
    _replica = replica


def current_context() -> ApiContext:
    """Route dependency: the context of the ingress replica living in this process."""
    if _replica is None:
        raise ServiceUnavailableError("the service is starting")
    return _replica.context()


def build_api() -> FastAPI:
    """Serve calls this in each replica: the app is built there, never pickled (its MCP
    server holds per-process keys that must not travel)."""
    return create_app(current_context, version=__version__)


@serve.deployment(name="MemosIngress", max_ongoing_requests=64)
@serve.ingress(build_api)
class MemosIngress:
    """Holds the process-wide context; stores connect in a background thread at start."""

    def __init__(
        self,
        config: MemosConfig,
        embedder: DeploymentHandle,
        llm: DeploymentHandle | None = None,
    ) -> None:
        keep_serve_grpc_on_loopback()
        one_blas_thread()
        let_ingress_rebind_its_port()
        configure_logging(config.logging.format, config.logging.level)
        self._config = config
        self._embedder_handle = embedder
        self._llm_handle = llm
        self._context: ApiContext | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        register_replica(self)
        if config.auth_enabled:
            logger.info("memos-ray: API keys required (a master key is configured)")
        else:
            logger.warning(
                "memos-ray: running OPEN for local use: no MEMOS_ADMIN_KEY (or _SHA256), no "
                "authentication; "
                "keep the HTTP server on a loopback address"
            )
        threading.Thread(target=self._warm, daemon=True).start()

    def _warm(self) -> None:
        try:
            self.context()
        except BaseException as exc:  # reported by check_health and on each request
            logger.exception("memos-ray: start-up failed")
            self._error = exc

    def context(self) -> ApiContext:
        if self._context is not None:
            return self._context
        with self._lock:
            if self._context is None:
                config = self._config
                # A replica may start on a node that joined after the app was built.
                check_cluster(config)
                models = served_models(
                    config,
                    self._embedder_handle,
                    self._llm_handle,
                    query_embedder=build_query_embedder(config),
                )
                graph, vectors = build_ray_stores(config)
                services = build_services(config, graph, vectors, models, in_ray=True)
                scheduler = SchedulerClient(config, SQLTaskStore(services.tenancy.engine))
                resumed = scheduler.resume_all()
                if resumed:
                    logger.info("memos-ray: resumed unfinished tasks of %d cubes", resumed)
                self._context = ApiContext.of(services, __version__, scheduler)
                self._error = None
        return self._context

    def check_health(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"memos-ray failed to start: {self._error!r}")
