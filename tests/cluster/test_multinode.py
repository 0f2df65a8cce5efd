"""memos-ray on a Ray cluster of three nodes (a head and two workers, one machine), deployed
from configs/multinode.yaml: PostgreSQL for SQL and the task log, a standalone FalkorDB
server and a `milvus-lite server` reached by address, the vector engine's actor pinned to the
head (the node "with its disk"), API replicas on both workers, the embedder on one of them.

Through every node's Serve proxy (each routes to the API replica of its own node first):
adds and searches work, and what one node's replica wrote the others find; every async add's
scheduler task ran (its actor on one of the workers, both used) and read the stores from
there; a Ray Data ingest job's embedding actors ran on both workers and what it wrote is
searchable from every proxy.

The default run has the small version (under a minute: 6 users x 3 turns, no ingest job);
`pytest -m multinode` adds the long one (5 times the users and turns, and the ingest job of 4
conversations). Needs PostgreSQL; marked `multinode`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from memos_ray.embedded.falkordb_server import free_port
from tests.fixtures.multinode import LocalRayCluster, cluster_env, cluster_stores

pytestmark = [pytest.mark.multinode, pytest.mark.postgres]

DRIVER = Path(__file__).with_name("multinode_driver.py")


def _overrides() -> dict[str, Any]:
    """What the test changes in the shipped profile: sizes for 2 cores, one machine."""
    return {
        # Every node of this cluster is on this machine: loopback store addresses are fine
        # (checked against the nodes' IPs at start).
        "cluster": {"single_host": True},
        "embedder": {"num_replicas": 1, "num_cpus": 0.5, "local_queries": False},
        # The scheduler's mem_read is a probe that reads the stores from its own node; an
        # OpenAI endpoint nobody calls gives async adds their reading step.
        "llm": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "stub"},
        "scheduler": {
            "handlers": {"mem_read": "tests.fixtures.task_handlers:node_probe"},
            "organize_after_read": False,
        },
        "serving": {"ingress_num_cpus": 0.25},
    }


@pytest.mark.parametrize("scale", [1, 5], ids=["short", "long"])
def test_app_and_jobs_span_three_nodes(
    tmp_path: Path, postgres_url: str, scale: int, request: pytest.FixtureRequest
) -> None:
    if scale > 1 and "multinode" not in (request.config.option.markexpr or ""):
        pytest.skip("the long variant runs with -m multinode")
    shared = tmp_path / "shared"  # the "shared filesystem": every node is on this machine
    head_disk = tmp_path / "head-disk"  # the vector engine's node-local folder
    proxies = {"node_head": free_port(), "node_a": free_port(), "node_b": free_port()}
    with cluster_stores(tmp_path / "servers", postgres_url) as stores:
        env = {
            **stores.env,
            "MEMOS_DATA_DIR": str(shared),
            "MEMOS_VECTOR__PATH": str(head_disk / "qdrant-edge"),
        }
        with LocalRayCluster(tmp_path / "ray", env=cluster_env(env)) as cluster:
            cluster.start_head(num_cpus=0, resources={"node_head": 1, "memos_vector": 1})
            for name, extra in (("node_a", {}), ("node_b", {"memos_embed": 1})):
                cluster.add_node(
                    name,
                    num_cpus=2,
                    resources={name: 1, "memos_api": 1, "memos_worker": 1, **extra},
                    # Colocated proxies need their own ports (Ray Serve's per-node knob).
                    env={"RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(proxies[name])},
                )
            spec = {
                "nodes": 3,
                "proxies": proxies,
                "users": 2 * scale,
                "turns": 3 * scale,
                # The ingest job (a minute of Ray Data start-up on two cores) in the long one.
                "ingest_cubes": 4 if scale > 1 else 0,
                "workdir": str(tmp_path),
                "overrides": _overrides(),
            }
            done = cluster.run_driver(
                [str(DRIVER), json.dumps(spec)], timeout_s=900, log=tmp_path / "driver.log"
            )
            # The API's HTTP ports (every node's proxy) listen on loopback only; Ray's own
            # ports are behind its token (see tests/fixtures/multinode.py).
            http = set(proxies.values())
            exposed = [x for x in cluster.listeners() if x.port in http and not x.loopback]
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    report = json.loads(lines[-1].removeprefix("REPORT "))
    print({k: report.get(k) for k in ("deploy_s", "add_s", "ingest_s")})

    assert not exposed, "\n".join(f"{x.name} {x.ip}:{x.port} {x.cmdline}" for x in exposed)
    # The same config without cluster.multi_node (a single-node one) is refused on three nodes.
    assert "has 3 nodes, but the config is a single-node one" in report["single_node_refused"]
    actors = report["actors"]

    def nodes_of(cls: str) -> Counter[str]:
        return Counter(a["node"] for a in actors if cls in a["class"] and a["state"] == "ALIVE")

    # Placement: API replicas on both workers, the embedder on node_b only, the engine's
    # actor on the node with its disk, proxies on every node.
    assert nodes_of("MemosIngress") == Counter({"node_a": 1, "node_b": 1}), actors
    assert nodes_of("EmbedderDeployment") == Counter({"node_b": 1}), actors
    assert nodes_of("VectorStoreActor") == Counter({"node_head": 1}), actors
    assert set(nodes_of("ProxyActor")) == {"node_head", "node_a", "node_b"}, actors
    # No embedded server actor anywhere: the profile reaches its stores by address.
    assert not [a for a in actors if "FalkorDB" in a["class"] or "Milvus" in a["class"]]

    # Every add through every proxy stored its memory; every proxy finds all of them.
    turns = 3 * scale
    assert set(report["added"].values()) == {turns}, report["added"]
    for node, found in report["found"].items():
        assert set(found.values()) == {turns}, (node, found)

    # Each add's scheduler task completed on a worker and read its memory back there.
    results = [t for tasks in report["tasks"].values() for t in tasks if t["label"] == "mem_read"]
    assert len(results) == len(report["added"]) * turns
    assert {t["state"] for t in results} == {"completed"}, results
    assert all(t["result"]["found"] == 1 and t["result"]["nearest"] for t in results), results
    assert {t["result"]["node"] for t in results} == {"node_a", "node_b"}, results
    assert set(nodes_of("CubeSchedulerActor")) == {"node_a", "node_b"}, actors

    if scale == 1:
        return
    # The ingest job: everything written, its embedding actors on both workers, and its
    # memories found through every proxy.
    ingest = report["ingest"]
    assert ingest["memories_written"] == 4 * turns, ingest
    embed_nodes = {a["node"] for a in actors if "MapWorker" in a["class"]}
    assert embed_nodes == {"node_a", "node_b"}, actors
    for node, found in report["ingested_found"].items():
        assert set(found.values()) == {turns}, (node, found)
