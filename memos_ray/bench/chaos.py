"""Chaos benchmark: a mixed load while the service's parts are killed one at a time.

The load (sync adds, async adds with their scheduler tasks, searches, deletes) runs from
threads in this process; a killer takes down, in turn, the graph server, the vector-store
actor, the Milvus Lite server, an embedder replica, the ingress replica and a cube's
scheduler actor, each by SIGKILL of its process (or `ray.kill` for actors Ray restarts),
and waits until searches answer again. Afterwards the stores are read directly:

- every add answered 200 is in the graph, the vectors and the keyword index (the vector
  payloads the per-cube BM25 is built from), and searchable by its text;
- every delete answered 200 left no trace in the graph or the vectors;
- every task an async add answered with ran to the end (not lost, not left pending; a task
  whose actor was killed mid-run runs again, which its idempotent handler makes harmless,
  and is counted);
- no answer was a 500 (a part that is down must say 503 or fail the connection).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import ray
import yaml

from memos_ray.bench.common import add_service_args, machine, service_url, write_report
from memos_ray.config import MemosConfig
from memos_ray.embedded.falkordb_actor import actor_suffix
from memos_ray.runtime.compose import build_ray_stores, build_tenancy_store
from memos_ray.scheduler.actor import scheduler_name
from memos_ray.stores.sql.tasks import SQLTaskStore

COMPONENTS = ("graph", "vector", "milvus", "embedder", "ingress", "scheduler")


@dataclass
class Outcome:
    """What the load saw, kept under one lock by the worker threads."""

    acked: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (cube, text)
    deleted: dict[str, str] = field(default_factory=dict)  # id -> cube
    # Deletes that got no answer (the ingress died mid-request): done or not, unknowable.
    unanswered_deletes: dict[str, str] = field(default_factory=dict)  # id -> cube
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> cube
    answers: Counter[str] = field(default_factory=Counter)  # "op status" -> count
    server_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, op: str, status: int | str) -> None:
        with self.lock:
            self.answers[f"{op} {status}"] += 1


@dataclass
class Kill:
    component: str
    at_s: float
    target: str
    recovered_s: float | None = None


class Load:
    """Closed-loop workers, each on its own cube, mixing the four operations."""

    def __init__(self, url: str, users: Sequence[str], seed: int, async_adds: bool) -> None:
        self.url = url
        self.users = list(users)
        self.async_adds = async_adds
        self.outcome = Outcome()
        self.stop = threading.Event()
        self._seed = seed
        self._counter = 0
        self._counter_lock = threading.Lock()

    def _next(self) -> int:
        with self._counter_lock:
            self._counter += 1
            return self._counter

    def worker(self, index: int) -> None:
        rng = random.Random(self._seed + index)
        user = self.users[index % len(self.users)]
        mine: list[str] = []
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.is_set():
                roll = rng.random()
                if roll < 0.4:
                    self._add(http, user, mine, asynchronous=False)
                elif roll < 0.45:
                    self._add(http, user, mine, asynchronous=self.async_adds)
                elif roll < 0.9:
                    self._search(http, user, rng)
                elif mine:
                    self._delete(http, user, mine.pop(rng.randrange(len(mine))))

    def _post(self, http: httpx.Client, op: str, body: dict[str, Any]) -> dict[str, Any] | None:
        try:
            response = http.post(f"/product/{op}", json=body)
        except httpx.HTTPError as exc:
            self.outcome.count(op, type(exc).__name__)
            time.sleep(0.2)
            return None
        self.outcome.count(op, response.status_code)
        if response.status_code >= 500 and response.status_code != 503:
            with self.outcome.lock:
                self.outcome.server_errors.append(
                    f"{op} {response.status_code} {response.text[:200]}"
                )
        if response.status_code != 200:
            time.sleep(0.2)
            return None
        return response.json()

    def _add(self, http: httpx.Client, user: str, mine: list[str], asynchronous: bool) -> None:
        n = self._next()
        text = f"Chaos note {n}: {user} filed report {n * 7919 % 100003} about item {n}."
        body = {
            "user_id": user,
            "async_mode": "async" if asynchronous else "sync",
            "mode": "fine" if asynchronous else "fast",
            "messages": [{"role": "user", "content": text}],
        }
        answer = self._post(http, "add", body)
        if answer is None:
            return
        with self.outcome.lock:
            for entry in answer.get("data") or []:
                self.outcome.acked[entry["memory_id"]] = (entry["cube_id"], entry["memory"])
                mine.append(entry["memory_id"])
                if entry.get("task_id"):
                    self.outcome.tasks[entry["task_id"]] = entry["cube_id"]

    def _search(self, http: httpx.Client, user: str, rng: random.Random) -> None:
        self._post(
            http,
            "search",
            {"user_id": user, "query": f"report about item {rng.randrange(500)}", "top_k": 5},
        )

    def _delete(self, http: httpx.Client, user: str, memory_id: str) -> None:
        answer = self._post(http, "delete_memory", {"user_id": user, "memory_ids": [memory_id]})
        with self.outcome.lock:
            cube = self.outcome.acked[memory_id][0]
            if answer is not None:
                self.outcome.deleted[memory_id] = cube
            else:
                self.outcome.unanswered_deletes[memory_id] = cube


# -- killing -----------------------------------------------------------------------------


def _actor_pid(name: str, namespace: str) -> int:

    pid = cast(
        "int | None", ray.get(ray.get_actor(name, namespace=namespace).pid.remote(), timeout=30)
    )
    if pid is None:
        raise RuntimeError(f"{name} has no server process")
    return int(pid)


def _replica(deployment: str) -> tuple[str, Any]:
    """A live Serve replica of the deployment (named actors, so no dashboard is needed)."""

    for entry in ray.util.list_named_actors(all_namespaces=True):
        name, namespace = entry["name"], entry["namespace"]
        if name.startswith("SERVE_REPLICA::") and f"#{deployment}#" in name:
            return name, ray.get_actor(name, namespace=namespace)
    raise RuntimeError(f"no live replica of {deployment}")


def kill(component: str, config: MemosConfig, cubes: Sequence[str]) -> str:
    """Take one part down the way a crash would; returns what was killed."""

    suffix = actor_suffix(config)
    namespace = config.serving.namespace
    if component in ("graph", "milvus"):
        actor = "memos-falkordb" if component == "graph" else "memos-milvus"
        pid = _actor_pid(f"{actor}-{suffix}", namespace)
        os.kill(pid, signal.SIGKILL)
        return f"{actor} server pid {pid}"
    if component == "vector":
        name = f"memos-vector-{suffix}"
        ray.kill(ray.get_actor(name, namespace=namespace), no_restart=False)
        return f"actor {name}"
    if component == "scheduler":
        # The first cube whose scheduler actor is alive (busiest first is not knowable here).
        for cube in cubes:
            try:
                scheduler = ray.get_actor(scheduler_name(config, cube), namespace=namespace)
            except ValueError:
                continue
            ray.kill(scheduler, no_restart=False)
            return f"scheduler actor of cube {cube}"
        raise RuntimeError("no cube has a scheduler actor yet (no async add was answered)")
    # A replica killed outright: Serve's controller sees it die and starts another.
    name, replica = _replica("EmbedderDeployment" if component == "embedder" else "MemosIngress")
    ray.kill(replica, no_restart=True)
    return f"replica {name}"


def wait_recovered(url: str, user: str, timeout_s: float = 120.0) -> float | None:
    """Seconds until a search answers 200 again (None if it never did)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            response = httpx.post(
                f"{url}/product/search", json={"user_id": user, "query": "probe"}, timeout=10
            )
            if response.status_code == 200:
                return round(time.monotonic() - started, 2)
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    return None


# -- checking ----------------------------------------------------------------------------


def _wait_tasks(config: MemosConfig, timeout_s: float) -> Any:

    store = SQLTaskStore(build_tenancy_store(config).engine)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and store.cubes_with_pending():
        time.sleep(1.0)
    return store


def verify(
    url: str, config: MemosConfig, outcome: Outcome, task_timeout_s: float
) -> dict[str, Any]:

    graph, vectors = build_ray_stores(config)
    live: dict[str, list[str]] = {}
    for memory_id, (cube, _) in outcome.acked.items():
        if memory_id not in outcome.deleted and memory_id not in outcome.unanswered_deletes:
            live.setdefault(cube, []).append(memory_id)
    missing_graph: list[str] = []
    missing_vectors: list[str] = []
    missing_keywords: list[str] = []
    orphans: list[str] = []
    for cube, ids in live.items():
        in_graph = {item.id for item in graph.get_nodes([cube], ids)}
        missing_graph += [i for i in ids if i not in in_graph]
        scan = vectors.scan(cube)
        texts = {
            i: str(p.get("memory") or p.get("text") or "")
            for i, p in zip(scan.ids, scan.payloads, strict=True)
        }
        missing_vectors += [i for i in ids if i not in texts]
        missing_keywords += [i for i in ids if i in texts and not texts[i]]
        graph_ids = set(graph.find_ids(cube))
        orphans += sorted(set(scan.ids) - graph_ids)
    applied = sum(
        1 for i, cube in outcome.unanswered_deletes.items() if not graph.get_nodes([cube], [i])
    )
    ghosts: list[str] = []
    for memory_id, cube in outcome.deleted.items():
        if graph.get_nodes([cube], [memory_id]) or vectors.retrieve(cube, [memory_id]):
            ghosts.append(memory_id)
    # Searchable by their own text: a sample through HTTP, as a user would find them.
    rng = random.Random(5)
    sample = rng.sample(
        sorted(i for ids in live.values() for i in ids), min(40, sum(map(len, live.values())))
    )
    unfound = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for memory_id in sample:
            cube, text = outcome.acked[memory_id]
            try:
                response = http.post(
                    "/product/search", json={"user_id": cube, "query": text, "top_k": 10}
                )
                buckets = response.json()["data"]["text_mem"] if response.is_success else []
            except httpx.HTTPError:
                buckets = []
            found = {m["id"] for bucket in buckets for m in bucket["memories"]}
            if memory_id not in found:
                unfound.append(memory_id)
    store = _wait_tasks(config, task_timeout_s)
    recorded = {t.task_id: t for t in store.get(sorted(outcome.tasks))}
    lost = sorted(t for t in outcome.tasks if t not in recorded)
    unfinished = sorted(
        t for t, task in recorded.items() if task.state not in ("completed", "failed")
    )
    failed = {t: task.error for t, task in recorded.items() if task.state == "failed"}
    return {
        "acknowledged_adds": len(outcome.acked),
        "acknowledged_deletes": len(outcome.deleted),
        # Their memories may be there or not: checked neither as lost nor as ghosts.
        "unanswered_deletes": len(outcome.unanswered_deletes),
        "unanswered_deletes_applied": applied,
        "lost_in_graph": len(missing_graph),
        "lost_in_vectors": len(missing_vectors),
        "lost_in_keyword_index": len(missing_keywords),
        "orphan_vectors": len(orphans),
        "ghosts_after_delete": len(ghosts),
        "searched_by_text": len(sample),
        "not_found_by_text": len(unfound),
        "tasks_acknowledged": len(outcome.tasks),
        "tasks_lost": len(lost),
        "tasks_unfinished": len(unfinished),
        "tasks_failed": len(failed),
        "tasks_rerun_after_a_kill": sum(1 for t in recorded.values() if t.attempts > 1),
        "examples": {
            "lost_in_graph": missing_graph[:5],
            "lost_in_vectors": missing_vectors[:5],
            "ghosts": ghosts[:5],
            "tasks_lost": lost[:5],
            "tasks_unfinished": unfinished[:5],
            "tasks_failed": dict(list(failed.items())[:3]),
            "not_found_by_text": unfound[:5],
        },
    }


def run_chaos(
    url: str,
    config: MemosConfig,
    *,
    components: Sequence[str] = COMPONENTS,
    workers: int = 4,
    warmup_s: float = 10.0,
    between_s: float = 15.0,
    tail_s: float = 10.0,
    seed: int = 1,
    task_timeout_s: float = 300.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Load, kill each component in turn (recovery awaited), stop, then check the stores."""
    users = [f"chaos-{i}" for i in range(workers)]
    async_adds = config.llm.backend != "none"
    load = Load(url, users, seed, async_adds)
    threads = [threading.Thread(target=load.worker, args=(i,), daemon=True) for i in range(workers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    kills: list[Kill] = []
    try:
        time.sleep(warmup_s)
        for component in components:
            at = round(time.monotonic() - started, 1)
            target = kill(component, config, users)
            record = Kill(component, at, target)
            record.recovered_s = wait_recovered(url, users[0])
            kills.append(record)
            back = record.recovered_s
            log(f"  killed {component} ({target}) at {at} s; searches back after {back} s")
            time.sleep(between_s)
        time.sleep(tail_s)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=120)
    load_s = time.monotonic() - started
    log(f"load stopped after {load_s:.0f} s; checking the stores ...")
    checks = verify(url, config, load.outcome, task_timeout_s)
    answers = dict(sorted(load.outcome.answers.items()))
    errors = sum(n for k, n in answers.items() if not k.endswith(" 200"))
    total = sum(answers.values())
    return {
        "bench": "chaos",
        "load_seconds": round(load_s, 1),
        "workers": workers,
        "kills": [vars(k) for k in kills],
        "requests": total,
        "answers": answers,
        "error_rate": round(errors / total, 4) if total else None,
        "server_errors_500": len(load.outcome.server_errors),
        "server_error_examples": load.outcome.server_errors[:5],
        **checks,
    }


def failures(figures: dict[str, Any]) -> list[str]:
    """The properties that did not hold (empty when the run is clean)."""
    keys = (
        "lost_in_graph",
        "lost_in_vectors",
        "lost_in_keyword_index",
        "orphan_vectors",
        "ghosts_after_delete",
        "not_found_by_text",
        "tasks_lost",
        "tasks_unfinished",
        "server_errors_500",
    )
    bad = [f"{k}={figures[k]}" for k in keys if figures.get(k)]
    bad += [
        f"{k['component']} never recovered" for k in figures["kills"] if k["recovered_s"] is None
    ]
    return bad


def cmd_chaos(args: argparse.Namespace) -> int:

    components = [c for c in args.components.split(",") if c]
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise SystemExit(
            f"memos-ray bench chaos: unknown components {unknown}; known: {COMPONENTS}"
        )
    # A real chat model, kept short: extraction fails fast and the window is stored raw,
    # which still runs each async add's task to the end (what is checked here).
    args.mode, args.llm_url, args.vllm = ("fine" if args.llm else "fast"), None, False
    extra: dict[str, Any] = {
        "fine": {"max_tokens": 16, "max_attempts": 1},
        "scheduler": {"retry_backoff_s": 0.5},
    }
    if args.config:
        extra = _merged(extra, yaml.safe_load(Path(args.config).read_text()) or {})
    with service_url(args, extra) as (url, config):
        if config is None:
            raise SystemExit(
                "memos-ray bench chaos starts its own service (no --url): it kills its parts"
            )
        figures = run_chaos(
            url,
            config,
            components=components,
            workers=args.workers,
            warmup_s=args.warmup,
            between_s=args.between,
            tail_s=args.tail,
        )
    figures["machine"] = machine()
    write_report(figures, Path(args.out))
    bad = failures(figures)
    print("chaos: " + ("all properties held" if not bad else "FAILED: " + ", ".join(bad)))
    return 1 if bad else 0


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def add_chaos_parser(kinds: Any) -> None:

    p = kinds.add_parser("chaos", help="mixed load while each part of the service is killed")
    p.add_argument("--components", default=",".join(COMPONENTS), help="what to kill, in order")
    p.add_argument("--workers", type=int, default=4, help="load threads (one cube each)")
    p.add_argument(
        "--warmup", type=float, default=15.0, help="seconds of load before the first kill"
    )
    p.add_argument(
        "--between", type=float, default=20.0, help="seconds of load after each recovery"
    )
    p.add_argument("--tail", type=float, default=15.0, help="seconds of load after the last kill")
    p.add_argument(
        "--no-llm",
        dest="llm",
        action="store_false",
        help="no chat model: async adds are fast and no scheduler tasks run",
    )
    p.add_argument("--config", help="YAML overriding parts of the started service's config")
    p.add_argument("--out", default="bench-results/chaos.json")
    add_service_args(p)
    p.set_defaults(func=cmd_chaos)
