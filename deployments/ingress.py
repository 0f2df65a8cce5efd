"""MemosIngress: the HTTP entry point (FastAPI on Ray Serve)."""

from __future__ import annotations

import logging
import threading

from ray import serve
from ray.serve.handle import DeploymentHandle

from memos_ray import __version__
from memos_ray.api.app import create_app
from memos_ray.api.context import ApiContext
from memos_ray.config import MemosConfig, OpenAILLMConfig
from memos_ray.errors import ServiceUnavailableError
from memos_ray.models.adapters import AdapterStore
from memos_ray.models.chat import ChatModel
from memos_ray.models.handles import HandleChatModel, HandleEmbedder
from memos_ray.runtime.compose import (
    build_chat_model,
    build_fine_service,
    build_preferences,
    build_query_embedder,
    build_ray_stores,
    build_reranker,
    build_tenancy_store,
)
from memos_ray.runtime.netguard import keep_serve_grpc_on_loopback, let_ingress_rebind_its_port
from memos_ray.scheduler.actor import SchedulerClient
from memos_ray.services.chat import ChatService
from memos_ray.services.memory import MemoryService
from memos_ray.services.preferences import PreferenceService
from memos_ray.services.spaces import route_spaces
from memos_ray.services.tenancy import AccessControl
from memos_ray.stores.sql.base import TenancyStore
from memos_ray.stores.sql.tasks import SQLTaskStore

logger = logging.getLogger("ray.serve")

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


api = create_app(current_context, version=__version__)


@serve.deployment(name="MemosIngress", max_ongoing_requests=64)
@serve.ingress(api)
class MemosIngress:
    """Holds the process-wide context; stores connect in a background thread at start."""

    def __init__(
        self,
        config: MemosConfig,
        embedder: DeploymentHandle,
        llm: DeploymentHandle | None = None,
    ) -> None:
        keep_serve_grpc_on_loopback()
        let_ingress_rebind_its_port()
        self._config = config
        self._embedder_handle = embedder
        self._llm_handle = llm
        self._context: ApiContext | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        register_replica(self)
        if config.auth_enabled:
            logger.info("memos-ray: API keys required (MEMOS_ADMIN_KEY is set)")
        else:
            logger.warning(
                "memos-ray: running OPEN for local use: no MEMOS_ADMIN_KEY, no authentication; "
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
                handle = self._embedder_handle
                graph, vectors = build_ray_stores(config)
                configured = MemoryService(
                    graph,
                    vectors,
                    HandleEmbedder(handle, config.embedder.dim),
                    build_reranker(config),
                    config.search,
                    query_embedder=build_query_embedder(config),
                )
                admin_key = config.admin_key.get_secret_value() if config.admin_key else None
                tenancy = build_tenancy_store(config)
                # Each cube in its own embedding space (jobs.reembed moves cubes while this
                # runs); other spaces' models are served by the embedder deployment too.
                service = route_spaces(
                    config,
                    configured,
                    tenancy.engine,
                    lambda space: HandleEmbedder(handle, space.dim, model=space.model),
                )
                access = AccessControl(tenancy, admin_key)
                preferences = build_preferences(config, service, in_ray=True)
                chat = self._chat(service, tenancy, preferences)
                fine = (
                    build_fine_service(config, service, chat.model, tenancy, preferences)
                    if chat
                    else None
                )
                scheduler = SchedulerClient(config, SQLTaskStore(tenancy.engine))
                resumed = scheduler.resume_all()
                if resumed:
                    logger.info("memos-ray: resumed unfinished tasks of %d cubes", resumed)
                self._context = ApiContext(
                    config,
                    service,
                    access,
                    __version__,
                    chat=chat,
                    fine=fine,
                    preferences=preferences,
                    scheduler=scheduler,
                )
                self._error = None
        return self._context

    def _chat(
        self,
        service: MemoryService,
        tenancy: TenancyStore,
        preferences: PreferenceService | None,
    ) -> ChatService | None:

        config = self._config
        model: ChatModel | None = HandleChatModel(self._llm_handle) if self._llm_handle else None
        if model is None and isinstance(config.llm, OpenAILLMConfig):
            model = build_chat_model(config)
        if model is None:
            return None
        adapters = AdapterStore.for_config(config)
        return ChatService(
            service, model, config.chat, config.reader, adapters, tenancy, preferences
        )

    def check_health(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"memos-ray failed to start: {self._error!r}")
