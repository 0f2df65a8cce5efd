"""The shipped Serve configs: valid for Serve, and the app they build places what they say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.app import build_memos_app
from memos_ray.config import TransformersLLMConfig, VLLMConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / name).read_text())


def _deployments(app: Any) -> dict[str, Any]:
    """Every deployment bound into an application, by name (walks the bound arguments)."""
    found: dict[str, Any] = {}
    todo = [app]
    while todo:
        deployment = todo.pop()._bound_deployment
        found[deployment.name] = deployment
        todo.extend(a for a in deployment.init_args if hasattr(a, "_bound_deployment"))
    return found


@pytest.mark.parametrize("name", ["local.yaml", "gpu.yaml"])
def test_config_passes_serve_schema(name: str) -> None:
    schema = ServeDeploySchema.model_validate(_load(name))
    assert schema.applications[0].import_path == "deployments.app:build_memos_app"


def test_gpu_config_places_vllm_on_gpus_with_autoscaling(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MEMOS_GRAPH__PASSWORD", "from-the-environment")
    args = _load("gpu.yaml")["applications"][0]["args"]
    deployments = _deployments(build_memos_app(args))
    assert set(deployments) == {"MemosIngress", "EmbedderDeployment", "LLMDeployment"}
    llm = deployments["LLMDeployment"]
    assert llm.ray_actor_options["num_gpus"] == 1
    scaling = llm._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 4)
    assert scaling.target_ongoing_requests == 16
    config = deployments["MemosIngress"].init_args[0]
    assert isinstance(config.llm, VLLMConfig) and config.llm.max_loras >= 1
    assert config.graph.password.get_secret_value() == "from-the-environment"
    assert config.serving.ingress_replicas == 2 and not config.serving.direct_ingress


def test_local_config_runs_the_cpu_model() -> None:
    args = _load("local.yaml")["applications"][0]["args"]
    deployments = _deployments(build_memos_app(args))
    llm = deployments["LLMDeployment"]
    assert llm.ray_actor_options["num_gpus"] == 0
    assert isinstance(deployments["MemosIngress"].init_args[0].llm, TransformersLLMConfig)


def test_no_llm_leaves_the_model_deployment_out() -> None:
    deployments = _deployments(build_memos_app({"config": {"llm": {"backend": "none"}}}))
    assert "LLMDeployment" not in deployments


def test_bad_llm_config_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        build_memos_app({"config": {"llm": {"backend": "vllm"}}})  # no model
    with pytest.raises(ValidationError):
        build_memos_app({"config": {"llm": {"backend": "vllm", "model": "m", "num_gpus": -1}}})


@pytest.mark.parametrize("name", ["local.yaml", "gpu.yaml", "production.yaml"])
def test_a_network_facing_config_needs_the_admin_key(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `memos-ray serve` and the builder check: a non-loopback HTTP host with no admin
    key is refused, unless `serving.allow_open_network` says a proxy authenticates."""
    from memos_ray.config import load_config
    from memos_ray.runtime.netguard import OpenNetworkError, is_loopback, require_admin_key

    monkeypatch.delenv("MEMOS_ADMIN_KEY", raising=False)
    monkeypatch.setenv("MEMOS_SQL__URL", "postgresql://memos@db.example:5432/memos")
    spec = _load(name)
    host = spec["http_options"]["host"]
    args = spec["applications"][0]["args"]["config"]
    if is_loopback(host):
        require_admin_key(host, load_config(args), name)
        return
    with pytest.raises(OpenNetworkError, match="MEMOS_ADMIN_KEY"):
        require_admin_key(host, load_config(args), name)
    monkeypatch.setenv("MEMOS_ADMIN_KEY", "from-a-secret")
    require_admin_key(host, load_config(args), name)
    monkeypatch.delenv("MEMOS_ADMIN_KEY")
    proxied = {**args, "serving": {**args.get("serving", {}), "allow_open_network": True}}
    require_admin_key(host, load_config(proxied), name)
