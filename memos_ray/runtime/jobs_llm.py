"""The LLM deployment the Ray Data jobs send their requests to (jobs.ingest --fine,
jobs.reorganize): a running app's, or one a job deploys for itself on demand.

A job's workers never load a model of their own: on a GPU cluster the model belongs on the
GPU workers Serve schedules it on, and one deployment's replicas batch the requests of every
worker (vLLM continuously).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from ray import serve
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

from memos_ray.config import MemosConfig, NoLLMConfig, OpenAILLMConfig
from memos_ray.errors import ConfigError
from memos_ray.models.chat import ChatModel
from memos_ray.models.handles import LLM_DEPLOYMENT, HandleChatModel
from memos_ray.runtime.compose import build_chat_model
from memos_ray.runtime.launcher import LLM_APP_BUILDER, load_builder

# The Serve app a job deploys for itself when no running app's LLM is to be used.
JOB_LLM_APP = "memos-job-llm"


@dataclass(frozen=True)
class LLMRoute:
    """Where requests go: a running Serve app's LLMDeployment (`app`); the job's own
    deployment, made by `deployer` when the first request needs it; or else the configured
    remote endpoint, called from each worker directly."""

    app: str | None = None
    deployer: Any = None  # an LLMDeployer actor handle

    def resolve(self) -> str | None:
        """The app to send requests to (deploying the job's own now if need be)."""
        if self.deployer is not None:
            return str(ray.get(self.deployer.ensure.remote()))
        return self.app


def chat_model_for(config: MemosConfig, route: LLMRoute) -> ChatModel:
    app = route.resolve()
    if app is not None:
        return HandleChatModel(serve.get_deployment_handle(LLM_DEPLOYMENT, app_name=app))

    model = build_chat_model(config)
    if model is None:
        raise ConfigError("this job needs a chat model (llm.backend is 'none')")
    return model


def open_llm(
    config: MemosConfig, app: str | None, replicas: int | None, *, owns_ray: bool = False
) -> LLMRoute:
    """The LLM deployment a job sends requests to: `app`'s when named; else the
    service's, when this cluster runs it; else one deployed for this job, on demand (a
    job that turns out to need no answer starts no model) and removed after."""

    llm = config.llm
    if isinstance(llm, NoLLMConfig):
        raise ConfigError(
            "this job needs a chat model: set memos.llm (backend transformers, vllm or openai)"
        )
    running = serve.status().applications
    if app is not None:
        if app not in running:
            raise ConfigError(f"--llm-app {app}: no such Serve app runs in this cluster")
        return LLMRoute(app=app)
    service = running.get(config.serving.app_name)
    if service is not None and LLM_DEPLOYMENT in service.deployments:
        return LLMRoute(app=config.serving.app_name)
    if isinstance(llm, OpenAILLMConfig):
        return LLMRoute()
    if replicas is not None:
        config = config.model_copy(
            update={"llm": llm.model_copy(update={"num_replicas": replicas, "autoscaling": None})}
        )
    # A job that started its own Ray cluster leaves Serve to go with it.
    stop_serve = not owns_ray and not serve_running()
    deployer = ray.remote(num_cpus=0)(LLMDeployer).remote(config, stop_serve)
    return LLMRoute(deployer=deployer)


class LLMDeployer:
    """Deploys the job's own LLM app once, for whichever worker asks first."""

    def __init__(self, config: MemosConfig, stop_serve: bool) -> None:
        self._config = config
        self._stop_serve = stop_serve
        self._deployed = False

    def ensure(self) -> str:

        if not self._deployed:
            if not serve_running():
                serve.start(proxy_location="Disabled")
            deployment = load_builder(LLM_APP_BUILDER)(self._config)
            assert deployment is not None
            serve.run(deployment, name=JOB_LLM_APP, route_prefix=None)
            self._deployed = True
        return JOB_LLM_APP

    def close(self) -> bool:
        """Remove the app if it was deployed; whether it was."""

        if not self._deployed:
            return False
        try:
            serve.delete(JOB_LLM_APP)
        finally:
            if self._stop_serve:
                serve.shutdown()
        return True


def serve_running() -> bool:

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


def close_llm(route: LLMRoute) -> str:
    """Remove the job's own deployment, if it made one; where the windows went."""

    if route.deployer is None:
        return f"serve:{route.app}" if route.app else "endpoint"
    try:
        deployed = ray.get(route.deployer.close.remote())
    finally:
        ray.kill(route.deployer)
    return f"serve:{JOB_LLM_APP}" if deployed else "none (no request needed it)"
