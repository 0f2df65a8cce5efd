"""Driver of the node-loss test: deploys configs/multinode.yaml's app onto the cluster at
RAY_ADDRESS, runs a steady mixed load (sync adds, async adds with their scheduler tasks,
searches) through the head's proxy and the surviving worker's, has the test kill the worker
that hosts the most of the app, keeps the load going until it recovers, then checks that
nothing acknowledged was lost, and prints one JSON report for the test to judge.

The kill is the test's (it owns the nodes' process groups): the driver writes the victim's
name to `<workdir>/kill-request` and waits for `<workdir>/killed`. Arguments: a JSON object
with `proxies` ({node: port}), `workdir`, `data_dir`, `overrides`, `workers`, `before_s`
(load before the kill), `min_after_s` / `quiet_s` / `max_after_s` (load after it: at least
`min_after_s`, until `quiet_s` without a failure and the app's replicas are back, at most
`max_after_s`).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray
import yaml
from ray import serve
from ray._private import state

from deployments.app import build_memos_app
from memos_ray.config import load_config
from memos_ray.runtime.compose import build_ray_stores, build_tenancy_store
from memos_ray.runtime.launcher import wait_ready
from memos_ray.runtime.netguard import connect_or_start_ray
from memos_ray.stores.sql.tasks import SQLTaskStore
from tests.cluster.multinode_driver import PROFILE, deep_merge, wait_nodes

# What a node hosts of the app, counted to choose the victim.
APP_ACTORS = ("MemosIngress", "EmbedderDeployment", "CubeSchedulerActor", "TaskFeed", "Gate")
_MARKS: dict[str, str] = {}


def node_marks() -> dict[str, str]:
    """Node id -> its marker resource (node_head, node_a, ...); a dead node keeps the one it
    had when last seen alive (Ray lists it without resources)."""
    for node in ray.nodes():
        found = [r for r in node["Resources"] if r.startswith("node_")]
        if found or node["NodeID"] not in _MARKS:
            _MARKS[node["NodeID"]] = found[0] if found else node["NodeID"][:8]
    return dict(_MARKS)


def actors() -> dict[str, dict[str, Any]]:
    """Actor id -> class, name, node, state, restarts (every actor the cluster ran)."""
    marks = node_marks()
    return {
        actor_id: {
            "class": info["ActorClassName"],
            "name": info["Name"],
            "node": marks.get(info["Address"]["NodeID"], "?"),
            "state": info["State"],
            "restarts": info["NumRestarts"],
        }
        for actor_id, info in state.actors().items()
    }


def alive_on(table: dict[str, dict[str, Any]], cls: str) -> Counter[str]:
    return Counter(a["node"] for a in table.values() if cls in a["class"] and a["state"] == "ALIVE")


@dataclass
class Event:
    op: str
    status: str
    start: float
    end: float


@dataclass
class Load:
    """Closed-loop client threads, each on its own cube through one proxy; a failed request
    is retried (as a client would) and every attempt is counted by its status."""

    urls: dict[str, str]  # user -> proxy URL
    stop: threading.Event = field(default_factory=threading.Event)
    events: list[Event] = field(default_factory=list)
    acked: dict[str, tuple[str, str]] = field(default_factory=dict)  # memory id -> cube, text
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> cube
    unanswered_adds: int = 0  # given up after retries (stop came first)
    other_500: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: int = 0

    def _status(self, response: httpx.Response | None, exc: Exception | None) -> str:
        """The status, or the exception of a request that got no answer. Serve's proxy answers
        a bare text/plain 500 when the replica died under the request (the app answers its
        own errors in MemOS's JSON envelope, a replica or actor it lost as a 503)."""
        if response is None:
            return type(exc).__name__
        if response.status_code == 500:
            if response.headers.get("content-type", "").startswith("text/plain"):
                return "500 proxy"
            with self.lock:
                self.other_500.append(response.text[:300])
        return str(response.status_code)

    def _post(
        self, http: httpx.Client, path: str, body: dict[str, Any], op: str | None = None
    ) -> dict[str, Any] | None:
        """Until a 200 (retrying failures), or None once the load stops; every attempt is
        counted under `op` (the path by default)."""
        op = op or path
        while True:
            start = time.monotonic()
            response: httpx.Response | None = None
            error: Exception | None = None
            try:
                response = http.post(f"/product/{path}", json=body)
            except httpx.HTTPError as exc:
                error = exc
            status = self._status(response, error)
            with self.lock:
                self.events.append(Event(op, status, start, time.monotonic()))
            if response is not None and response.status_code == 200:
                return dict(response.json())
            if response is not None and response.status_code < 500 and response.status_code != 429:
                return None  # a client error is the test's bug: counted, not retried
            if self.stop.is_set():
                return None
            time.sleep(0.25)

    def worker(self, user: str, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.urls[user], timeout=30) as http:
            while not self.stop.is_set():
                roll = rng.random()
                if roll < 0.35:
                    self._add(http, user, asynchronous=False)
                elif roll < 0.65:
                    self._add(http, user, asynchronous=True)
                else:
                    query = f"report about item {rng.randrange(500)}"
                    self._post(http, "search", {"user_id": user, "query": query, "top_k": 5})
                time.sleep(0.05)

    def _add(self, http: httpx.Client, user: str, asynchronous: bool) -> None:
        with self.lock:
            self.counter += 1
            n = self.counter
        text = f"Node-loss note {n}: {user} filed report {n * 7919 % 100003} about item {n}."
        op = "add async" if asynchronous else "add"
        body = {
            "user_id": user,
            "async_mode": "async" if asynchronous else "sync",
            "messages": [{"role": "user", "content": text}],
        }
        answer = self._post(http, "add", body, op)
        with self.lock:
            if answer is None:
                self.unanswered_adds += 1
                return
            for entry in answer.get("data") or []:
                self.acked[entry["memory_id"]] = (entry["cube_id"], entry["memory"])
                if entry.get("task_id"):
                    self.tasks[entry["task_id"]] = entry["cube_id"]


def run_load(spec: dict[str, Any], users: dict[str, str], victim: str) -> dict[str, Any]:
    """The load through head's and survivor's proxies, the kill, the wait for recovery."""
    load = Load(users)
    threads = [
        threading.Thread(target=load.worker, args=(user, i), daemon=True)
        for i, user in enumerate(users)
    ]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(spec["before_s"])
    before = actors()
    workdir = Path(spec["workdir"])
    (workdir / "kill-request").write_text(victim)
    while not (workdir / "killed").exists():
        time.sleep(0.05)
    killed_at = time.monotonic()
    print(f"killed {victim} after {killed_at - began:.1f} s of load", flush=True)
    replicas_back_s: float | None = None
    while time.monotonic() - killed_at < spec["max_after_s"]:
        time.sleep(1.0)
        now = time.monotonic()
        if replicas_back_s is None:
            table = actors()
            ingress, embed = alive_on(table, "MemosIngress"), alive_on(table, "EmbedderDeployment")
            back = sum(ingress.values()) == 2 and sum(embed.values()) == 2
            if back and victim not in ingress and victim not in embed:
                replicas_back_s = round(now - killed_at, 1)
        with load.lock:
            failed = [e.end for e in load.events if e.status != "200" and e.end >= killed_at]
        quiet = now - max(failed, default=killed_at)
        after = now - killed_at
        if after >= spec["min_after_s"] and quiet >= spec["quiet_s"] and replicas_back_s:
            break
    load.stop.set()
    for thread in threads:
        thread.join(timeout=60)
    events = load.events
    failures = [e for e in events if e.status != "200"]
    after_kill = [e for e in failures if e.end >= killed_at]
    answers = Counter(f"{e.op} {e.status}" for e in events)
    # The proxy's 500s are its replica dying under the request: only between the kill and
    # Serve's noticing (the victim's replicas marked dead), never elsewhere.
    window_end = killed_at + (replicas_back_s or spec["max_after_s"]) + 5
    stray_proxy_500 = [
        e for e in events if e.status == "500 proxy" and not killed_at <= e.end <= window_end
    ]
    return {
        "load": load,
        "actors_before": before,
        "figures": {
            "load_s": round(time.monotonic() - began, 1),
            "killed_after_s": round(killed_at - began, 1),
            "requests": len(events),
            "failed_requests": len(failures),
            "error_rate": round(len(failures) / len(events), 4) if events else None,
            "answers": dict(sorted(answers.items())),
            "failures_by_status": dict(Counter(e.status for e in failures)),
            "failures_before_kill": len(failures) - len(after_kill),
            # From the kill until the last failed request ended: requests succeed after it.
            "recovery_s": round(max(e.end for e in after_kill) - killed_at, 1)
            if after_kill
            else 0.0,
            "first_failure_s": round(min(e.end for e in after_kill) - killed_at, 1)
            if after_kill
            else None,
            "replicas_back_s": replicas_back_s,
            "adds_acknowledged": len(load.acked),
            "adds_given_up": load.unanswered_adds,
            "tasks_acknowledged": len(load.tasks),
            "proxy_500_outside_loss": len(stray_proxy_500),
            "other_500": len(load.other_500),
            "other_500_examples": load.other_500[:5],
        },
    }


def settled(timeout_s: float = 60) -> dict[str, dict[str, Any]]:
    """The actor table once no app actor is still being created."""
    deadline = time.monotonic() + timeout_s
    while True:
        table = actors()
        pending = [
            a
            for a in table.values()
            if any(cls in a["class"] for cls in APP_ACTORS) and a["state"] not in ("ALIVE", "DEAD")
        ]
        if not pending or time.monotonic() > deadline:
            return table
        time.sleep(0.5)


def check(
    config: Any, load: Load, data_dir: Path, search_url: str, timeout_s: float
) -> dict[str, Any]:
    """Every acknowledged add in the graph and the vectors (and a sample found by its text);
    every acknowledged task ran to the end, applied once, run again only after a kill."""
    store = SQLTaskStore(build_tenancy_store(config).engine)
    began = time.monotonic()
    while store.cubes_with_pending() and time.monotonic() - began < timeout_s:
        time.sleep(1.0)
    drained_s = round(time.monotonic() - began, 1)
    graph, vectors = build_ray_stores(config)
    by_cube: dict[str, list[str]] = {}
    for memory_id, (cube, _) in load.acked.items():
        by_cube.setdefault(cube, []).append(memory_id)
    missing_graph: list[str] = []
    missing_vectors: list[str] = []
    for cube, ids in by_cube.items():
        in_graph = {item.id for item in graph.get_nodes([cube], ids)}
        missing_graph += [i for i in ids if i not in in_graph]
        in_vectors = set(vectors.scan(cube).ids)
        missing_vectors += [i for i in ids if i not in in_vectors]
    sample = random.Random(3).sample(sorted(load.acked), min(30, len(load.acked)))
    unfound = []
    with httpx.Client(base_url=search_url, timeout=60) as http:
        for memory_id in sample:
            cube, text = load.acked[memory_id]
            response = http.post(
                "/product/search", json={"user_id": cube, "query": text, "top_k": 10}
            )
            hits = response.json()["data"]["text_mem"] if response.is_success else []
            if memory_id not in {m["id"] for bucket in hits for m in bucket["memories"]}:
                unfound.append(memory_id)

    recorded = {t.task_id: t for t in store.get(sorted(load.tasks))}
    lost = sorted(t for t in load.tasks if t not in recorded)
    unfinished = sorted(t for t, task in recorded.items() if task.state != "completed")
    runs_log = data_dir / "runs.log"
    runs = Counter(runs_log.read_text().split()) if runs_log.exists() else Counter()
    applied = Counter(
        line.split()[0]
        for log in data_dir.glob("applied-*.log")
        for line in log.read_text().splitlines()
    )
    # A task may run again only when its actor died while running it: each run was an attempt.
    over_run = sorted(t for t, n in runs.items() if t in recorded and n > recorded[t].attempts)
    return {
        "drained_s": drained_s,
        "adds_missing_in_graph": len(missing_graph),
        "adds_missing_in_vectors": len(missing_vectors),
        "searched_by_text": len(sample),
        "not_found_by_text": len(unfound),
        "tasks_lost": len(lost),
        "tasks_unfinished": len(unfinished),
        "tasks_never_applied": sum(1 for t in load.tasks if applied[t] == 0),
        "tasks_applied_twice": sum(1 for t in load.tasks if applied[t] > 1),
        "tasks_run_beyond_attempts": len(over_run),
        "tasks_run_again": sum(1 for t in load.tasks if runs[t] > 1),
        "tasks_with_attempts_gt_1": sum(1 for t in recorded.values() if t.attempts > 1),
        "examples": {
            "missing_in_graph": missing_graph[:5],
            "missing_in_vectors": missing_vectors[:5],
            "not_found_by_text": unfound[:5],
            "tasks_lost": lost[:5],
            "tasks_unfinished": [(t, recorded[t].state, recorded[t].error) for t in unfinished][:5],
            "over_run": over_run[:5],
        },
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    connect_or_start_ray(None, log_to_driver=False, namespace="memos-node-loss")
    wait_nodes(3)
    profile = yaml.safe_load(PROFILE.read_text())
    [app] = profile["applications"]
    overrides = deep_merge(app["args"]["config"], spec["overrides"])
    proxies: dict[str, int] = spec["proxies"]
    urls = {node: f"http://127.0.0.1:{port}" for node, port in proxies.items()}
    report: dict[str, Any] = {}
    began = time.monotonic()
    serve.start(
        proxy_location=profile["proxy_location"],
        http_options={"host": "127.0.0.1", "port": proxies["node_head"]},
    )
    serve.run(build_memos_app({"config": overrides}), name=app["name"], route_prefix="/")
    for url in urls.values():
        wait_ready(url, timeout_s=240)
    report["deploy_s"] = round(time.monotonic() - began, 1)

    # Every load user's cube gets its scheduler actor through one worker's proxy (Ray places
    # it on the caller's node), so both workers run some.
    users = [f"nl-u{i}" for i in range(spec["workers"])]
    for i, user in enumerate(users):
        via = urls["node_a" if i % 2 == 0 else "node_b"]
        body = {"user_id": user, "async_mode": "async", "messages": f"{user} warms up."}
        httpx.post(f"{via}/product/add", json=body, timeout=120).raise_for_status()
    table = settled()
    hosted = Counter(
        a["node"]
        for a in table.values()
        if a["state"] == "ALIVE" and any(cls in a["class"] for cls in APP_ACTORS)
    )
    victim = max(("node_a", "node_b"), key=lambda node: hosted[node])
    survivor = "node_b" if victim == "node_a" else "node_a"
    report["victim"], report["hosted_before"] = victim, dict(hosted)

    # Half the load through the head's proxy, half through the survivor's.
    via = {user: urls["node_head" if i % 2 == 0 else survivor] for i, user in enumerate(users)}
    outcome = run_load(spec, via, victim)
    report.update(outcome["figures"])
    report["actors_before"] = list(outcome["actors_before"].values())
    report["actors_after"] = list(actors().values())
    config = load_config(overrides)
    report.update(check(config, outcome["load"], Path(spec["data_dir"]), urls["node_head"], 300))
    print("REPORT " + json.dumps(report), flush=True)
    # Every node's logs (one temp dir on this machine) outlive the cluster, for a post-mortem.
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    shutil.copytree(logs, Path(spec["workdir"]) / "ray-logs", dirs_exist_ok=True)


if __name__ == "__main__":
    main()
