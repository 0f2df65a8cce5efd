"""The services a cube's scheduler actor runs its tasks with: stores as the ingress has them,
models through the Serve app's deployment handles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memos_ray.config import MemosConfig, OpenAILLMConfig, TransformersLLMConfig, VLLMConfig
from memos_ray.models.adapters import AdapterStore
from memos_ray.models.handles import (
    EMBEDDER_DEPLOYMENT,
    LLM_DEPLOYMENT,
    HandleChatModel,
    HandleEmbedder,
)
from memos_ray.runtime.compose import (
    build_chat_model,
    build_fine_service,
    build_preferences,
    build_ray_stores,
    build_reranker,
    build_tenancy_store,
)
from memos_ray.services.chat import ChatService
from memos_ray.services.fine import FineService
from memos_ray.services.memory import MemoryService
from memos_ray.services.preferences import PreferenceService
from memos_ray.services.spaces import route_spaces

if TYPE_CHECKING:
    from memos_ray.services.memory import MemoryService


@dataclass
class TaskServices:
    memory: MemoryService
    # Without a preference service: extracted preferences go to a `pref_add` task, so a
    # preference store outage retries only that write, not the LLM's reading.
    fine: FineService | None
    chat: ChatService | None
    preferences: PreferenceService | None = None


def build_task_services(config: MemosConfig) -> TaskServices:
    """Stores as the ingress has them; models through the Serve app's deployment handles."""
    from ray import serve

    app = config.serving.app_name
    graph, vectors = build_ray_stores(config)
    handle = serve.get_deployment_handle(EMBEDDER_DEPLOYMENT, app_name=app)
    embedder = HandleEmbedder(handle, config.embedder.dim)
    configured = MemoryService(graph, vectors, embedder, build_reranker(config), config.search)
    tenancy = build_tenancy_store(config)
    # Each cube in its current embedding space, as in the ingress (see memos_ray.services.spaces).
    memory = route_spaces(
        config,
        configured,
        tenancy.engine,
        lambda space: HandleEmbedder(handle, space.dim, model=space.model),
    )
    model: Any = None
    if isinstance(config.llm, TransformersLLMConfig | VLLMConfig):
        model = HandleChatModel(serve.get_deployment_handle(LLM_DEPLOYMENT, app_name=app))
    elif isinstance(config.llm, OpenAILLMConfig):
        model = build_chat_model(config)
    if model is None:
        return TaskServices(memory, None, None)
    preferences = build_preferences(config, memory, in_ray=True)
    fine = build_fine_service(config, memory, model, tenancy, None)
    adapters = AdapterStore(config.data_path("adapters"))
    chat = ChatService(memory, model, config.chat, config.reader, adapters, tenancy, preferences)
    return TaskServices(memory, fine, chat, preferences)
