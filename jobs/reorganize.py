"""Reorganise cubes in bulk: merge duplicates, archive superseded facts, rebuild topic trees.

    python -m jobs.reorganize --cube ID [--cube ID2 ...] | --all-cubes
        [--data-dir DIR] [--address RAY_ADDRESS] [--llm config|none] [--llm-app APP]
        [--concurrency N]

Cubes are processed in parallel by a pool of Ray Data actors; each writes through the stores
the app uses. Ends with one JSON line on stdout: totals, then one report per cube. The rules
are in `memos_ray.core.organize`; running it again on an unchanged cube changes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from memos_ray.config import MemosConfig, NoLLMConfig
from memos_ray.runtime.compose import (
    Models,
    build_embedder,
    build_ray_stores,
    build_services,
    build_tenancy_store,
)
from memos_ray.runtime.jobs import (
    add_common_args,
    emit,
    job_config,
    map_cubes,
    ray_session,
    report_column,
    resolve_cubes,
)
from memos_ray.runtime.jobs_llm import LLMRoute, chat_model_for, close_llm, open_llm
from memos_ray.services.reorganize import ReorganizeParams, Reorganizer


class ReorganizeWorker:
    """A Ray Data actor: stores, embedders (loaded only if an item must be rewritten) and the
    LLM are built once and reused for every cube it is given. Each cube is read and written
    in its own embedding space (see `memos_ray.services.spaces`)."""

    def __init__(
        self, config: MemosConfig, params: ReorganizeParams, route: LLMRoute | None
    ) -> None:

        graph, vectors = build_ray_stores(config)
        ledger = build_tenancy_store(config)
        # Each cube is read and written in its own embedding space.
        models = Models(build_embedder(config))
        services = build_services(
            config, graph, vectors, models, in_ray=True, tenancy=ledger, space_ttl_s=0
        )
        self._memory = services.memory
        self._params = params
        # Through the LLM deployment (see memos_ray.runtime.jobs_llm), never a model of its own.
        self._model = chat_model_for(config, route) if route is not None else None
        self._ledger = ledger

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reports = []
        for cube in map(str, batch["cube_id"]):
            reorganizer = Reorganizer(self._memory, self._params, self._model, self._ledger)
            reports.append(reorganizer.run(cube).model_dump_json())
        return report_column(reports)


def run(
    config: MemosConfig,
    cubes: list[str] | None,
    all_cubes: bool,
    params: ReorganizeParams,
    concurrency: int = 2,
    route: LLMRoute | None = None,
) -> dict[str, Any]:
    """Reorganise on the Ray cluster this process is connected to; returns the summary.
    Without a `route` (or with `params.llm` "none") the rules decide alone."""
    started = time.monotonic()
    targets = resolve_cubes(config, cubes, all_cubes)
    if params.llm != "config":
        route = None
    kwargs = {"config": config, "params": params, "route": route}
    reports = map_cubes(targets, ReorganizeWorker, kwargs, concurrency)
    return {
        "job": "reorganize",
        "cubes": len(reports),
        "changed_cubes": sum(1 for r in reports if _changed(r)),
        "merged": sum(len(r["merged"]) for r in reports),
        "archived": sum(len(r["archived"]) for r in reports),
        "skipped": sum(len(r["skipped"]) for r in reports),
        "topics": sum(r["topics"] for r in reports),
        "topics_created": sum(len(r["topics_created"]) for r in reports),
        "topics_updated": sum(len(r["topics_updated"]) for r in reports),
        "topics_removed": sum(len(r["topics_removed"]) for r in reports),
        "parents": sum(r["parents"] for r in reports),
        "parents_added": sum(r["parents_added"] for r in reports),
        "llm_calls": sum(r["llm_calls"] for r in reports),
        "errors": sum(1 for r in reports if r.get("error")),
        "seconds": round(time.monotonic() - started, 3),
        "per_cube": reports,
    }


def _changed(report: dict[str, Any]) -> bool:
    keys = ("merged", "archived", "topics_created", "topics_updated", "topics_removed")
    return any(report[k] for k in keys) or bool(report["parents_added"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.reorganize", description=__doc__)
    add_common_args(parser)
    parser.add_argument(
        "--llm",
        choices=["config", "none"],
        default="config",
        help="judge contradictions and name topics with the configured LLM, or rules only",
    )
    parser.add_argument(
        "--llm-app",
        help="the Serve app whose LLMDeployment to use (default: the service's when it runs "
        "in this cluster, else one deployed for the job)",
    )
    parser.add_argument("--near-duplicate", type=float, help="cosine of near duplicates")
    parser.add_argument("--leaf-size", type=int, help="most memories under one topic")
    parser.add_argument("--branching", type=int, help="most subtopics under one topic")
    parser.add_argument("--include-turns", action="store_true", help="merge raw turns too")
    args = parser.parse_args(argv)
    given = {
        "near_duplicate": args.near_duplicate,
        "leaf_size": args.leaf_size,
        "branching": args.branching,
    }
    params = ReorganizeParams(
        llm=args.llm,
        include_turns=args.include_turns,
        **{k: v for k, v in given.items() if v is not None},
    )
    config = job_config(args.data_dir)
    with ray_session(config, args.address) as owns_ray:
        route = None
        if params.llm == "config" and not isinstance(config.llm, NoLLMConfig):
            route = open_llm(config, args.llm_app, None, owns_ray=owns_ray)
        label = "none (rules only)"
        try:
            summary = run(config, args.cubes, args.all_cubes, params, args.concurrency, route)
        finally:
            if route is not None:
                label = close_llm(route)
        summary["llm"] = label
    emit(summary)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
