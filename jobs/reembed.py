"""Move cubes to another embedding model or dimension while they stay searchable.

    python -m jobs.reembed --cube ID [--cube ID2 ...] | --all-cubes --model PATH_OR_NAME --dim N
        [--data-dir DIR] [--address RAY_ADDRESS] [--grace-s S] [--keep-old] [--concurrency N]
        [--phase all|copy|finish]

New vectors are written beside the old ones (a store of the target space), the cube's record
is switched in one update, and the old vectors are deleted after a grace period: see
`memos_ray.services.reembed`. A running app follows the switch by itself (its services
resolve each cube's space, `memos_ray.services.spaces`): run the job on the app's cluster
(`--address`, or `ray job submit`) while the app serves. Ends with one JSON line on stdout:
totals, the config that makes new cubes start in the target space, and one report per cube.
Running it again resumes a move that stopped half-way and leaves moved cubes alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from memos_ray.config import MemosConfig, QdrantEdgeConfig
from memos_ray.runtime.compose import build_ray_stores, build_tenancy_store
from memos_ray.runtime.jobs import (
    add_common_args,
    emit,
    job_config,
    map_cubes,
    ray_session,
    report_column,
    resolve_cubes,
)
from memos_ray.services.reembed import CubeMover, ReembedParams
from memos_ray.services.spaces import (
    EmbeddingSpace,
    SpaceRegistry,
    SpaceStores,
    default_space,
    space_embedder,
    space_for_model,
)


class ReembedWorker:
    """A Ray Data actor: the target model is loaded once and moves every cube it is given."""

    def __init__(self, config: MemosConfig, target: EmbeddingSpace, params: ReembedParams) -> None:

        graph, vectors = build_ray_stores(config)
        registry = SpaceRegistry(build_tenancy_store(config).engine)
        self._mover = CubeMover(
            graph,
            registry,
            SpaceStores(config, vectors, in_ray=True),
            space_embedder(config, target),
            target,
            default_space(config),
            params,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return report_column([self._mover.move(str(c)).model_dump_json() for c in batch["cube_id"]])


def run(
    config: MemosConfig,
    cubes: list[str] | None,
    all_cubes: bool,
    target: EmbeddingSpace,
    params: ReembedParams,
    concurrency: int = 2,
) -> dict[str, Any]:
    """Move cubes on the Ray cluster this process is connected to; returns the summary."""
    started = time.monotonic()
    targets = resolve_cubes(config, cubes, all_cubes)
    kwargs = {"config": config, "target": target, "params": params}
    reports = map_cubes(targets, ReembedWorker, kwargs, concurrency)
    return {
        "job": "reembed",
        "target": target.model_dump(),
        "cubes": len(reports),
        "moved": sum(1 for r in reports if r["state"] == "moved"),
        "copied_only": sum(1 for r in reports if r["state"] == "migrating"),
        "already_in_target": sum(1 for r in reports if r["state"] == "already in target"),
        "copied": sum(r["copied"] for r in reports),
        "dropped": sum(r["dropped"] for r in reports),
        "removed_old": sum(r["removed_old"] for r in reports),
        "errors": sum(1 for r in reports if r.get("error")),
        "seconds": round(time.monotonic() - started, 3),
        "config_for_new_cubes": new_cube_config(config, target),
        "per_cube": reports,
    }


def new_cube_config(config: MemosConfig, target: EmbeddingSpace) -> dict[str, Any]:
    """Overrides that make the service's default space the target (for cubes created later)."""
    vector: dict[str, Any] = {"backend": config.vector.backend}
    if isinstance(config.vector, QdrantEdgeConfig) or not config.vector.url:
        vector["path"] = target.location
    else:
        vector["collection"] = target.location
    return {"embedder": {"model": target.model or None, "dim": target.dim}, "vector": vector}


def check_model(config: MemosConfig, target: EmbeddingSpace) -> str | None:
    """Loads the model once here, so a wrong name or dimension fails before anything moves."""
    try:
        dim = space_embedder(config, target).dim
    except Exception as exc:
        return f"cannot load embedding model {target.model!r}: {exc}"
    if dim != target.dim:
        return f"model {target.model!r} gives {dim}-dimensional vectors, not {target.dim}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.reembed", description=__doc__)
    add_common_args(parser)
    parser.add_argument("--model", required=True, help="sentence-transformers path or name")
    parser.add_argument("--dim", type=int, required=True, help="the model's vector dimension")
    parser.add_argument("--grace-s", type=float, default=5.0, help="before old vectors go")
    parser.add_argument("--keep-old", action="store_true", help="do not delete old vectors")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--phase",
        choices=["all", "copy", "finish"],
        default="all",
        help="copy: new vectors beside the old only (the cube stays where it is); "
        "finish: sync, switch and clean up; all: both",
    )
    args = parser.parse_args(argv)
    config = job_config(args.data_dir)
    target = space_for_model(config, args.model, args.dim)
    problem = check_model(config, target)
    if problem is not None:
        emit({"job": "reembed", "error": problem})
        return 2
    params = ReembedParams(
        phase=args.phase, grace_s=args.grace_s, keep_old=args.keep_old, batch_size=args.batch_size
    )
    # On a cluster it started itself, the job stops every store it opened at the end (space
    # shards included); on the app's cluster the app goes on using them.
    with ray_session(config, args.address):
        summary = run(config, args.cubes, args.all_cubes, target, params, args.concurrency)
    emit(summary)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
