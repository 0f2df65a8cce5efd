"""What ties an app to one node is refused before it starts: from the config alone
(`cluster_problems`: embedded servers on loopback, SQLite, an unpinned engine, a loopback
address, an unshared data dir) and against the Ray nodes (`check_cluster`: a single-node
profile on several nodes, `single_host` on several machines). configs/multinode.yaml builds
and places what it says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from deployments.app import build_from_config
from memos_ray.config import MemosConfig, cluster_problems
from memos_ray.errors import ConfigError
from memos_ray.runtime.cluster import check_cluster
from memos_ray.runtime.compose import standalone_falkordb

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SERVERS = {
    "MEMOS_SQL__URL": "postgresql://memos:pw@db.cluster.internal:5432/memos",
    "MEMOS_GRAPH__ADDRESS": "falkordb.cluster.internal:6379",
    "MEMOS_GRAPH__PASSWORD": "graph-secret",
    "MEMOS_PREFERENCE__URI": "http://milvus-lite.cluster.internal:19530",
}


def _profile() -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / "multinode.yaml").read_text())


def _args() -> dict[str, Any]:
    return _profile()["applications"][0]["args"]["config"]


def _nodes(*ips: str) -> list[dict[str, Any]]:
    return [{"NodeManagerAddress": ip, "Alive": True} for ip in ips]


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SERVERS.items():
        monkeypatch.setenv(key, value)


def test_the_multinode_profile_validates_and_places_its_replicas(servers: None) -> None:
    ServeDeploySchema.model_validate(_profile())
    config = MemosConfig(**_args())
    assert cluster_problems(config) == []
    address = standalone_falkordb(config.graph)  # type: ignore[arg-type]
    assert address is not None
    assert (address.host, address.port, address.password) == (
        "falkordb.cluster.internal",
        6379,
        "graph-secret",
    )
    app = build_from_config(config)
    ingress = app._bound_deployment
    assert ingress.ray_actor_options["resources"] == {"memos_api": 1}
    [embedder] = [a for a in ingress.init_args if hasattr(a, "_bound_deployment")]
    assert embedder._bound_deployment.ray_actor_options["resources"] == {"memos_embed": 1}
    # Several nodes of several machines: fine for a config without loopback addresses.
    check_cluster(config, _nodes("10.0.0.1", "10.0.0.2", "10.0.0.3"))


def test_a_single_node_config_lists_everything_tied_to_one_node(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        MemosConfig(data_dir=tmp_path, cluster={"multi_node": True})
    message = str(caught.value)
    for part in ("graph: the embedded FalkorDB", "vector: the qdrant_edge", "preference: Milvus"):
        assert part in message
    assert "sql: SQLite" in message and "cluster.shared_data_dir" in message


@pytest.mark.parametrize(
    ("variable", "value", "setting"),
    [
        ("MEMOS_GRAPH__ADDRESS", "127.0.0.1:6379", "graph.address"),
        ("MEMOS_PREFERENCE__URI", "http://localhost:19530", "preference.uri"),
        ("MEMOS_SQL__URL", "postgresql://memos@[::1]:5432/memos", "sql.url"),
        ("MEMOS_SQL__URL", "postgresql:///memos?host=/run/postgresql", "sql.url"),
    ],
)
def test_a_loopback_address_is_refused_unless_all_nodes_share_a_host(
    servers: None, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, setting: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=f"{setting} names"):
        MemosConfig(**_args())
    # One machine (a test, a workstation): allowed, and then checked against the nodes.
    config = MemosConfig(**{**_args(), "cluster": {**_args()["cluster"], "single_host": True}})
    check_cluster(config, _nodes("127.0.0.1", "127.0.0.1", "127.0.0.1"))
    with pytest.raises(ConfigError, match="single_host"):
        check_cluster(config, _nodes("127.0.0.1", "10.0.0.2"))


def test_a_single_node_profile_on_several_nodes_is_refused(tmp_path: Path) -> None:
    config = MemosConfig(data_dir=tmp_path)
    check_cluster(config, _nodes("127.0.0.1"))
    with pytest.raises(ConfigError, match="has 2 nodes, but the config is a single-node one"):
        check_cluster(config, _nodes("127.0.0.1", "127.0.0.1"))


def test_a_bad_falkordb_address_is_refused(tmp_path: Path) -> None:
    config = MemosConfig(data_dir=tmp_path, graph={"backend": "falkordb", "address": "db"})
    with pytest.raises(ConfigError, match="host:port"):
        standalone_falkordb(config.graph)  # type: ignore[arg-type]
