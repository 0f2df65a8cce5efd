"""`memos-ray bench ...`: each benchmark starts its own service unless given `--url`."""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from memos_ray import metrics
from memos_ray.bench.activation import add_activation_parser
from memos_ray.bench.async_add import add_async_add_parser
from memos_ray.bench.autoscale import add_autoscale_parser
from memos_ray.bench.chaos import add_chaos_parser
from memos_ray.bench.common import add_service_args, machine, service_url, write_report
from memos_ray.bench.cpu import cpu_per_request
from memos_ray.bench.cpu import take as take_cpu
from memos_ray.bench.cube_archive import add_cube_archive_parser
from memos_ray.bench.ingest_job import add_ingest_job_parser
from memos_ray.bench.load import (
    CacheMeter,
    LeanPoster,
    ZipfSampler,
    chat_turns,
    cost_curve,
    fill_cube,
    fill_cubes,
    generate_queries,
    generate_windows,
    percentiles,
    run_load,
)
from memos_ray.bench.offline import run_offline
from memos_ray.bench.retrieval import run_retrieval_bench
from memos_ray.bench.soak import add_graph_soak_parser
from memos_ray.client import MemosClient
from memos_ray.config import MemosConfig, ReaderConfig, SearchConfig
from memos_ray.core.reader import Turn, fast_windows
from memos_ray.core.threads import one_blas_thread
from memos_ray.models.runtimes import configured_embedder
from memos_ray.runtime.compose import Models, build_query_embedder, build_ray_stores, build_services
from memos_ray.services.ingest.datasets import locomo_cubes, longmemeval_cubes
from memos_ray.services.memory import SearchOptions


def cmd_retrieval(args: argparse.Namespace) -> int:

    loader = locomo_cubes if args.bench == "locomo" else longmemeval_cubes
    cubes = list(loader(Path(args.data)))
    if args.limit:
        cubes = cubes[: args.limit]
    with service_url(args) as (url, _), MemosClient(url, args.api_key, timeout=300) as client:
        extra = {"dedup": args.dedup} if args.dedup else None
        figures = run_retrieval_bench(
            args.bench,
            cubes,
            client,
            Path(args.out),
            top_k=args.top_k,
            extra=extra,
            resume=args.resume,
            mode=args.mode,
        )
    figures["machine"] = machine()
    write_report(figures, Path(args.figures or f"{args.out}.figures.json"))
    print(f"score with: python3 score_retrieval.py {args.data} {args.out}")
    return 0


def cmd_offline(args: argparse.Namespace) -> int:

    loader = locomo_cubes if args.dataset == "locomo" else longmemeval_cubes
    cubes = list(loader(Path(args.data)))
    if args.limit:
        cubes = cubes[: args.limit]
    figures = run_offline(args.dataset, cubes, Path(args.out), ranker=args.ranker)
    figures["machine"] = machine()
    write_report(figures, Path(f"{args.out}.figures.json"))
    return 0


def _memory_texts(windows: list[list[dict[str, str]]], window_messages: int) -> list[str]:
    """The exact texts the server embeds for these windows (one per memory it stores)."""

    return [
        "\n".join(str(s.content) for s in w.sources)
        for window in windows
        for w in fast_windows(
            [Turn(role=m["role"], content=m["content"]) for m in window], window_messages
        )
    ]


def _windows_for(memories: int, config: MemosConfig | None) -> int:
    """Generated windows hold 4 turns; how many give `memories` memories on this reader."""

    per_memory = (config.reader if config is not None else ReaderConfig()).window_messages
    per_window = -(-4 // min(per_memory, 4))
    return -(-memories // per_window)


def _in_process_search(config: MemosConfig):
    """The service's search without HTTP or Serve, on the same stores (for the ratio)."""

    one_blas_thread()  # as in the service's replicas
    graph, vectors = build_ray_stores(config)
    embedder = build_query_embedder(config)
    assert embedder is not None
    service = build_services(config, graph, vectors, Models(embedder), in_ray=True).memory

    def search(cube_id: str, query: str) -> Any:
        return service.search(query, {cube_id: None}, SearchOptions(top_k=10))

    return search


# Generous: a 100k-memory cube's first search scans and indexes it, and a bulk add into a big
# cube on a CPU embedder takes a while; a timeout here would end an hour-long fill.
REQUEST_TIMEOUT_S = 600
# Ray's processes push metrics to their node's agent this often (ms) in the service the bench
# starts: the cache hit rate is read from there before and after each level.
REPORT_INTERVAL_ENV = "RAY_metrics_report_interval_ms"
REPORT_INTERVAL_MS = "2000"
CACHE_METRIC = next(iter(metrics.SEARCH_INDEX_CACHE.spec.exported()))
# The many-cubes shape's Zipf draws and the cubes' order by popularity.
ZIPF_SEED = 7
USER = "bench"


def _metrics_url(args: argparse.Namespace, config: MemosConfig | None) -> str | None:
    """--metrics-url, or the Prometheus endpoint of the Ray node the bench started."""
    if args.metrics_url or config is None:
        return args.metrics_url
    import ray

    for node in ray.nodes():
        if node.get("Alive") and node.get("MetricsExportPort"):
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    return None


def repeated(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of the same load (this machine's noise shows in the spread)."""
    if len(runs) == 1:
        return runs[0]
    figures: dict[str, Any] = {}
    for key in ("p50_ms", "p95_ms", "p99_ms", "qps"):
        values = sorted(float(r[key]) for r in runs)
        figures[key] = round(statistics.median(values), 1)
        figures[f"{key}_spread"] = [values[0], values[-1]]
    figures["n"] = sum(int(r["n"]) for r in runs)
    figures["runs"] = runs
    return figures


def _level_batch(items: list[Any], level: int) -> list[Any]:
    """At least 25 requests per worker, so that a level's percentiles mean something."""
    n = max(len(items), 25 * level)
    return (items * (n // len(items) + 1))[:n]


class _Latency:
    """What every shape of the latency bench shares: the service, its cache meter, the
    searches and adds it sends."""

    def __init__(
        self,
        args: argparse.Namespace,
        url: str,
        config: MemosConfig | None,
        http: httpx.Client,
        headers: dict[str, str],
    ) -> None:
        self.args = args
        self.config = config
        self.http = http
        self.levels = [int(c) for c in args.concurrency.split(",")]
        self.queries = generate_queries(args.queries)
        self.poster = LeanPoster(url, headers, timeout=REQUEST_TIMEOUT_S)
        interval_s = float(os.environ.get(REPORT_INTERVAL_ENV, "10000")) / 1000
        self.meter = CacheMeter(_metrics_url(args, config), CACHE_METRIC, interval_s)

    def search(self, cube: str, query: str) -> None:
        body = {"user_id": USER, "readable_cube_ids": [cube], "top_k": 10, "query": query}
        self.poster.post("/product/search", body)

    def add_turn(self, cube: str, turn: dict[str, str]) -> None:
        body = {
            "user_id": USER,
            "writable_cube_ids": [cube],
            "messages": [turn],
            "async_mode": "sync",
        }
        self.poster.post("/product/add", body)

    def measured(self, call: Any, batch: list[Any], level: int) -> dict[str, Any]:
        """run_load's figures, with the index cache's hit rate over the same searches; with
        --repeat N, the median of N runs, each run's figures and the spread (min, max); with
        --cpu, the CPU each process spent per search over all the runs."""
        before = self.meter.read()
        cpu_before = take_cpu() if self.args.cpu else None
        runs = [run_load(call, batch, level) for _ in range(self.args.repeat)]
        cpu_after = take_cpu() if self.args.cpu else None
        figures: dict[str, Any] = repeated(runs)
        cache = CacheMeter.between(before, self.meter.read(), len(batch) * len(runs))
        if cache is not None:
            figures["index_cache"] = cache
        cpu = cpu_per_request(cpu_before, cpu_after, len(batch) * len(runs))
        if cpu is not None:
            figures["cpu"] = cpu
        return figures

    def one_cube(self, size: int, in_process: Any) -> dict[str, Any]:
        cube = f"latency-{size}"
        self.http.post("/product/create_cube", json={"owner_id": USER, "cube_id": cube})
        windows = generate_windows(_windows_for(size, self.config))
        stored, seconds = fill_cube(self.http, USER, cube, windows)
        over_http = functools.partial(self.search, cube)
        for query in self.queries[:20]:  # warm-up
            over_http(query)
        if in_process is not None:
            in_process(cube, self.queries[0])  # its own index, built outside the timings
        row: dict[str, Any] = {"memories": stored, "fill_seconds": round(seconds, 1)}
        for level in self.levels:
            batch = _level_batch(self.queries, level)
            row[f"http_c{level}"] = self.measured(over_http, batch, level)
            if in_process is not None:
                row[f"inproc_c{level}"] = run_load(
                    functools.partial(in_process, cube), batch, level
                )
                row[f"http_over_inproc_p50_c{level}"] = round(
                    row[f"http_c{level}"]["p50_ms"] / row[f"inproc_c{level}"]["p50_ms"], 2
                )
            print(f"  {size} memories, concurrency {level}: {json.dumps(row[f'http_c{level}'])}")
        if self.args.chat:
            readonly = row.get("http_c1", {}).get("p50_ms")
            row["chat"] = self.chat(cube, readonly)
        return row

    def many_cubes(self, size: int) -> dict[str, Any]:
        """Searches spread over many cubes by a Zipf law: what a bounded per-process index
        cache meets in a deployment with a long tail of users."""
        n, s = self.args.cubes, self.args.zipf
        names = [f"latency-{size}-of-{n}-{i:05d}" for i in range(n)]
        print(f"filling {n} cubes of {size} memories ...", flush=True)
        stored, seconds = fill_cubes(self.http, USER, names, _windows_for(size, self.config))
        by_rank = names[:]
        random.Random(ZIPF_SEED).shuffle(by_rank)
        sampler = ZipfSampler(n, s, seed=ZIPF_SEED)

        def drawn(count: int) -> list[tuple[str, str]]:
            ranks = sampler.draw(count)
            return [(by_rank[r], self.queries[i % len(self.queries)]) for i, r in enumerate(ranks)]

        def over_http(pair: tuple[str, str]) -> None:
            self.search(*pair)

        search = self.config.search if self.config else SearchConfig()
        max_cubes = search.index_max_cubes
        # Fill the cache first: a deployment's steady state, not a cold start.
        for pair in drawn(max(20, min(2 * max_cubes, n))):
            over_http(pair)
        row: dict[str, Any] = {
            "cubes": n,
            "zipf": s,
            "memories_per_cube": round(stored / n),
            "memories": stored,
            "fill_seconds": round(seconds, 1),
            "index_max_cubes": max_cubes if self.config else None,
            "index_cache_mb": search.index_cache_mb if self.config else None,
            "rank1_share": round(sampler.share(0), 4),
        }
        for level in self.levels:
            batch = drawn(len(_level_batch(self.queries, level)))
            figures = self.measured(over_http, batch, level)
            figures["cubes_searched"] = len({cube for cube, _ in batch})
            row[f"http_c{level}"] = figures
            print(f"  {n} cubes of {size}, concurrency {level}: {json.dumps(figures)}")
        if self.args.chat:
            row["chat"] = self.chat(by_rank[0], None)
        return row

    def chat(self, cube: str, readonly_p50: float | None) -> dict[str, Any]:
        """A conversation under way: each search follows a write to its cube, so the cached
        index is stale every time; the project's target is at most twice a read-only search."""
        if readonly_p50 is None:
            baseline = run_load(functools.partial(self.search, cube), self.queries, 1)
            readonly_p50 = baseline["p50_ms"]
        adds: list[float] = []
        searches: list[float] = []
        before = self.meter.read()
        for i, turn in enumerate(chat_turns(self.args.chat)):
            started = time.perf_counter()
            self.add_turn(cube, turn)
            added = time.perf_counter()
            self.search(cube, self.queries[i % len(self.queries)])
            adds.append(added - started)
            searches.append(time.perf_counter() - added)
        found = percentiles(searches)
        row: dict[str, Any] = {
            "cube": cube,
            "turns": len(searches),
            "search": found,
            "add_p50_ms": percentiles(adds)["p50_ms"],
            "readonly_c1_p50_ms": readonly_p50,
            "search_over_readonly_p50": round(found["p50_ms"] / readonly_p50, 2),
        }
        cache = CacheMeter.between(before, self.meter.read(), len(searches))
        if cache is not None:
            row["index_cache"] = cache
        print(
            f"  chat on {cube} ({len(searches)} x add one turn, search): search "
            f"p50 {found['p50_ms']} / p95 {found['p95_ms']} / p99 {found['p99_ms']} ms, "
            f"add p50 {row['add_p50_ms']} ms; read-only c1 p50 {readonly_p50} ms: "
            f"x{row['search_over_readonly_p50']} (target <= 2)",
            flush=True,
        )
        return row


def _cost_curve(rows: dict[str, dict[str, Any]], level: int) -> dict[str, Any]:
    points = [(row["memories"], row[f"http_c{level}"]["p50_ms"]) for row in rows.values()]
    steps = cost_curve(points)
    for step in steps:
        print(
            f"  cost curve (c{level} p50): {step['from']} -> {step['to']} memories "
            f"(x{step['size_ratio']}): {step['p50_ms'][0]} -> {step['p50_ms'][1]} ms "
            f"(x{step['p50_ratio']}, exponent {step.get('exponent')})"
        )
    return {
        "concurrency": level,
        "points": [{"memories": n, "p50_ms": p} for n, p in points],
        "steps": steps,
    }


def cmd_latency(args: argparse.Namespace) -> int:

    sizes = [int(s) for s in args.sizes.split(",")]
    if args.cubes < 1 or (args.cubes > 1 and len(sizes) != 1):
        raise SystemExit("memos-ray bench latency: --cubes N > 1 takes one size in --sizes")
    if not args.url:
        os.environ.setdefault(REPORT_INTERVAL_ENV, REPORT_INTERVAL_MS)
    if args.cpu and take_cpu() is None:
        print("--cpu: this system has no /proc (Linux only): no CPU figures", flush=True)
    figures: dict[str, Any] = {"bench": "latency", "machine": machine(), "sizes": {}}
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with service_url(args) as (url, config):
        levels = [int(c) for c in args.concurrency.split(",")]
        http = httpx.Client(
            base_url=url,
            headers=headers,
            timeout=REQUEST_TIMEOUT_S,
            limits=httpx.Limits(max_connections=max(levels) + 4),
        )
        with http:
            bench = _Latency(args, url, config, http, headers)
            if args.cubes > 1:
                figures["sizes"][str(sizes[0])] = bench.many_cubes(sizes[0])
            else:
                in_process = (
                    _in_process_search(config)
                    if config is not None and not args.no_inproc
                    else None
                )
                for size in sizes:
                    figures["sizes"][str(size)] = bench.one_cube(size, in_process)
    if args.cubes == 1 and len(sizes) > 1:
        figures["cost_curve"] = _cost_curve(figures["sizes"], 1 if 1 in levels else min(levels))
    write_report(figures, Path(args.out))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:

    # deferred: imports torch
    import torch

    reader = ReaderConfig()
    windows = generate_windows(_windows_for(args.memories, None), seed=3)
    texts = _memory_texts(windows, reader.window_messages)
    torch.set_num_threads(os.cpu_count() or 1)
    # The service's own runtime and settings, on every core: the ceiling to compare with.
    cfg = MemosConfig().embedder
    embedder = configured_embedder(cfg, cfg.model, threads=os.cpu_count())
    embedder.embed(texts[:64])
    started = time.perf_counter()
    embedder.embed(texts)
    ceiling = len(texts) / (time.perf_counter() - started)
    del embedder
    print(f"embedder alone: {ceiling:.1f} memories/s", flush=True)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with (
        service_url(args) as (url, _),
        httpx.Client(base_url=url, headers=headers, timeout=300) as http,
    ):
        # A cube of its own per run: against a --url service that ran this bench before, the
        # same memories in the same cube would be recognised as duplicates, not embedded.
        cube = f"ingest-{uuid.uuid4().hex[:8]}"
        http.post("/product/create_cube", json={"owner_id": "bench", "cube_id": cube})
        stored, seconds = fill_cube(
            http, "bench", cube, windows, batch=args.batch, concurrency=args.concurrency
        )
    rate = stored / seconds
    figures = {
        "bench": "ingest",
        "machine": machine(),
        "cube": cube,
        "memories": stored,
        "seconds": round(seconds, 2),
        "api_memories_per_s": round(rate, 1),
        "embedder_memories_per_s": round(ceiling, 1),
        "ratio": round(rate / ceiling, 3),
        "batch": args.batch,
        "concurrency": args.concurrency,
    }
    write_report(figures, Path(args.out))
    return 0


def add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmarks (separate from the tests)")
    kinds = bench.add_subparsers(dest="bench", required=True)
    for name, help_text in (
        ("locomo", "retrieval on a LoCoMo file: one cube per conversation"),
        ("longmemeval", "retrieval on a LongMemEval file: one cube per question"),
    ):
        p = kinds.add_parser(name, help=help_text)
        p.add_argument("data", help="the dataset JSON file")
        p.add_argument("--out", required=True, help="results JSONL (qid, retrieved turn ids)")
        p.add_argument("--figures", help="figures JSON (default: OUT.figures.json)")
        p.add_argument("--top-k", type=int, default=20, help="memories asked per question")
        p.add_argument(
            "--dedup",
            choices=["mmr", "sim", "no"],
            help="search de-duplication (default: the API's default, mmr)",
        )
        p.add_argument("--limit", type=int, help="only the first N cubes")
        p.add_argument(
            "--mode",
            choices=["fast", "fine"],
            default="fast",
            help="add mode; fine extracts with an LLM (SmolLM2 in the service by default, "
            "or --llm-url, --vllm)",
        )
        p.add_argument(
            "--facts-only",
            action="store_true",
            help="fine mode: the distilled facts replace the turns (fine.keep_turns false)",
        )
        p.add_argument("--llm-url", help="fine mode: an OpenAI-compatible base URL (.../v1)")
        p.add_argument("--llm-model", default="SmolLM2-135M-Instruct", help="with --llm-url")
        p.add_argument(
            "--vllm",
            action="store_true",
            help="fine mode: start SmolLM2 on vLLM's CPU build (memos-ray vllm-env)",
        )
        p.add_argument(
            "--resume",
            action="store_true",
            help="keep the answers already in --out and do only the cubes still missing",
        )
        add_service_args(p)
        p.set_defaults(func=cmd_retrieval)

    offline = kinds.add_parser(
        "offline", help="the turn-ranking recipe over a dataset without the service"
    )
    offline.add_argument("dataset", choices=["locomo", "longmemeval"])
    offline.add_argument("data", help="the dataset JSON file")
    offline.add_argument("--out", required=True, help="results JSONL")
    offline.add_argument("--limit", type=int, help="only the first N cubes")
    offline.add_argument(
        "--ranker",
        choices=["recipe", "rrf"],
        default="recipe",
        help="recipe: the turn-ranking recipe; rrf: the baseline, reciprocal-rank fusion "
        "(k=60) of BM25 and MiniLM cosine over the turn texts, nothing else",
    )
    offline.set_defaults(func=cmd_offline)

    latency = kinds.add_parser("latency", help="search latency over HTTP and in-process")
    latency.add_argument("--sizes", default="1000,10000", help="cube sizes (memories)")
    latency.add_argument("--concurrency", default="1,8,32")
    latency.add_argument("--queries", type=int, default=200)
    latency.add_argument(
        "--cubes",
        type=int,
        default=1,
        help="N > 1: N cubes of the one size in --sizes, each search on a cube drawn by --zipf; "
        "reports the ranking index cache's hit rate (no in-process comparison)",
    )
    latency.add_argument(
        "--zipf",
        type=float,
        default=1.1,
        help="with --cubes: the Zipf exponent of cube popularity (0: uniform)",
    )
    latency.add_argument(
        "--chat",
        type=int,
        default=0,
        metavar="N",
        help="after the read-only levels, N times: add one turn (sync), then search the cube; "
        "with --cubes, on the most popular cube",
    )
    latency.add_argument(
        "--metrics-url",
        help="with --url: the Ray node's Prometheus endpoint (http://HOST:PORT/metrics) for "
        "the cache hit rate; set RAY_metrics_report_interval_ms here if not Ray's 10 s",
    )
    latency.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per level on the same cube(s): medians, each run and the spread",
    )
    latency.add_argument(
        "--no-inproc", action="store_true", help="skip the in-process comparison (faster)"
    )
    latency.add_argument(
        "--cpu",
        action="store_true",
        help="report each process's CPU milliseconds per search at each level (Linux /proc; "
        "every process of the machine, the load generator included)",
    )
    latency.add_argument("--out", default="bench-results/latency.json")
    add_service_args(latency)
    latency.set_defaults(func=cmd_latency)

    add_activation_parser(kinds)
    add_async_add_parser(kinds)
    add_autoscale_parser(kinds)
    add_chaos_parser(kinds)
    add_cube_archive_parser(kinds)
    add_graph_soak_parser(kinds)
    add_ingest_job_parser(kinds)

    ingest = kinds.add_parser("ingest", help="/product/add throughput vs the embedder's own")
    ingest.add_argument("--memories", type=int, default=4000)
    ingest.add_argument(
        "--batch", type=int, default=64, help="4-turn conversations per /product/add"
    )
    ingest.add_argument("--concurrency", type=int, default=3, help="requests in flight")
    ingest.add_argument("--out", default="bench-results/ingest.json")
    add_service_args(ingest)
    ingest.set_defaults(func=cmd_ingest)


def main(argv: list[str]) -> int:
    """`memos-ray bench ...` (argv after "bench")."""
    parser = argparse.ArgumentParser(prog="memos-ray")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *argv])
    return int(args.func(args) or 0)
