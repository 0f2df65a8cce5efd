"""`memos-ray bench ingest-job`: the bulk ingest job's throughput against its embedder's own.

Runs `python -m jobs.ingest` as users do (its own local Ray cluster, embedded stores in a
fresh data dir) and reads its JSON summary: rows, memories written, seconds, the embedder
alone on the same texts in the same run (timed before and after the job), and the ratios.
Optionally projects the time for a larger input on a cluster of GPU workers:

    seconds = turns x memories/turn / min(GPU workers x per-GPU texts/s,
                                          CPU cores x 1000 / CPU ms per memory)

where memories / turn and the CPU one memory costs outside embedding come from this run, and
the per-GPU rate is measured separately on the GPU (`python -m memos_ray.bench.embedder`).

Wall-clock ratios move with whatever else runs on the machine. So the bench also counts the
CPU time of every process of the job's session (its Ray cluster, workers, store servers),
less what the driver spent timing the embedder, and reports `cpu_ratio`: the embedder's own
CPU per text over the job's CPU per memory, start-up included. On a dedicated machine that
the job keeps busy, the throughput ratio approaches it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from memos_ray.bench.cpu import cpu_seconds, processes


def projection(
    figures: dict[str, Any], turns: int, workers: int, gpu_rate: float, cpu_cores: int
) -> dict[str, Any]:
    """Seconds for `turns` with `workers` GPUs embedding `gpu_rate` texts/s each, and
    `cpu_cores` CPU worker cores doing the rest at this run's CPU cost per memory outside
    embedding (start-up and the embedded stores' own work included: conservative)."""
    per_turn = figures["memories_written"] / max(figures["rows"], 1)
    embed_rate = workers * gpu_rate
    result: dict[str, Any] = {
        "turns": turns,
        "memories_per_turn": round(per_turn, 4),
        "gpu_workers": workers,
        "gpu_embedder_per_s": gpu_rate,
        "embedding_per_s": embed_rate,
        "cpu_cores": cpu_cores,
    }
    rate = embed_rate
    if figures.get("job_cpu_ms_per_memory") and figures.get("embedder_cpu_ms_per_text"):
        other_ms = figures["job_cpu_ms_per_memory"] - figures["embedder_cpu_ms_per_text"]
        cpu_rate = cpu_cores * 1000 / max(other_ms, 1e-3)
        result.update(cpu_ms_per_memory=round(other_ms, 3), cpu_side_per_s=round(cpu_rate))
        rate = min(rate, cpu_rate)
    result["memories_per_s"] = round(rate)
    result["seconds"] = round(turns * per_turn / rate, 1)
    result["formula"] = (
        "turns * memories_per_turn / min(gpu_workers * gpu_embedder_per_s, "
        "cpu_cores * 1000 / cpu_ms_per_memory); graph and vector servers must keep up too"
    )
    return result


def _session_cpu(session: int) -> dict[int, float]:
    """CPU seconds (user + system) of each live process in a session."""
    # After the state: ppid, pgrp, then the session.
    return {pid: cpu_seconds(f) for pid, _, f in processes() if int(f[3]) == session}


class CpuMeter:
    """Samples a session's processes until stopped; a process's last sample counts (one
    that ends between two samples loses at most the interval's CPU)."""

    def __init__(self, session: int, interval_s: float = 0.25) -> None:
        self._session = session
        self._interval_s = interval_s
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._last.update(_session_cpu(self._session))
            time.sleep(self._interval_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self._last.values())


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
        # A session of its own: every process of the job's Ray cluster is counted.
        job = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, start_new_session=True)
        meter = CpuMeter(job.pid)
        stdout, _ = job.communicate()
        cpu_seconds = meter.stop()
    finally:
        if not args.data_dir and not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    if job.returncode != 0:
        print(f"jobs.ingest failed with exit code {job.returncode}", file=sys.stderr)
        return job.returncode
    summary = json.loads(stdout.decode().strip().splitlines()[-1])
    job_cpu = cpu_seconds - summary.get("ceiling_cpu_seconds", 0.0)
    figures: dict[str, Any] = {
        "bench": "ingest-job",
        "format": args.format,
        "input": Path(args.input).name,
        "machine": {"cpus": os.cpu_count(), "load_after": os.getloadavg()},
        **summary,
        "job_cpu_seconds": round(job_cpu, 1),
    }
    if summary["memories_written"] and summary.get("embedder_cpu_ms_per_text"):
        per_memory = 1000 * job_cpu / summary["memories_written"]
        figures["job_cpu_ms_per_memory"] = round(per_memory, 3)
        figures["cpu_ratio"] = round(summary["embedder_cpu_ms_per_text"] / per_memory, 3)
    if args.gpu_embedder_per_s:
        figures["projection"] = projection(
            figures, args.project_turns, args.gpu_workers, args.gpu_embedder_per_s, args.cpu_cores
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
        f"(overall {summary['ratio_overall']}); CPU ratio {figures.get('cpu_ratio')}"
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
    p.add_argument("--cpu-cores", type=int, default=32, help="CPU worker cores (projection)")
    p.add_argument(
        "--gpu-embedder-per-s",
        type=float,
        help="one GPU worker's embedder throughput (texts/s), for the projection",
    )
    p.add_argument("--out", default="bench-results/ingest-job.json")
    p.set_defaults(func=cmd_ingest_job)
