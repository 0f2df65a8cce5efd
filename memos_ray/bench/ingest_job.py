"""`memos-ray bench ingest-job`: the bulk ingest job's throughput against its embedder's own.

Runs `python -m jobs.ingest` as users do (its own local Ray cluster, embedded stores in a
fresh data dir) and reads its JSON summary: rows, memories written, seconds, the embedder
alone on the same texts in the same run (timed before and after the job), and the ratios.
Optionally projects the time for a larger input on a cluster of GPU workers:

    hours = turns x (memories / turn) / (workers x per-GPU embeddings/s x ratio) / 3600

where memories / turn and the ratio (job throughput over the embedder's own) come from this
run, and the per-GPU rate is measured separately on the GPU (e.g. `memos-ray bench embedder`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def projection(
    summary: dict[str, Any], turns: int, workers: int, gpu_rate: float
) -> dict[str, Any]:
    """Hours for `turns` on `workers` GPU workers, each embedding `gpu_rate` texts/s alone."""
    per_turn = summary["memories_written"] / max(summary["rows"], 1)
    ratio = summary.get("ratio") or 1.0
    rate = workers * gpu_rate * ratio
    return {
        "turns": turns,
        "gpu_workers": workers,
        "gpu_embedder_per_s": gpu_rate,
        "memories_per_turn": round(per_turn, 4),
        "ratio": ratio,
        "memories_per_s": round(rate, 1),
        "hours": round(turns * per_turn / rate / 3600, 2),
        "formula": "turns * memories_per_turn / (gpu_workers * gpu_embedder_per_s * ratio)",
    }


def cmd_ingest_job(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="memos-ij-"))
    if args.data_dir and data_dir.exists() and any(data_dir.iterdir()):
        raise SystemExit(f"memos-ray bench: data dir {data_dir} is not empty")
    command = [
        sys.executable,
        "-m",
        "jobs.ingest",
        "--format",
        args.format,
        "--input",
        args.input,
        "--data-dir",
        str(data_dir),
        "--ceiling-sample",
        str(args.ceiling_sample),
    ]
    for flag in ("limit", "embed_batch_size", "actors", "threads", "write_batch"):
        value = getattr(args, flag)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    env = {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", **os.environ}
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, env=env, check=False)
    finally:
        if not args.data_dir and not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    if done.returncode != 0:
        print(f"jobs.ingest failed with exit code {done.returncode}", file=sys.stderr)
        return done.returncode
    summary = json.loads(done.stdout.decode().strip().splitlines()[-1])
    figures: dict[str, Any] = {
        "bench": "ingest-job",
        "format": args.format,
        "input": Path(args.input).name,
        "machine": {"cpus": os.cpu_count()},
        **summary,
    }
    if args.gpu_embedder_per_s:
        figures["projection"] = projection(
            summary, args.project_turns, args.gpu_workers, args.gpu_embedder_per_s
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(
        f"{summary['memories_written']} memories from {summary['rows']} rows in "
        f"{summary['seconds']:.1f} s: {summary['steady_memories_per_s']:.1f}/s steady, "
        f"{summary['memories_per_s']:.1f}/s overall; embedder alone "
        f"{summary['embedder_ceiling_per_s']}/s; ratio {summary['ratio']} "
        f"(overall {summary['ratio_overall']})"
    )
    print(f"figures written to {out}", flush=True)
    return 0


def add_ingest_job_parser(kinds: Any) -> None:
    p = kinds.add_parser(
        "ingest-job", help="the Ray Data ingest job's throughput vs its embedder's own"
    )
    p.add_argument("--format", choices=["locomo", "longmemeval", "jsonl", "parquet"], required=True)
    p.add_argument("--input", required=True, help="the input file or directory")
    p.add_argument("--limit", type=int, help="first N conversations / records per file")
    p.add_argument("--embed-batch-size", type=int)
    p.add_argument("--actors", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--write-batch", type=int)
    p.add_argument("--ceiling-sample", type=int, default=1024, help="texts timed on the embedder")
    p.add_argument("--data-dir", help="an empty data dir (default: a temp dir, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the temp data dir")
    p.add_argument("--project-turns", type=int, default=10_000_000)
    p.add_argument("--gpu-workers", type=int, default=8)
    p.add_argument(
        "--gpu-embedder-per-s",
        type=float,
        help="one GPU worker's embedder throughput (texts/s), for the projection",
    )
    p.add_argument("--out", default="bench-results/ingest-job.json")
    p.set_defaults(func=cmd_ingest_job)
