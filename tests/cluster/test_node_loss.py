"""Losing a worker node under load: memos-ray on a head (no CPUs, the vector engine's actor)
and two workers that can each host everything else (API and embedder replicas, the cubes'
scheduler actors), deployed from configs/multinode.yaml with 2 API and 2 embedder replicas.

A steady mixed load (sync adds, async adds whose `mem_read` tasks the cubes' scheduler
actors run, searches) goes through the head's proxy and the surviving worker's; the worker
hosting the most of the app is killed outright (its whole process group). Serve replaces its
replicas on the survivor, Ray restarts its scheduler actors there, and they resume from the
task log. Afterwards: every add answered 200 is in the graph and the vectors, every task an
add answered with completed, each applied once (`counted_record`: a task runs again only if
its actor died while running it, and its attempts say so). Failed requests are counted by
status and must be retryable ones (503, connection errors, a 500 for a replica that died
mid-request), never another 500; the recovery time is reported.

Only under `-m multinode` (a few minutes; needs PostgreSQL).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from memos_ray.embedded.falkordb_server import free_port
from tests.fixtures.multinode import LocalRayCluster, cluster_env, cluster_stores

pytestmark = [pytest.mark.multinode, pytest.mark.postgres]

DRIVER = Path(__file__).with_name("node_loss_driver.py")
WORKERS = ("node_a", "node_b")
# Refused, or unanswered (may or may not have been applied, so not acknowledged): "500 proxy"
# is Serve's proxy answering for a replica that died under the request (it cannot say 503).
RETRYABLE = {"503", "429", "500 proxy", "ConnectError", "RemoteProtocolError", "ReadTimeout"}


def _overrides() -> dict[str, Any]:
    """Sizes for 2 cores; `mem_read` is the counting stand-in, so no LLM is called."""
    return {
        "cluster": {"single_host": True},
        "embedder": {"num_replicas": 2, "num_cpus": 0.5, "local_queries": False},
        "llm": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "stub"},
        "scheduler": {
            "handlers": {"mem_read": "tests.fixtures.task_handlers:counted_record"},
            "organize_after_read": False,
            "retry_backoff_s": 0.5,
        },
        "serving": {"ingress_replicas": 2, "ingress_num_cpus": 0.25},
    }


def test_worker_node_lost_under_load(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if "multinode" not in (request.config.option.markexpr or ""):
        pytest.skip("runs with -m multinode")
    # Asked for only now: a skipped run starts no PostgreSQL for it.
    postgres_url: str = request.getfixturevalue("postgres_url")
    shared = tmp_path / "shared"  # the "shared filesystem": every node is on this machine
    proxies = {"node_head": free_port(), **{name: free_port() for name in WORKERS}}
    with cluster_stores(tmp_path / "servers", postgres_url) as stores:
        env = {
            **stores.env,
            "MEMOS_DATA_DIR": str(shared),
            "MEMOS_VECTOR__PATH": str(tmp_path / "head-disk" / "qdrant-edge"),
        }
        with LocalRayCluster(tmp_path / "ray", env=cluster_env(env)) as cluster:
            cluster.start_head(num_cpus=0, resources={"node_head": 1, "memos_vector": 1})
            for name in WORKERS:
                # Room for every replica on either worker: the survivor takes the victim's.
                cluster.add_node(
                    name,
                    num_cpus=2,
                    resources={name: 1, "memos_api": 2, "memos_worker": 1, "memos_embed": 2},
                    env={"RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(proxies[name])},
                )
            spec = {
                "proxies": proxies,
                "workdir": str(tmp_path),
                "data_dir": str(shared),
                "overrides": _overrides(),
                "workers": 4,
                "before_s": 15,
                "min_after_s": 30,
                "quiet_s": 15,
                "max_after_s": 240,
            }
            with ThreadPoolExecutor(1) as pool:
                running = pool.submit(
                    cluster.run_driver,
                    [str(DRIVER), json.dumps(spec)],
                    timeout_s=1200,
                    log=tmp_path / "driver.log",
                )
                # The driver names the victim once the app is placed; this process owns the
                # nodes, so it kills it.
                kill_request = tmp_path / "kill-request"
                while not kill_request.exists() and not running.done():
                    time.sleep(0.1)
                if kill_request.exists():
                    cluster.kill_node(kill_request.read_text().strip())
                    (tmp_path / "killed").write_text(str(time.time()))
                done = running.result()
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    report = json.loads(lines[-1].removeprefix("REPORT "))
    figures = {k: v for k, v in report.items() if not k.startswith(("actors_", "examples"))}
    print("NODE LOSS " + json.dumps(figures))

    # The load ran on both sides of the kill, and came back.
    assert report["requests"] > 50 and report["adds_acknowledged"] > 20, figures
    assert report["tasks_acknowledged"] > 5, figures
    assert report["replicas_back_s"] is not None, figures
    assert report["other_500"] == 0, report["other_500_examples"]
    assert set(report["failures_by_status"]) <= RETRYABLE, figures
    # Nothing failed before the kill; the proxy's 500s came while the victim's replicas were
    # being lost.
    assert report["failures_before_kill"] == 0, figures
    assert report["proxy_500_outside_loss"] == 0, figures

    # Serve replaced the victim's replicas on the survivor; its scheduler actors restarted.
    victim = report["victim"]
    survivor = next(name for name in WORKERS if name != victim)
    alive = [a for a in report["actors_after"] if a["state"] == "ALIVE"]
    for cls in ("MemosIngress", "EmbedderDeployment"):
        nodes = [a["node"] for a in alive if cls in a["class"]]
        assert nodes == [survivor, survivor], (cls, report["actors_after"])
    assert not [a for a in alive if a["node"] == victim], report["actors_after"]
    moved = [
        a["name"]
        for a in report["actors_before"]
        if a["class"] == "CubeSchedulerActor" and a["node"] == victim and a["state"] == "ALIVE"
    ]
    assert moved, report["actors_before"]  # the kill took some cubes' actors
    after = {a["name"]: a for a in report["actors_after"] if a["class"] == "CubeSchedulerActor"}
    for name in moved:  # restarted (same actor, one more restart) on the survivor
        actor = after[name]
        assert actor["state"] == "ALIVE" and actor["node"] == survivor, actor
        assert actor["restarts"] >= 1, actor

    # Nothing acknowledged was lost; every task ran to the end, applied exactly once.
    for key in (
        "adds_missing_in_graph",
        "adds_missing_in_vectors",
        "not_found_by_text",
        "tasks_lost",
        "tasks_unfinished",
        "tasks_never_applied",
        "tasks_applied_twice",
        "tasks_run_beyond_attempts",
    ):
        assert report[key] == 0, (key, report["examples"])
