"""`memos-ray bench cube-archive`: dump and load time and memory as a cube grows.

For each size a cube of that many memories is filled on embedded stores, dumped, and loaded
under another name (the same embedding space: vectors reused). Each phase runs twice: once
timed, once under tracemalloc for the peak of Python and numpy allocations (what a dump or
load itself holds); the process's RSS growth is reported beside it, which also counts the
in-process vector engine's own caches. Flat memory means the allocation peak stays the same
while the cube grows.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from memos_ray.bench.common import machine, write_report
from memos_ray.config import MemosConfig
from memos_ray.core.reader import text_memory
from memos_ray.runtime.compose import LocalStack
from memos_ray.services import cube_archive

_FILL_BATCH = 512


def add_cube_archive_parser(kinds: Any) -> None:
    p = kinds.add_parser("cube-archive", help="cube dump / load: time and peak memory by size")
    p.add_argument("--sizes", default="10000,50000", help="cube sizes (memories), comma list")
    p.add_argument("--batch", type=int, default=cube_archive.BATCH)
    p.add_argument("--data-dir", help="where the stores and dumps go (default: a temp dir)")
    p.add_argument("--out", default="bench-results/cube-archive.json")
    p.set_defaults(func=cmd_cube_archive)


@contextmanager
def _rss_peak() -> Iterator[dict[str, int]]:
    """The process's RSS growth over the block, sampled every 10 ms."""
    process = psutil.Process()
    start = process.memory_info().rss
    seen = {"peak": start}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            seen["peak"] = max(seen["peak"], process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out: dict[str, int] = {}
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["rss_growth_mb"] = round((seen["peak"] - start) / 2**20, 1)


def _measure(run: Callable[[str], Any]) -> dict[str, float]:
    started = time.perf_counter()
    run("timed")
    seconds = time.perf_counter() - started
    tracemalloc.start()
    try:
        with _rss_peak() as rss:
            run("traced")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {
        "seconds": round(seconds, 2),
        "alloc_peak_mb": round(peak / 2**20, 1),
        "rss_growth_mb": rss["rss_growth_mb"],
    }


def _fill(stack: LocalStack, cube: str, size: int) -> float:
    started = time.perf_counter()
    memory = stack.services.memory
    for start in range(0, size, _FILL_BATCH):
        windows = [
            text_memory(f"Note {n}: the courier left parcel {n * 7919 % 100003} at door {n}.")
            for n in range(start, min(size, start + _FILL_BATCH))
        ]
        memory.add_windows(cube, "bench", windows)
    return time.perf_counter() - started


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _one_size(size: int, work: Path, batch: int) -> dict[str, Any]:
    config = MemosConfig(data_dir=work / "data").resolved()
    with LocalStack(config) as stack:
        memory = stack.services.memory
        model, dim = config.embedder.model or "", config.embedder.dim
        space = cube_archive.space_of(memory, "c", model, dim)
        fill_s = _fill(stack, "c", size)
        print(f"n={size}: filled in {fill_s:.1f} s", flush=True)

        def dump(tag: str) -> None:
            cube_archive.dump(memory, "c", work / f"dump-{tag}", space=space, batch=batch)

        def load(tag: str) -> None:
            source = work / "dump-timed"
            cube_archive.load(memory, source, as_cube=f"copy-{tag}", space=space, batch=batch)

        dumped = _measure(dump)
        loaded = _measure(load)
    return {
        "memories": size,
        "fill_seconds": round(fill_s, 1),
        "dump": dumped,
        "load": loaded,
        "dump_bytes": _bytes(work / "dump-timed"),
        "dump_memories_per_s": round(size / max(dumped["seconds"], 1e-9)),
        "load_memories_per_s": round(size / max(loaded["seconds"], 1e-9)),
    }


def _ratio(large: float, small: float) -> float:
    return round(large / max(small, 1e-3), 2)


def cmd_cube_archive(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    root = Path(args.data_dir or tempfile.mkdtemp(prefix="memos-cube-bench-"))
    results: list[dict[str, Any]] = []
    for size in sizes:
        work = root / f"n{size}"
        shutil.rmtree(work, ignore_errors=True)
        row = _one_size(size, work, args.batch)
        print(row, flush=True)
        results.append(row)
        shutil.rmtree(work, ignore_errors=True)
    figures: dict[str, Any] = {"batch": args.batch, "sizes": results, "machine": machine()}
    if len(results) >= 2:
        small, large = results[0], results[-1]
        figures["ratios"] = {
            "size": _ratio(large["memories"], small["memories"]),
            "dump_alloc_peak": _ratio(
                large["dump"]["alloc_peak_mb"], small["dump"]["alloc_peak_mb"]
            ),
            "load_alloc_peak": _ratio(
                large["load"]["alloc_peak_mb"], small["load"]["alloc_peak_mb"]
            ),
            "dump_seconds": _ratio(large["dump"]["seconds"], small["dump"]["seconds"]),
            "load_seconds": _ratio(large["load"]["seconds"], small["load"]["seconds"]),
        }
    write_report(figures, Path(args.out))
    return 0
