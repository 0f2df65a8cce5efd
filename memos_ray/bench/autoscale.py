"""`memos-ray bench autoscale`: a load ramp against a service whose API and embedder
deployments autoscale, with the replica counts sampled as it runs.

The ramp goes 1 -> 32 concurrent clients and back (closed loop: each client sends its next
request when the last one answered; one in `--add-every` requests is an add, the rest are
searches of a seeded cube). Each step reports its throughput, p50 / p99 and the replicas of
each deployment at its end; a sampler records the replicas every second for the whole run,
including the idle tail where Serve scales back down. On a machine with few cores the
interesting figure is where added replicas stop adding throughput: the step from which a
step with more replicas is no faster.
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from memos_ray.bench.common import add_service_args, machine, service_url, write_report
from memos_ray.bench.load import LeanPoster, fill_cube, generate_queries, generate_windows
from memos_ray.bench.load import percentiles as latency_percentiles

DEPLOYMENTS = ("MemosIngress", "EmbedderDeployment")
RAMP = (1, 2, 4, 8, 16, 32, 16, 8, 4, 2, 1)


def scaling(max_replicas: int, target: float, delays: tuple[float, float]) -> dict[str, Any]:
    """Serve autoscaling that reacts within a bench step (Serve's defaults wait 30 s up and
    10 minutes down, and average the load over 30 s)."""
    up, down = delays
    return {
        "min_replicas": 1,
        "max_replicas": max_replicas,
        "target_ongoing_requests": target,
        "upscale_delay_s": up,
        "downscale_delay_s": down,
        "metrics_interval_s": 1.0,
        "look_back_period_s": 4.0,
    }


def replica_counts(app: str) -> dict[str, int]:
    """Running replicas per deployment of the app, from Serve's controller."""
    from ray import serve

    status = serve.status().applications.get(app)
    counts = dict.fromkeys(DEPLOYMENTS, 0)
    if status is None:
        return counts
    for name, deployment in status.deployments.items():
        if name in counts:
            states = {str(getattr(k, "value", k)): v for k, v in deployment.replica_states.items()}
            counts[name] = int(states.get("RUNNING", 0))
    return counts


class Sampler:
    """Replica counts every `period_s`, in a thread, until stopped."""

    def __init__(self, app: str, period_s: float = 1.0) -> None:
        self.app = app
        self.period_s = period_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                counts = replica_counts(self.app)
            except Exception:  # the controller is busy: skip a sample, not the bench
                counts = {}
            self.samples.append({"t": round(time.monotonic() - self._started, 1), **counts})
            self._stop.wait(self.period_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def now(self) -> float:
        return round(time.monotonic() - self._started, 1)


def run_step(call: Callable[[int], None], concurrency: int, seconds: float) -> dict[str, Any]:
    """`concurrency` closed-loop clients for `seconds`: throughput, latency, failures."""
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    counter = itertools.count()

    def client() -> None:
        nonlocal failures
        while time.monotonic() < deadline:
            n = next(counter)
            started = time.perf_counter()
            try:
                call(n)
            except Exception:
                with lock:
                    failures += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - began
    figures: dict[str, Any] = {
        "concurrency": concurrency,
        "requests": len(latencies),
        "failures": failures,
        "rps": round(len(latencies) / wall, 1),
    }
    if latencies:
        figures.update(latency_percentiles(latencies))
    return figures


def plateau(steps: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The first step of the rising ramp whose API replicas exceed the previous step's while
    its throughput is within 5 % of the best seen so far: replicas past that add nothing."""
    rising = list(itertools.takewhile(lambda s: s["phase"] == "up", steps))
    best = 0.0
    for before, step in itertools.pairwise(rising):
        best = max(best, before["rps"])
        more = step["replicas"]["MemosIngress"] > before["replicas"]["MemosIngress"]
        if more and step["rps"] <= best * 1.05:
            return {
                "concurrency": step["concurrency"],
                "replicas": step["replicas"],
                "rps": step["rps"],
                "best_rps_before": best,
            }
    return None


def cmd_autoscale(args: argparse.Namespace) -> int:
    app = "memos"
    extra = {
        "serving": {
            "ingress_num_cpus": 0.25,
            "ingress_autoscaling": scaling(
                args.max_api, args.api_target, (args.upscale_s, args.downscale_s)
            ),
        },
        "embedder": {
            "num_cpus": 0.25,
            # Queries embedded by the embedder replicas too, so searches load them as well.
            "local_queries": False,
            "autoscaling": scaling(
                args.max_embedders, args.embedder_target, (args.upscale_s, args.downscale_s)
            ),
        },
    }
    if args.url:
        raise SystemExit("memos-ray bench autoscale starts its own service (no --url)")
    ramp = [int(c) for c in args.ramp.split(",")]
    figures: dict[str, Any] = {"bench": "autoscale", "machine": machine(), "ramp": ramp}
    with service_url(args, extra) as (url, _config):
        with httpx.Client(base_url=url, timeout=300) as http:
            stored, _ = fill_cube(http, "scaler", "scaler", generate_windows(args.memories))
        figures["memories"] = stored
        queries = generate_queries(500)
        windows = generate_windows(2000, seed=23)
        poster = LeanPoster(url)

        def call(n: int) -> None:
            if args.add_every and n % args.add_every == 0:
                body = {
                    "user_id": "scaler",
                    "writable_cube_ids": ["scaler"],
                    "messages": windows[n % len(windows)],
                    "async_mode": "sync",
                }
                poster.post("/product/add", body)
            else:
                query = queries[n % len(queries)]
                poster.post("/product/search", {"user_id": "scaler", "query": query})

        steps: list[dict[str, Any]] = []
        peak = ramp.index(max(ramp))
        with Sampler(app) as sampler:
            for i, concurrency in enumerate(ramp):
                began = sampler.now()
                step = run_step(call, concurrency, args.step_s)
                step.update(
                    phase="up" if i <= peak else "down",
                    began_s=began,
                    replicas=replica_counts(app),
                )
                steps.append(step)
                print(json.dumps(step), flush=True)
            # Idle: Serve scales back to its minimum after downscale_delay_s.
            idle_began = sampler.now()
            deadline = time.monotonic() + args.idle_s
            while time.monotonic() < deadline:
                if all(v <= 1 for v in replica_counts(app).values()):
                    break
                time.sleep(1)
            figures["back_to_min_after_idle_s"] = (
                round(sampler.now() - idle_began, 1)
                if all(v <= 1 for v in replica_counts(app).values())
                else None
            )
        figures["steps"] = steps
        figures["replicas_over_time"] = sampler.samples
        figures["peak_replicas"] = {
            d: max((s.get(d, 0) for s in sampler.samples), default=0) for d in DEPLOYMENTS
        }
        figures["plateau"] = plateau(steps)
    _print_table(figures)
    write_report(figures, Path(args.out))
    return 0


def _print_table(figures: dict[str, Any]) -> None:
    print("\nconcurrency  rps     p50 ms  p99 ms  failures  API  embedders")
    for s in figures["steps"]:
        r = s["replicas"]
        print(
            f"{s['concurrency']:>11}  {s['rps']:>6}  {s.get('p50_ms', '-'):>6}  "
            f"{s.get('p99_ms', '-'):>6}  {s['failures']:>8}  {r['MemosIngress']:>3}  "
            f"{r['EmbedderDeployment']:>9}"
        )
    print(f"peak replicas: {figures['peak_replicas']}")
    print(f"back to one replica each {figures['back_to_min_after_idle_s']} s after the ramp")
    print(f"where added API replicas stop helping: {figures['plateau']}")


def add_autoscale_parser(kinds: Any) -> None:
    p = kinds.add_parser(
        "autoscale", help="a 1 -> 32 -> 1 client ramp against autoscaled API and embedders"
    )
    p.add_argument("--ramp", default=",".join(map(str, RAMP)), help="clients per step")
    p.add_argument("--step-s", type=float, default=20.0, help="seconds per step")
    p.add_argument("--idle-s", type=float, default=60.0, help="longest wait to scale down")
    p.add_argument("--memories", type=int, default=2000, help="windows in the searched cube")
    p.add_argument("--add-every", type=int, default=5, help="one add in N requests (0: none)")
    p.add_argument("--max-api", type=int, default=4, help="API replicas at most")
    p.add_argument("--max-embedders", type=int, default=3, help="embedder replicas at most")
    p.add_argument("--api-target", type=float, default=2.0, help="requests per API replica")
    p.add_argument("--embedder-target", type=float, default=2.0, help="per embedder replica")
    p.add_argument("--upscale-s", type=float, default=3.0, help="Serve's upscale_delay_s")
    p.add_argument("--downscale-s", type=float, default=10.0, help="Serve's downscale_delay_s")
    p.add_argument("--out", default="bench-results/autoscale.json")
    add_service_args(p)
    p.set_defaults(func=cmd_autoscale)
