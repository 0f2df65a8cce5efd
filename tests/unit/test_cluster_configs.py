"""The cluster deployment files: cluster.yaml, configs/production.yaml and the KubeRay RayService.

Each passes the validation Ray itself applies to it (the cluster launcher's schema, Serve's
config schema and deployment overrides, the KubeRay autoscaler's reading of a RayCluster),
builds with `build_memos_app` (so the project's strict `MemosConfig` checks every key), and
they fit together: the cluster holds what the app can scale to, and no secret is written down.
No Ray cluster is started; this runs in a few seconds.
"""

from __future__ import annotations

import copy
import math
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray._common.utils import import_attr
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve._private.application_state import override_deployment_info
from ray.serve._private.build_app import build_app
from ray.serve._private.deploy_utils import deploy_args_to_deployment_info
from ray.serve.schema import ServeDeploySchema

from memos_ray.config import MemosConfig, MilvusConfig, Neo4jConfig, QdrantConfig, VLLMConfig
from memos_ray.runtime.launcher import SERVE_ENV

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {
    "MEMOS_SQL__URL": "postgresql://memos:sql-secret@db.example:5432/memos",
    "MEMOS_GRAPH__PASSWORD": "graph-secret",
    "MEMOS_VECTOR__API_KEY": "qdrant-secret",
    "MEMOS_PREFERENCE__TOKEN": "milvus-secret",
    "MEMOS_ADMIN_KEY": "admin-secret",
}
# Store addresses: the only settings allowed to differ between production.yaml and the RayService.
ADDRESSES = {"graph": "uri", "vector": "url", "preference": "uri"}


def _load(name: str) -> Any:
    return yaml.safe_load((ROOT / name).read_text())


def _manifest() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((ROOT / "configs/kuberay-rayservice.yaml").read_text())
    return {doc["kind"]: doc for doc in docs}


def _serve_config_v2() -> dict[str, Any]:
    return yaml.safe_load(_manifest()["RayService"]["spec"]["serveConfigV2"])


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _ray_requirement() -> Requirement:
    deps = [Requirement(d) for d in _pyproject()["project"]["dependencies"]]
    return next(d for d in deps if d.name == "ray")


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)


def _deployed(serve_config: dict[str, Any]) -> tuple[dict[str, Any], MemosConfig]:
    """What Serve's controller would deploy (DeploymentInfo by name) and the app's MemosConfig.

    Builds the app the way the controller's build task does, then applies the config's
    per-deployment options with Serve's own override code (internal API of the pinned Ray).
    """
    app_schema = ServeDeploySchema.model_validate(serve_config).applications[0]
    app = call_user_app_builder_with_args_if_necessary(
        import_attr(app_schema.import_path), app_schema.args
    )
    built = build_app(app, name=app_schema.name)
    infos = {
        d.name: deploy_args_to_deployment_info(
            deployment_name=d.name,
            deployment_config_proto_bytes=d._deployment_config.to_proto_bytes(),
            replica_config_proto_bytes=d._replica_config.to_proto_bytes(),
            deployer_job_id="",
            app_name=app_schema.name,
            ingress=d.name == built.ingress_deployment_name,
        )
        for d in built.deployments
    }
    ingress = next(d for d in built.deployments if d.name == built.ingress_deployment_name)
    return override_deployment_info(infos, app_schema), ingress.init_args[0]


def _demand(info: Any) -> tuple[float, float, int]:
    """(CPUs, GPUs) of one replica and the most replicas the deployment can reach."""
    options = info.replica_config.ray_actor_options
    scaling = info.deployment_config.autoscaling_config
    most = scaling.max_replicas if scaling else info.deployment_config.num_replicas
    return options.get("num_cpus", 1), options.get("num_gpus", 0), most


def _check_capacity(autoscaling: dict[str, Any], deployed: dict[str, Any]) -> None:
    """Every replica fits on some worker type; all replicas at max fit the workers at max.

    Totals are a necessary condition, not bin packing; the per-replica fit catches a replica
    that no node could ever place.
    """
    head = autoscaling["head_node_type"]
    workers = {k: v for k, v in autoscaling["available_node_types"].items() if k != head}
    assert autoscaling["available_node_types"][head]["resources"].get("CPU") == 0
    cpu_total = sum(t["resources"].get("CPU", 0) * t["max_workers"] for t in workers.values())
    gpu_total = sum(t["resources"].get("GPU", 0) * t["max_workers"] for t in workers.values())
    cpu_need = gpu_need = 0.0
    for name, info in deployed.items():
        cpus, gpus, most = _demand(info)
        assert cpus > 0, f"{name} asks for no CPU: Ray could place it on the head"
        assert any(
            t["resources"].get("CPU", 0) >= cpus and t["resources"].get("GPU", 0) >= gpus
            for t in workers.values()
        ), f"no worker type can hold one {name} replica ({cpus} CPU, {gpus} GPU)"
        cpu_need += cpus * most
        gpu_need += gpus * most
    assert cpu_need <= cpu_total and gpu_need <= gpu_total, (cpu_need, gpu_need, workers)


def _cluster_autoscaling() -> dict[str, Any]:
    return prepare_config(copy.deepcopy(_load("cluster.yaml")))


def _kuberay_autoscaling() -> dict[str, Any]:
    """The autoscaling config the in-tree autoscaler derives from the RayCluster (and validates)."""
    spec = _manifest()["RayService"]["spec"]["rayClusterConfig"]
    cr = {"metadata": {"name": "memos-ray", "namespace": "memos"}, "spec": spec}
    return _derive_autoscaling_config_from_ray_cr(cr)


# --- cluster.yaml ----------------------------------------------------------------------------


def test_cluster_yaml_passes_the_launchers_validation() -> None:
    config = _cluster_autoscaling()
    validate_config(config)  # what `ray up` runs before it touches the cloud
    assert set(config["available_node_types"]) == {"head", "cpu_worker", "gpu_worker"}
    # The validator is strict: a misspelt field is refused, so the pass above means something.
    config["available_node_types"]["gpu_worker"]["max_worker"] = 4
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config)


def test_cluster_yaml_shape() -> None:
    config = _load("cluster.yaml")
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert types["gpu_worker"]["docker"]["worker_image"].endswith("-gpu")
    for name, node in types.items():
        if name != config["head_node_type"]:
            assert 0 <= node["min_workers"] <= node["max_workers"], name
    assert sum(n.get("min_workers", 0) for n in types.values()) <= config["max_workers"]
    # Ray in the images satisfies the project's pin.
    for image in (config["docker"]["image"], types["gpu_worker"]["docker"]["worker_image"]):
        assert _ray_requirement().specifier.contains(image.split(":")[1].split("-")[0]), image
    # The checkout is mounted and installed with extras the project defines; GPUs get vLLM.
    assert config["file_mounts"]["~/memos-ray"] == "."
    extras = set(_pyproject()["project"]["optional-dependencies"])
    installs = {
        "all": " ".join(config["setup_commands"]),
        "gpu": " ".join(types["gpu_worker"]["worker_setup_commands"]),
    }
    for which, commands in installs.items():
        found = re.search(r'pip install "\$HOME/memos-ray\[([a-z,]+)\]"', commands)
        assert found, which
        assert set(found.group(1).split(",")) <= extras
    assert "vllm" in re.search(r"memos-ray\[([a-z,]+)\]", installs["gpu"]).group(1)
    # Every node starts Ray with token auth, reading the token from the mounted folder, and
    # with the Serve settings `memos-ray serve` uses.
    secrets_mount = next(k for k in config["file_mounts"] if "secrets" in k).removeprefix("~/")
    for command in (config["head_start_ray_commands"][-1], config["worker_start_ray_commands"][-1]):
        assert "RAY_AUTH_MODE=token" in command
        assert f"RAY_AUTH_TOKEN_PATH=$HOME/{secrets_mount}/auth_token" in command
        for key, value in SERVE_ENV.items():
            assert f"{key}={value}" in command


# --- the Serve application -------------------------------------------------------------------


def test_production_config_builds_with_servers_and_autoscaling(secret_env: None) -> None:
    deployed, config = _deployed(_load("configs/production.yaml"))
    assert set(deployed) == {"MemosIngress", "EmbedderDeployment", "LLMDeployment"}
    assert isinstance(config.graph, Neo4jConfig)
    assert isinstance(config.vector, QdrantConfig) and config.vector.url and not config.vector.path
    assert isinstance(config.preference, MilvusConfig)
    assert isinstance(config.llm, VLLMConfig)
    assert config.sql_url() == SECRETS["MEMOS_SQL__URL"]
    # Secrets arrive from the environment, beside the YAML's non-secret settings.
    assert config.graph.password.get_secret_value() == SECRETS["MEMOS_GRAPH__PASSWORD"]
    assert config.vector.api_key.get_secret_value() == SECRETS["MEMOS_VECTOR__API_KEY"]
    assert config.preference.token.get_secret_value() == SECRETS["MEMOS_PREFERENCE__TOKEN"]
    assert config.auth_enabled
    assert deployed["LLMDeployment"].replica_config.ray_actor_options["num_gpus"] == 1
    for name, info in deployed.items():
        scaling = info.deployment_config.autoscaling_config
        assert scaling is not None, f"{name} is not autoscaled"
        assert scaling.min_replicas <= scaling.max_replicas
        # Serve only warns when a replica can never reach its target load; refuse it here.
        assert scaling.target_ongoing_requests <= info.deployment_config.max_ongoing_requests
    # MemosConfig's initial counts agree with where autoscaling starts.
    ingress = deployed["MemosIngress"].deployment_config.autoscaling_config
    embedder = deployed["EmbedderDeployment"].deployment_config.autoscaling_config
    assert config.serving.ingress_replicas == ingress.min_replicas
    assert config.embedder.num_replicas == embedder.min_replicas
    assert not config.serving.direct_ingress


def test_a_misspelt_key_in_production_config_is_refused(secret_env: None) -> None:
    serve_config = _load("configs/production.yaml")
    serve_config["applications"][0]["args"]["config"]["vector"]["colection"] = "x"
    with pytest.raises(ValidationError):
        _deployed(serve_config)
    serve_config = _load("configs/production.yaml")
    serve_config["applications"][0]["deployments"][0]["name"] = "Ingress"
    with pytest.raises(ValueError, match="does not exist"):
        _deployed(serve_config)


def test_production_config_refuses_to_start_without_its_sql_server(
    secret_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node missing MEMOS_SQL__URL must not quietly keep tenancy in its own SQLite file."""
    monkeypatch.delenv("MEMOS_SQL__URL")
    with pytest.raises(ValidationError, match="MEMOS_SQL__URL"):
        _deployed(_load("configs/production.yaml"))
    monkeypatch.setenv("MEMOS_SQL__URL", "sqlite:////tmp/memos.db")
    with pytest.raises(ValidationError, match="require_server"):
        _deployed(_load("configs/production.yaml"))


def test_rayservice_carries_the_production_application(secret_env: None) -> None:
    production, v2 = _load("configs/production.yaml"), _serve_config_v2()
    for key in ("proxy_location", "http_options", "logging_config"):
        assert v2[key] == production[key], key
    ours, theirs = _deployed(production), _deployed(v2)
    assert set(ours[0]) == set(theirs[0])
    for name, info in ours[0].items():
        other = theirs[0][name]
        assert info.replica_config.ray_actor_options == other.replica_config.ray_actor_options
        for field in ("num_replicas", "max_ongoing_requests", "autoscaling_config"):
            assert getattr(info.deployment_config, field) == getattr(
                other.deployment_config, field
            ), (name, field)

    def settings(config: MemosConfig) -> dict[str, Any]:
        dumped = config.model_dump(mode="json")
        for section, field in ADDRESSES.items():
            dumped[section].pop(field)
        return dumped

    assert settings(ours[1]) == settings(theirs[1])


# --- the KubeRay RayService ------------------------------------------------------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Container(_Loose):
    name: str
    image: str


class _PodSpec(_Loose):
    containers: list[_Container] = Field(min_length=1)


class _PodTemplate(_Loose):
    spec: _PodSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _HeadGroupSpec(_Strict):
    rayStartParams: dict[str, str] = Field(default_factory=dict)
    template: _PodTemplate
    serviceType: str | None = None
    enableIngress: bool | None = None
    headService: dict[str, Any] | None = None


class _WorkerGroupSpec(_Strict):
    groupName: str
    replicas: int | None = Field(default=None, ge=0)
    minReplicas: int = Field(ge=0)
    maxReplicas: int = Field(ge=0)
    numOfHosts: int | None = Field(default=None, ge=1)
    idleTimeoutSeconds: int | None = None
    rayStartParams: dict[str, str] = Field(default_factory=dict)
    template: _PodTemplate
    scaleStrategy: dict[str, Any] | None = None
    suspend: bool | None = None


class _AutoscalerOptions(_Loose):
    upscalingMode: Literal["Default", "Aggressive", "Conservative"] | None = None
    idleTimeoutSeconds: int | None = None


class _AuthOptions(_Strict):
    mode: Literal["disabled", "token"]


class _RayClusterSpec(_Strict):
    headGroupSpec: _HeadGroupSpec
    workerGroupSpecs: list[_WorkerGroupSpec] = Field(default_factory=list)
    rayVersion: str | None = None
    enableInTreeAutoscaling: bool | None = None
    autoscalerOptions: _AutoscalerOptions | None = None
    authOptions: _AuthOptions | None = None
    headServiceAnnotations: dict[str, str] | None = None
    suspend: bool | None = None


class _RayServiceSpec(_Strict):
    serveConfigV2: str
    rayClusterConfig: _RayClusterSpec
    upgradeStrategy: dict[str, Any] | None = None
    serveService: dict[str, Any] | None = None
    excludeHeadPodFromServeSvc: bool | None = None


class _Metadata(_Loose):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class _RayService(_Strict):
    """Mirrors the ray.io/v1 RayService CRD (KubeRay 1.5) as far as this manifest uses it: its
    required fields, the types the API server enforces (rayStartParams are strings), and no
    unknown fields in the spec (the API server would prune or reject them). The CRD's OpenAPI
    schema ships with no Python package, so it cannot be loaded offline."""

    apiVersion: Literal["ray.io/v1"]
    kind: Literal["RayService"]
    metadata: _Metadata
    spec: _RayServiceSpec


def test_rayservice_matches_the_crd_fields() -> None:
    manifest = _manifest()
    service = _RayService.model_validate(manifest["RayService"])
    cluster = service.spec.rayClusterConfig
    assert cluster.enableInTreeAutoscaling is True
    assert cluster.authOptions is not None and cluster.authOptions.mode == "token"
    assert cluster.rayVersion and _ray_requirement().specifier.contains(cluster.rayVersion)
    pods = [cluster.headGroupSpec.template] + [g.template for g in cluster.workerGroupSpecs]
    containers = [c.model_dump() for p in pods for c in p.spec.containers]
    assert len({c["image"] for c in containers}) == 1, "head and workers run one image"
    for container in containers:
        assert {"secretRef": {"name": "memos-ray-secrets"}} in container["envFrom"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert all(env.get(k) == v for k, v in SERVE_ENV.items()), container["name"]
    volumes = [v for p in pods for v in p.spec.model_dump().get("volumes", [])]
    claims = {
        v["persistentVolumeClaim"]["claimName"] for v in volumes if v.get("persistentVolumeClaim")
    }
    claim = manifest["PersistentVolumeClaim"]
    assert claims == {claim["metadata"]["name"]}
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    # A mistake the API server would refuse: a number where the CRD wants a string.
    broken = copy.deepcopy(manifest["RayService"])
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    with pytest.raises(ValidationError):
        _RayService.model_validate(broken)


def test_rayservice_cluster_passes_the_kuberay_autoscalers_validation() -> None:
    config = _kuberay_autoscaling()  # raises if the autoscaler could not read the RayCluster
    types = config["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0
    assert types["gpu-workers"]["resources"]["GPU"] == 1
    assert "GPU" not in types["cpu-workers"]["resources"]
    for name in ("cpu-workers", "gpu-workers"):
        assert 0 <= types[name]["min_workers"] <= types[name]["max_workers"], name


@pytest.mark.parametrize("cluster", ["cluster.yaml", "kuberay"])
def test_cluster_holds_the_application_at_its_largest(cluster: str, secret_env: None) -> None:
    if cluster == "kuberay":
        autoscaling, serve_config = _kuberay_autoscaling(), _serve_config_v2()
    else:
        autoscaling, serve_config = _cluster_autoscaling(), _load("configs/production.yaml")
    deployed, _ = _deployed(serve_config)
    _check_capacity(autoscaling, deployed)
    # A replica asking for more than any worker has is caught.
    llm = deployed["LLMDeployment"].replica_config.ray_actor_options
    llm["num_cpus"] = math.inf
    with pytest.raises(AssertionError, match="no worker type"):
        _check_capacity(autoscaling, deployed)


# --- secrets ---------------------------------------------------------------------------------

# Whole words of a name: `MEMOS_ADMIN_KEY`, `password`, `RAY_AUTH_TOKEN`; not `max_tokens`.
_SECRET_NAME = re.compile(
    r"(^|[_.-])(password|passwd|secret|token|api_?key|admin_?key|credentials?)($|[_.-])", re.I
)
_URL_CREDENTIALS = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
_SHELL_ASSIGNMENT = re.compile(r"\b([A-Z][A-Z0-9_]*)=(\S+)")


def _literal_secrets(node: Any, where: str = "") -> list[str]:
    """Places where a secret is written down: a secret-named field or env var with a literal
    value, a URL with a password in it, or a shell `export SECRET=literal`."""
    found: list[str] = []
    if isinstance(node, dict):
        name = node.get("name")
        if isinstance(name, str) and _SECRET_NAME.search(name) and "value" in node:
            found.append(f"{where}: env {name} has a literal value")
        for key, value in node.items():
            field = isinstance(key, str) and re.fullmatch(r"[A-Za-z_][\w.-]*", key)
            if field and _SECRET_NAME.search(key) and isinstance(value, str | int | float):
                found.append(f"{where}.{key}")
            found += _literal_secrets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += _literal_secrets(item, f"{where}[{i}]")
    elif isinstance(node, str):
        if _URL_CREDENTIALS.search(node):
            found.append(f"{where}: URL with credentials")
        for var, value in _SHELL_ASSIGNMENT.findall(node):
            is_reference = var.endswith(("_PATH", "_FILE")) or value.startswith("$")
            if _SECRET_NAME.search(var) and not is_reference:
                found.append(f"{where}: {var} set to a literal")
    return found


def test_the_secret_scanner_finds_secrets() -> None:
    planted = {
        "graph": {"password": "hunter2"},
        "sql": {"url": "postgresql://memos:hunter2@db/memos"},
        "env": [{"name": "MEMOS_ADMIN_KEY", "value": "k"}],
        "cmd": "export MEMOS_ADMIN_KEY=abc && ray start",
    }
    assert len(_literal_secrets(planted)) == 4


def test_no_secret_is_written_in_the_deployment_files() -> None:
    documents = {
        "cluster.yaml": _load("cluster.yaml"),
        "production.yaml": _load("configs/production.yaml"),
        "serveConfigV2": _serve_config_v2(),
        **{f"kuberay {kind}": doc for kind, doc in _manifest().items()},
    }
    for name, document in documents.items():
        assert _literal_secrets(document) == [], name
