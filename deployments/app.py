"""`build_memos_app`: the builder `serve run` and `memos-ray serve` point at."""

from __future__ import annotations

from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

from deployments.embedder import EmbedderDeployment
from deployments.ingress import MemosIngress
from deployments.llm import LLMDeployment
from memos_ray.config import (
    AutoscalingConfig,
    MemosConfig,
    TransformersLLMConfig,
    VLLMConfig,
    load_config,
)
from memos_ray.models import smollm2
from memos_ray.runtime.cluster import check_cluster
from memos_ray.runtime.netguard import require_admin_key


class MemosAppArgs(BaseModel):
    """Serve app args: `config` overrides `MemosConfig` fields (env `MEMOS_*` fills the rest)."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = Field(default_factory=dict)


def build_memos_app(args: MemosAppArgs | dict[str, Any] | None = None) -> Application:
    """Refuses (at build time, so `serve run`/`serve deploy` fail and say why) an API without
    an admin key whose Serve HTTP host is not loopback, and a config that does not fit the
    Ray cluster's nodes (`memos_ray.runtime.cluster.check_cluster`)."""
    if not isinstance(args, MemosAppArgs):
        args = MemosAppArgs.model_validate(args or {})
    config = load_config(args.config)
    require_admin_key(serve_http_host(), config, "build_memos_app")
    if ray.is_initialized():
        check_cluster(config)
    return build_from_config(config)


def serve_http_host() -> str | None:
    """The HTTP host of the running Serve instance: what its proxies (and direct-ingress
    replicas) bind. None when there is none to ask (the builder called outside Ray)."""

    if not ray.is_initialized():
        return None

    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return None
    http_config: Any = ray.get(controller.get_http_config.remote(), timeout=30)
    return str(http_config.host)


def build_from_config(config: MemosConfig) -> Application:
    emb = config.embedder
    actor_options: dict[str, Any] = {"num_cpus": emb.num_cpus, "num_gpus": emb.num_gpus}
    if emb.resources:
        actor_options["resources"] = dict(emb.resources)
    if emb.omp_wait_policy:
        # Must be in the replica's environment before OpenMP starts: a runtime_env var.
        actor_options["runtime_env"] = {"env_vars": {"OMP_WAIT_POLICY": emb.omp_wait_policy}}
    embedder = EmbedderDeployment.options(  # type: ignore[attr-defined]
        **replicas(emb.num_replicas, emb.autoscaling), ray_actor_options=actor_options
    ).bind(emb)
    serving = config.serving
    ingress_options: dict[str, Any] = {"num_cpus": serving.ingress_num_cpus}
    if serving.ingress_resources:
        ingress_options["resources"] = dict(serving.ingress_resources)
    return MemosIngress.options(  # type: ignore[attr-defined]
        **replicas(serving.ingress_replicas, serving.ingress_autoscaling),
        max_ongoing_requests=serving.max_ongoing_requests,
        ray_actor_options=ingress_options,
    ).bind(config, embedder, llm_deployment(config))


def replicas(count: int, autoscaling: AutoscalingConfig | None) -> dict[str, Any]:
    """A fixed replica count, or Serve's autoscaling when the config asks for it."""
    if autoscaling is not None:
        return {"autoscaling_config": autoscaling.model_dump()}
    return {"num_replicas": count}


def llm_deployment(config: MemosConfig) -> Application | None:
    """Model replicas for in-process backends; a remote endpoint needs none."""
    llm = config.llm
    if not isinstance(llm, TransformersLLMConfig | VLLMConfig):
        return None
    if isinstance(llm, TransformersLLMConfig) and llm.model is None:
        # Fail here, with the install command, rather than in replicas Serve keeps restarting.

        smollm2.gguf_dir()
    options: dict[str, Any] = {
        "max_ongoing_requests": llm.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": llm.num_cpus, "num_gpus": llm.num_gpus},
    }
    options.update(replicas(llm.num_replicas, llm.autoscaling))
    return LLMDeployment.options(**options).bind(config)  # type: ignore[attr-defined]
