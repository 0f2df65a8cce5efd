"""The services a cube's scheduler actor runs its tasks with: built by the composition root
(`runtime.compose.build_services`) as the ingress builds them."""

from __future__ import annotations

from ray import serve

from memos_ray.config import MemosConfig, TransformersLLMConfig, VLLMConfig
from memos_ray.models.handles import EMBEDDER_DEPLOYMENT, LLM_DEPLOYMENT
from memos_ray.runtime.compose import Services, build_ray_stores, build_services, served_models


def build_task_services(config: MemosConfig) -> Services:
    """As the ingress has them: stores through the embedded servers' actors, models through
    the Serve app's deployment handles."""
    app = config.serving.app_name
    embedder = serve.get_deployment_handle(EMBEDDER_DEPLOYMENT, app_name=app)
    llm = None
    if isinstance(config.llm, TransformersLLMConfig | VLLMConfig):
        llm = serve.get_deployment_handle(LLM_DEPLOYMENT, app_name=app)
    graph, vectors = build_ray_stores(config)
    models = served_models(config, embedder, llm)
    # Extracted preferences go to a `pref_add` task instead of the store: a preference store
    # outage then retries only that write, not the LLM's reading.
    return build_services(
        config, graph, vectors, models, in_ray=True, fine_writes_preferences=False
    )
