"""`memos-ray bench ...`: each benchmark starts its own service unless given `--url`."""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def service_url(args: argparse.Namespace) -> Iterator[str]:
    """The given --url, or a fresh local service on the embedded defaults."""
    if args.url:
        yield args.url
        return
    from memos_ray.config import load_config
    from memos_ray.launcher import local_service

    data_dir = (
        Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="memos-bench-"))
    )
    if data_dir.exists() and any(data_dir.iterdir()):
        raise SystemExit(f"memos-ray bench: data dir {data_dir} is not empty")
    config = load_config({"data_dir": str(data_dir), "admin_key": None})
    print(f"starting memos-ray on the embedded defaults in {config.data_dir} ...", flush=True)
    with local_service(config, port=_free_port()) as url:
        print(f"service ready at {url}", flush=True)
        yield url


def _report(figures: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"figures written to {path}", flush=True)


def cmd_retrieval(args: argparse.Namespace) -> int:
    from memos_ray.bench.datasets import locomo_cubes, longmemeval_cubes
    from memos_ray.bench.retrieval import run_retrieval_bench
    from memos_ray.client import MemosClient

    loader = locomo_cubes if args.bench == "locomo" else longmemeval_cubes
    cubes = list(loader(Path(args.data)))
    if args.limit:
        cubes = cubes[: args.limit]
    with service_url(args) as url, MemosClient(url, args.api_key, timeout=300) as client:
        figures = run_retrieval_bench(args.bench, cubes, client, Path(args.out), top_k=args.top_k)
    _report(figures, Path(args.figures or f"{args.out}.figures.json"))
    print(f"score with: python3 score_retrieval.py {args.data} {args.out}")
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
        p.add_argument("--limit", type=int, help="only the first N cubes")
        p.add_argument("--url", help="use a running service instead of starting one")
        p.add_argument("--api-key", help="API key for --url (MEMOS_API_KEY)")
        p.add_argument(
            "--data-dir", help="data dir of the started service (default: a new temp dir)"
        )
        p.set_defaults(func=cmd_retrieval)
