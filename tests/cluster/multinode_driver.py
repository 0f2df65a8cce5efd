"""Driver of the multi-node test: deploys configs/multinode.yaml's app onto the cluster at
RAY_ADDRESS, drives it over HTTP through every node's Serve proxy, runs a Ray Data ingest
job, and prints one JSON report (placements, answers, tasks) for the test to judge.

Run by tests/cluster/test_multinode.py in its own process: a driver joins one Ray cluster at
a time, and the test process belongs to the session's. Arguments: a JSON object with
`proxies` ({node: port}), `users`, `turns`, `ingest_cubes` and the config `overrides`.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ray
import yaml
from ray import serve
from ray._private import state

from deployments.app import build_memos_app
from jobs.ingest import IngestArgs, run_ingest
from memos_ray.config import load_config
from memos_ray.errors import ConfigError
from memos_ray.runtime.compose import build_tenancy_store
from memos_ray.runtime.launcher import wait_ready
from memos_ray.runtime.netguard import connect_or_start_ray
from memos_ray.stores.sql.tasks import SQLTaskStore

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "configs" / "multinode.yaml"


# Distinct facts, so that no two memories of a cube look like duplicates to the ranker.
FACTS = [
    "the lighthouse on the north cape is painted teal",
    "her violin lessons moved to Thursday evenings",
    "the bakery on Elm Street sells rye bread only on weekends",
    "our project deadline slipped to the end of March",
    "he adopted a grey cat called Pixel last spring",
    "the ferry to the island leaves every two hours",
    "she prefers window seats on long flights",
    "the garden needs watering before the heatwave",
]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def node_names() -> dict[str, str]:
    """Node id -> its marker resource (node_head, node_a, ...)."""
    names: dict[str, str] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            marks = [r for r in node["Resources"] if r.startswith("node_")]
            names[node["NodeID"]] = marks[0] if marks else node["NodeID"][:8]
    return names


def placements() -> list[dict[str, str]]:
    """Every actor the cluster ran (alive or not): class, name, node, state."""
    names = node_names()
    return [
        {
            "class": info["ActorClassName"],
            "name": info["Name"],
            "node": names.get(info["Address"]["NodeID"], "?"),
            "state": info["State"],
        }
        for info in state.actors().values()
    ]


def wait_nodes(count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while len(node_names()) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(node_names())} of {count} nodes are up")
        time.sleep(0.5)


def main() -> None:
    spec = json.loads(sys.argv[1])
    connect_or_start_ray(None, log_to_driver=False, namespace="memos-multinode")
    wait_nodes(spec["nodes"])
    profile = yaml.safe_load(PROFILE.read_text())
    [app] = profile["applications"]
    overrides = deep_merge(app["args"]["config"], spec["overrides"])
    proxies: dict[str, int] = spec["proxies"]
    report: dict[str, Any] = {}
    # The same config without cluster.multi_node is a single-node one: refused on these nodes.
    try:
        build_memos_app({"config": {k: v for k, v in overrides.items() if k != "cluster"}})
    except ConfigError as exc:
        report["single_node_refused"] = str(exc)
    began = time.monotonic()
    serve.start(
        proxy_location=profile["proxy_location"],
        http_options={"host": "127.0.0.1", "port": proxies["node_head"]},
    )
    serve.run(build_memos_app({"config": overrides}), name=app["name"], route_prefix="/")
    urls = {node: f"http://127.0.0.1:{port}" for node, port in proxies.items()}
    for url in urls.values():
        wait_ready(url, timeout_s=240)
    report["deploy_s"] = round(time.monotonic() - began, 1)

    # Async adds through every node's proxy (each prefers the API replica on its own node):
    # every user's cube gets its own scheduler actor, reading through the stores.
    users = [f"{node}-u{i}" for node in urls for i in range(spec["users"])]
    owner = {user: user.rsplit("-u", 1)[0] for user in users}

    def add(user: str) -> list[str]:
        ids = []
        with httpx.Client(base_url=urls[owner[user]], timeout=120) as http:
            for turn in range(spec["turns"]):
                text = f"{user} remembers: {FACTS[turn % len(FACTS)]} (note {turn})"
                response = http.post(
                    "/product/add",
                    json={"user_id": user, "messages": text, "async_mode": "async"},
                )
                response.raise_for_status()
                ids += [entry["memory_id"] for entry in response.json()["data"]]
        return ids

    began = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        added = dict(zip(users, pool.map(add, users), strict=True))
    report["add_s"] = round(time.monotonic() - began, 1)

    # Searches of every user's memories through every proxy: what one node's replica wrote,
    # every other node's replica finds.
    found: dict[str, dict[str, int]] = {}
    for node, url in urls.items():
        with httpx.Client(base_url=url, timeout=120) as http:
            for user in users:
                response = http.post(
                    "/product/search",
                    json={
                        "user_id": user,
                        "query": f"what does {user} remember",
                        "top_k": 50,
                        "relativity": 0.0,
                        "dedup": "no",
                    },
                )
                response.raise_for_status()
                memories = [
                    m["id"]
                    for bucket in response.json()["data"]["text_mem"]
                    for m in bucket["memories"]
                ]
                found.setdefault(node, {})[user] = len(set(memories) & set(added[user]))
    report["found"] = found
    report["added"] = {user: len(ids) for user, ids in added.items()}

    # The scheduler tasks: every async add's mem_read ran on some node, reading the stores.
    tasks: dict[str, list[dict[str, Any]]] = {}
    with httpx.Client(base_url=urls["node_head"], timeout=300) as http:
        for user in users:
            waited = http.post(
                "/product/scheduler/wait",
                json={"user_name": user, "user_id": user, "timeout_seconds": 240},
            ).json()["data"]
            assert waited["pending"] == 0 and not waited["timed_out"], waited
    log = SQLTaskStore(build_tenancy_store(load_config(overrides)).engine)
    for user in users:
        tasks[user] = [
            {"label": t.label, "state": t.state, "result": t.result}
            for t in log.find(cube_id=user, limit=100)
        ]
    report["tasks"] = tasks

    if spec["ingest_cubes"]:
        report.update(_ingest(spec, overrides, urls))
    report["actors"] = placements()
    print("REPORT " + json.dumps(report), flush=True)


def _ingest(spec: dict[str, Any], overrides: dict[str, Any], urls: dict[str, str]) -> dict:
    """A Ray Data ingest job on the same stores, its embedding actors spread over the nodes;
    then what it wrote, searched through every proxy.
    (LoCoMo's format: one conversation is one cube, so no shuffle is needed.)"""
    report: dict[str, Any] = {}
    conversations = [
        {
            "sample_id": f"c{c}",
            "conversation": {
                "speaker_a": "Ann",
                "speaker_b": "Bob",
                "session_1_date_time": "1:56 pm on 8 May, 2023",
                "session_1": [
                    {
                        "speaker": "Ann" if n % 2 == 0 else "Bob",
                        "dia_id": f"D1:{n + 1}",
                        "text": f"note {n} of conversation {c}: the harbour ferry leaves at {n} pm",
                    }
                    for n in range(spec["turns"])
                ],
            },
            "qa": [],
        }
        for c in range(spec["ingest_cubes"])
    ]
    source = Path(spec["workdir"]) / "ingest.json"
    source.write_text(json.dumps(conversations))
    began = time.monotonic()
    summary = run_ingest(
        IngestArgs(
            format="locomo",
            input=[str(source)],
            user_id="ingester",
            memos=overrides,
            actors=2,
            # Fractions left over on each node must still fit a 1-CPU task somewhere.
            actor_cpus=0.5,
            embed_batch_size=8,
            write_batch=8,
            ceiling_sample=0,
            progress=False,
        )
    )
    report["ingest_s"] = round(time.monotonic() - began, 1)
    report["ingest"] = summary.model_dump()
    ingested: dict[str, dict[str, int]] = {}
    for node, url in urls.items():
        with httpx.Client(base_url=url, timeout=120) as http:
            for c in range(spec["ingest_cubes"]):
                response = http.post(
                    "/product/search",
                    json={
                        "user_id": "ingester",
                        "readable_cube_ids": [f"locomo-c{c}"],
                        "query": "harbour ferry",
                        "top_k": 50,
                        "relativity": 0.0,
                        "dedup": "no",
                    },
                )
                response.raise_for_status()
                hits = [m for b in response.json()["data"]["text_mem"] for m in b["memories"]]
                ingested.setdefault(node, {})[f"locomo-c{c}"] = len(hits)
    report["ingested_found"] = ingested
    return report


if __name__ == "__main__":
    main()
