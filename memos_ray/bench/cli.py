"""`memos-ray bench ...`: each benchmark starts its own service unless given `--url`."""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from memos_ray.bench.activation import add_activation_parser
from memos_ray.bench.async_add import add_async_add_parser
from memos_ray.bench.autoscale import add_autoscale_parser
from memos_ray.bench.chaos import add_chaos_parser
from memos_ray.bench.common import add_service_args, machine, service_url, write_report
from memos_ray.bench.cube_archive import add_cube_archive_parser
from memos_ray.bench.ingest_job import add_ingest_job_parser
from memos_ray.bench.load import LeanPoster, fill_cube, generate_queries, generate_windows, run_load
from memos_ray.bench.offline import run_offline
from memos_ray.bench.retrieval import run_retrieval_bench
from memos_ray.bench.soak import add_graph_soak_parser
from memos_ray.client import MemosClient
from memos_ray.config import MemosConfig, ReaderConfig
from memos_ray.core.reader import Turn, fast_windows
from memos_ray.models.embedder import SentenceTransformerEmbedder
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

    graph, vectors = build_ray_stores(config)
    embedder = build_query_embedder(config)
    assert embedder is not None
    service = build_services(config, graph, vectors, Models(embedder), in_ray=True).memory

    def search(cube_id: str, query: str) -> Any:
        return service.search(query, {cube_id: None}, SearchOptions(top_k=10))

    return search


def cmd_latency(args: argparse.Namespace) -> int:

    sizes = [int(s) for s in args.sizes.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    queries = generate_queries(args.queries)
    figures: dict[str, Any] = {"bench": "latency", "machine": machine(), "sizes": {}}
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with (
        service_url(args) as (url, config),
        httpx.Client(
            base_url=url,
            headers=headers,
            timeout=120,
            limits=httpx.Limits(max_connections=max(levels) + 4),
        ) as http,
    ):
        in_process = _in_process_search(config) if config is not None else None
        poster = LeanPoster(url, headers)
        for size in sizes:
            cube = f"latency-{size}"
            http.post("/product/create_cube", json={"owner_id": "bench", "cube_id": cube})
            windows = generate_windows(_windows_for(size, config))
            stored, seconds = fill_cube(http, "bench", cube, windows)
            body = {"user_id": "bench", "readable_cube_ids": [cube], "top_k": 10}

            def over_http(query: str, body: dict[str, Any] = body) -> None:
                poster.post("/product/search", {**body, "query": query})

            for query in queries[:20]:  # warm-up
                over_http(query)
            row: dict[str, Any] = {"memories": stored, "fill_seconds": round(seconds, 1)}
            for level in levels:
                n = max(len(queries), 25 * level)
                batch = (queries * (n // len(queries) + 1))[:n]
                row[f"http_c{level}"] = run_load(over_http, batch, level)
                if in_process is not None:
                    row[f"inproc_c{level}"] = run_load(
                        functools.partial(in_process, cube), batch, level
                    )
                    row[f"http_over_inproc_p50_c{level}"] = round(
                        row[f"http_c{level}"]["p50_ms"] / row[f"inproc_c{level}"]["p50_ms"], 2
                    )
                print(
                    f"  {size} memories, concurrency {level}: {json.dumps(row[f'http_c{level}'])}"
                )
            figures["sizes"][str(size)] = row
    write_report(figures, Path(args.out))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:

    # deferred: imports torch
    import torch

    reader = ReaderConfig()
    windows = generate_windows(_windows_for(args.memories, None), seed=3)
    texts = _memory_texts(windows, reader.window_messages)
    torch.set_num_threads(os.cpu_count() or 1)
    embedder = SentenceTransformerEmbedder(batch_size=64)
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
        http.post("/product/create_cube", json={"owner_id": "bench", "cube_id": "ingest"})
        stored, seconds = fill_cube(
            http, "bench", "ingest", windows, batch=args.batch, concurrency=args.concurrency
        )
    rate = stored / seconds
    figures = {
        "bench": "ingest",
        "machine": machine(),
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
