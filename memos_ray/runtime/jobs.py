"""What the per-cube bulk jobs (jobs.reorganize, jobs.reembed) share: options, config, the Ray
session, the list of cubes, the Ray Data fan-out over cubes and the one-line JSON summary.

A job connects to the Ray cluster at `--address` (or `RAY_ADDRESS`, as under `ray job
submit`) and then uses the stores the running app uses: embedded engines are owned by named
actors, found by name. Without an address it starts a local Ray cluster, bound to loopback,
opens the embedded stores of the data dir itself and stops them cleanly at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data
from ray.data import DataContext

from memos_ray.config import MemosConfig, load_config
from memos_ray.runtime.cluster import check_cluster
from memos_ray.runtime.compose import build_ray_stores, stop_embedded
from memos_ray.runtime.netguard import connect_or_start_ray


def add_common_args(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--cube", action="append", dest="cubes", help="a cube id (repeatable)")
    target.add_argument("--all-cubes", action="store_true", help="every cube holding memories")
    parser.add_argument("--data-dir", help="the app's data dir (MEMOS_DATA_DIR)")
    parser.add_argument("--address", help="Ray cluster address; default: start a local one")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="cubes processed at once (Ray Data actors)"
    )


def job_config(data_dir: str | None) -> MemosConfig:
    """Config from `MEMOS_*` variables, with the data dir given on the command line."""
    overrides: dict[str, Any] = {}
    if data_dir:
        overrides["data_dir"] = Path(data_dir)
    return load_config(overrides)


@contextmanager
def ray_session(config: MemosConfig, address: str | None) -> Iterator[bool]:
    """Yields True when this job started the cluster (and so owns the embedded stores)."""

    started = False
    if not ray.is_initialized():
        # Without an address, a new cluster (even when `ray start` left one running on this
        # machine), bound to loopback like `memos-ray serve`'s.
        kwargs: dict[str, Any] = (
            {} if address or os.environ.get("RAY_ADDRESS") else {"include_dashboard": False}
        )
        started = connect_or_start_ray(address, log_to_driver=False, **kwargs)
    _quiet_ray_data()
    try:
        check_cluster(config)
        yield started
    finally:
        if started:
            stop_embedded(config)
            ray.shutdown()


def _quiet_ray_data() -> None:
    """Progress bars go to the terminal, not into the JSON line on stdout."""

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False


def resolve_cubes(config: MemosConfig, cubes: Sequence[str] | None, all_cubes: bool) -> list[str]:
    if not all_cubes:
        return list(dict.fromkeys(cubes or []))

    graph, vectors = build_ray_stores(config)
    try:
        return graph.cube_ids()
    finally:
        graph.close()
        vectors.close()


def map_cubes(
    cubes: Sequence[str],
    worker: type,
    constructor_kwargs: dict[str, Any],
    concurrency: int,
    num_cpus: float = 1.0,
) -> list[dict[str, Any]]:
    """One row per cube through a pool of `worker` actors (each builds its stores and models
    once); each worker returns a JSON report per cube."""

    if not cubes:
        return []
    rows = [{"cube_id": cube} for cube in cubes]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    out = dataset.map_batches(
        worker,
        batch_size=1,
        concurrency=max(1, min(concurrency, len(cubes))),
        num_cpus=num_cpus,
        fn_constructor_kwargs=constructor_kwargs,
    ).take_all()
    reports = [json.loads(str(row["report"])) for row in out]
    return sorted(reports, key=lambda r: str(r.get("cube_id")))


def report_column(reports: Sequence[str]) -> dict[str, np.ndarray]:
    return {"report": np.array(list(reports), dtype=object)}


def emit(summary: dict[str, Any]) -> None:
    """The job's result: exactly one JSON line on stdout."""
    sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    sys.stdout.flush()
