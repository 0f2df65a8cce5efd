"""Bulk ingest as a Ray Data job: conversations or documents in, memories in the stores.

    python -m jobs.ingest --format locomo|longmemeval|jsonl|parquet --input PATH [...]
    ray job submit -- python -m jobs.ingest --config job.yaml --input PATH

Read (one task per file) -> cut each cube into the memories the API's fast add would store,
flagging those already stored -> embed on an actor pool -> write (graph, then vectors)
through a Datasink. Ids are deterministic, so a re-run writes only what is missing. With
`--fine`, a second pass sends fine windows to the LLM deployment (`jobs.ingest_fine`). Without
`--address` it starts a local Ray cluster and the embedded stores on the data dir, and stops
what it started at the end. The last line on stdout is one JSON summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import ray
import ray.data
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray.data import ActorPoolStrategy
from ray.util.placement_group import NODE_ID_LABEL_KEY

from jobs.ingest_fine import ExtractStage, fine_cut_batch, wake_schedulers
from jobs.ingest_stages import (
    EmbedStage,
    MemorySink,
    UnitSource,
    WriteCounts,
    cut_batch,
    drop_stores,
    stores_for,
)
from memos_ray.config import FalkorDBConfig, MemosConfig, NoLLMConfig, QdrantEdgeConfig, load_config
from memos_ray.embedded.falkordb_actor import actor_suffix
from memos_ray.errors import ConfigError
from memos_ray.models.embedder import SentenceTransformerEmbedder
from memos_ray.runtime.cluster import check_cluster
from memos_ray.runtime.jobs_llm import LLMRoute, close_llm, open_llm
from memos_ray.runtime.netguard import connect_or_start_ray
from memos_ray.services.ingest.cutting import cut_cube
from memos_ray.services.ingest.fine import FineCounts
from memos_ray.services.ingest.formats import FORMATS, BadRecord, Unit, input_files, read_units

logger = logging.getLogger("memos_ray.jobs.ingest")

# Shuffle partitions for JSONL / Parquet input: one per this many input bytes, at most MAX.
GROUP_BYTES = 64 << 20
MAX_PARTITIONS = 256
# Ray CPUs each fine extraction actor holds.
EXTRACT_CPUS = 0.1


class IngestArgs(BaseModel):
    """Job arguments: CLI flags, or the `ingest:` section of `--config` (flags win)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["jsonl", "parquet", "locomo", "longmemeval"]
    input: list[str] = Field(min_length=1)
    # None: the service's data dir (MEMOS_DATA_DIR, default ~/.memos-ray).
    data_dir: str | None = None
    # None: start a local Ray cluster; "auto" or ray://...: join one (e.g. the service's).
    address: str | None = None
    # Owner of records that name no user; also the cube of records that name neither.
    user_id: str = Field(default="ingest", min_length=1, max_length=128)
    # Only the first N records (JSONL/Parquet) or conversations (LoCoMo/LongMemEval) per file.
    limit: int | None = Field(default=None, ge=1)
    embed_batch_size: int = Field(default=256, ge=1)
    # Embedding actors: the pool grows from `actors` to `max_actors` under load.
    actors: int = Field(default=1, ge=1)
    max_actors: int | None = Field(default=None, ge=1)
    num_gpus: float = Field(default=0.0, ge=0)
    # Torch threads per embedding actor; None: the node's cores shared by the actors.
    threads: int | None = Field(default=None, ge=1)
    # Ray CPUs each embedding actor reserves; None: 1 on GPU, else as many as leave one
    # CPU of the cluster to the other stages (or they could never run).
    actor_cpus: float | None = Field(default=None, gt=0)
    write_batch: int = Field(default=512, ge=1)
    # Shuffle partitions grouping JSONL / Parquet records by cube (None: by input size).
    partitions: int | None = Field(default=None, ge=1)
    # Texts timed through the embedder alone (before and after the job); 0: skip.
    ceiling_sample: int = Field(default=256, ge=0)
    progress: bool = True
    # Fine extraction: a second pass through the LLM deployment (`fine.*` settings apply).
    fine: bool = False
    # The Serve app whose LLMDeployment reads the windows; None: the service's when it runs
    # in this cluster, else one deployed for the job (`llm_replicas` replicas).
    llm_app: str | None = None
    llm_replicas: int | None = Field(default=None, ge=1)
    # Extraction actors, and windows each keeps in flight to the LLM (its replicas batch them).
    llm_actors: int = Field(default=1, ge=1)
    llm_concurrency: int = Field(default=16, ge=1)
    # MemosConfig overrides (stores, embedder, reader), as in the Serve app's `config`.
    memos: dict[str, Any] = Field(default_factory=dict)


class FineSummary(FineCounts):
    """The fine pass: windows read by the LLM, and the memories they gave."""

    memories_written: int = 0
    memories_skipped: int = 0
    edges: int = 0
    seconds: float = 0.0
    # Where the windows went: "serve:<app>", "endpoint" (a remote OpenAI-style server), or
    # "none (...)" when the job's own deployment was not needed.
    llm: str = ""


class IngestSummary(BaseModel):
    """Throughput is measured twice: over the whole pipeline (`memories_per_s`), and from
    the moment the first embedding actor had its model loaded (`steady_memories_per_s`),
    which is what the embedder's own figure (timed after warm-up) compares with. With
    `--fine`, rates and ratios are the fast pass's (bound by the embedder); the fine pass,
    bound by the LLM, reports in `fine`, and the memory counts include its memories."""

    rows: int
    bad_rows: int
    cubes: int
    memories_written: int
    memories_skipped: int
    edges: int
    seconds: float
    startup_seconds: float
    memories_per_s: float
    steady_memories_per_s: float
    embedder_ceiling_per_s: float | None
    ratio: float | None
    ratio_overall: float | None
    embedder_ceiling_before_per_s: float | None = None
    embedder_ceiling_after_per_s: float | None = None
    # CPU per text of the embedder alone (all its threads), and all CPU the driver spent
    # timing it: a load-independent view for `memos-ray bench ingest-job`.
    embedder_cpu_ms_per_text: float | None = None
    ceiling_cpu_seconds: float = 0.0
    bad_examples: list[dict[str, Any]] = Field(default_factory=list)
    fine: FineSummary | None = None


def job_config(args: IngestArgs) -> MemosConfig:
    overrides = dict(args.memos)
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    return load_config(overrides)


# -- the embedder's own throughput ------------------------------------------------------------


def sample_texts(args: IngestArgs, config: MemosConfig, files: list[Path]) -> list[str]:
    """Texts the job will embed, read in the driver with the same cutting as the job."""

    by_cube: dict[str, list[Unit]] = {}
    wanted = args.ceiling_sample
    seen = 0
    for index, path in enumerate(files):
        for entry in read_units(path, index, args.format, args.user_id, args.limit):
            if isinstance(entry, BadRecord):
                continue
            by_cube.setdefault(entry.cube_id, []).append(entry)
            seen += max(len(entry.turns), 1)
            if seen >= 2 * wanted:
                break
        if seen >= 2 * wanted:
            break
    reader = config.reader
    texts = [
        m.text
        for cube_id, units in by_cube.items()
        for m in cut_cube(cube_id, units, reader.window_messages, reader.window_chars).memories
    ]
    return texts[:wanted]


class Ceiling:
    """The embedder alone, in this process, on the job's texts: what ingest is measured by."""

    def __init__(self, config: MemosConfig, threads: int) -> None:
        cpu = time.process_time()
        # deferred: imports torch
        import torch

        torch.set_num_threads(threads)
        emb = config.embedder
        self._embedder = SentenceTransformerEmbedder(
            emb.model, device=emb.device, batch_size=emb.batch_size
        )
        # CPU time of this process (all threads) spent here, load included, so that a
        # bench counting the job's CPU can leave it out; and per text while timed.
        self.cpu_seconds = time.process_time() - cpu
        self.cpu_per_text: list[float] = []

    def measure(self, texts: list[str], batch_size: int) -> float:
        cpu = time.process_time()
        self._embedder.encode(texts[:64])  # warm-up (and the model load, the first time)
        started, timed_cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(texts), batch_size):
            self._embedder.encode(texts[start : start + batch_size])
        wall = time.perf_counter() - started
        self.cpu_per_text.append((time.process_time() - timed_cpu) / len(texts))
        self.cpu_seconds += time.process_time() - cpu
        return len(texts) / wall


# -- the job ------------------------------------------------------------------------------


def _embedded_owners(config: MemosConfig) -> dict[str, str]:
    """Named actors owning this data dir's embedded engines, and how each is stopped."""

    suffix = actor_suffix(config)
    owners: dict[str, str] = {}
    if isinstance(config.vector, QdrantEdgeConfig):
        owners[f"memos-vector-{suffix}"] = "close"
    if isinstance(config.graph, FalkorDBConfig) and not config.graph.address:
        owners[f"memos-falkordb-{suffix}"] = "stop"
    return owners


def _running(name: str, namespace: str) -> bool:

    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    return True


def _stop_owners(names: list[str], methods: dict[str, str], namespace: str) -> None:
    """Flush and stop the engines this job started (as `runtime.compose.stop_embedded`)."""

    for name in names:
        try:
            actor = ray.get_actor(name, namespace=namespace)
        except ValueError:
            continue
        try:
            ray.get(getattr(actor, methods[name]).remote(), timeout=60)
        finally:
            ray.kill(actor, no_restart=True)


def _cubes(args: IngestArgs, files: list[Path], cut: Any, cut_kwargs: dict[str, Any]) -> Any:
    """The input read, and `cut` applied to each cube's records, all together."""

    # The input files are on this driver's node (their paths were checked here): the read
    # tasks run there (a node-id label selector is a hard constraint, as Ray Data's own
    # local:// reads do), asking no CPU (it may be a head that takes no work; reading is
    # I/O); cutting, embedding and writing spread over the cluster.
    ds = ray.data.read_datasource(
        UnitSource([str(f) for f in files], args.format, args.user_id, args.limit),
        num_cpus=0,
        label_selector={NODE_ID_LABEL_KEY: ray.get_runtime_context().get_node_id()},
    )
    if args.format in ("locomo", "longmemeval"):
        # Rows are whole cubes already: one cube per task.
        return ds.map_batches(cut, batch_size=1, batch_format="pyarrow", fn_kwargs=cut_kwargs)
    # A cube's records may be anywhere in the input: bring each cube together (a hash
    # shuffle, with one partition per GROUP_BYTES of input: Ray's default of 200 costs
    # a minute of start-up on a small input).
    size = sum(f.stat().st_size for f in files)
    partitions = args.partitions or min(MAX_PARTITIONS, 1 + size // GROUP_BYTES)
    if partitions == 1:
        # All of it fits one group: one block, cut in one task (it groups by cube itself).
        # The shuffle's aggregator actors cost seconds to start; a re-run of a small file
        # that writes nothing took 8 s with them, 3.6 s without.
        return ds.repartition(1).map_batches(
            cut, batch_size=None, batch_format="pyarrow", fn_kwargs=cut_kwargs
        )
    return ds.groupby("cube_id", num_partitions=partitions).map_groups(
        cut, batch_format="pyarrow", fn_kwargs=cut_kwargs
    )


def _embedded(args: IngestArgs, config: MemosConfig, ds: Any, reserved: float = 0.0) -> Any:
    """`reserved`: CPUs the pipeline's other actors will hold (not free yet)."""

    # Embedding-sized blocks: embedding and writing then overlap batch by batch, and the
    # write left after the last embedding is one batch, not a whole cube.
    ds = ds.repartition(target_num_rows_per_block=args.embed_batch_size)
    emb = config.embedder
    cores = os.cpu_count() or 1
    threads = args.threads or (None if args.num_gpus else max(1, cores // args.actors))
    runtime_env = (
        {"env_vars": {"OMP_WAIT_POLICY": emb.omp_wait_policy}} if emb.omp_wait_policy else None
    )
    pool = args.max_actors or args.actors
    actor_cpus = args.actor_cpus
    if actor_cpus is None:
        # What is free now (a service in this cluster, the fine pass's LLM replicas hold
        # theirs), less one CPU for the read, cut and write tasks, or they could never run.
        spare = ray.available_resources().get("CPU", 1.0) - 1.0 - reserved
        actor_cpus = 1.0 if args.num_gpus else max(0.1, min(1.0, spare / pool))
    return ds.map_batches(
        EmbedStage,
        fn_constructor_kwargs={
            "model": emb.model,
            "device": emb.device if not args.num_gpus else "cuda",
            "batch_size": emb.batch_size,
            "threads": threads,
            "dim": emb.dim,
        },
        batch_size=args.embed_batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=args.actors, max_size=pool),
        num_cpus=actor_cpus,
        num_gpus=args.num_gpus or None,
        runtime_env=runtime_env,
    )


def _fast_pass(args: IngestArgs, config: MemosConfig, files: list[Path], run_id: str) -> Any:

    turns = not args.fine or config.fine.keep_turns
    kwargs = {"config": config, "run_id": run_id, "turns": turns}
    return _embedded(args, config, _cubes(args, files, cut_batch, kwargs))


def _fine_pass(
    args: IngestArgs, config: MemosConfig, files: list[Path], run_id: str, route: Any
) -> Any:

    ds = _cubes(args, files, fine_cut_batch, {"config": config, "run_id": run_id})
    ds = ds.map_batches(
        ExtractStage,
        fn_constructor_kwargs={
            "config": config,
            "run_id": run_id,
            "route": route,
            "concurrency": args.llm_concurrency,
        },
        batch_size=1,  # one cube a call: its windows are read concurrently
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=args.llm_actors),
        # They wait on the LLM: a small share each, so they never hold back other stages.
        num_cpus=EXTRACT_CPUS,
    )
    return _embedded(args, config, ds, reserved=EXTRACT_CPUS * args.llm_actors)


def run_ingest(args: IngestArgs) -> IngestSummary:
    """The whole job; joins a running Ray (tests, `--address`) or starts a local one."""

    config = job_config(args)
    files = input_files(args.input, args.format)
    if args.fine and isinstance(config.llm, NoLLMConfig):
        raise ConfigError(
            "--fine needs a chat model: set memos.llm (backend transformers, vllm or openai)"
        )
    threads = args.threads or os.cpu_count() or 1
    ceiling: Ceiling | None = None
    texts: list[str] = []
    before = after = None
    if args.ceiling_sample:
        texts = sample_texts(args, config, files)
        if texts:
            ceiling = Ceiling(config, threads)
            before = ceiling.measure(texts, args.embed_batch_size)
    owns_ray = not ray.is_initialized()
    if owns_ray:
        # A new cluster bound to loopback even when `ray start` left one running on this
        # machine; under `ray job submit`, RAY_ADDRESS names the cluster the job was submitted to.
        connect_or_start_ray(
            args.address,
            namespace=config.serving.namespace,
            include_dashboard=False,
            log_to_driver=False,
        )
    check_cluster(config)
    owners = _embedded_owners(config)
    started = [n for n in owners if not _running(n, config.serving.namespace)]
    run_id = uuid.uuid4().hex
    fine: FineSummary | None = None
    route: LLMRoute | None = None
    try:
        # Before anything is written: a named LLM app that does not run is an error now.
        # (The job's own deployment, if it needs one, is made on demand.)
        if args.fine:
            route = open_llm(config, args.llm_app, args.llm_replicas, owns_ray=owns_ray)
        ray.data.DataContext.get_current().enable_progress_bars = args.progress
        stores_for(config, run_id)  # the store owners start here, once, before any worker
        sink = MemorySink(config, run_id, args.write_batch)
        began = time.time()
        _fast_pass(args, config, files, run_id).write_datasink(sink)
        ended = time.time()
        if route is not None:
            fine = _run_fine(args, config, files, run_id, route)
    finally:
        drop_stores(config)
        try:
            _stop_owners(started, owners, config.serving.namespace)
        finally:
            if owns_ray:
                ray.shutdown()
    if ceiling is not None:
        after = ceiling.measure(texts, args.embed_batch_size)
    summary = _summary(sink.totals, began, ended, before, after)
    if ceiling is not None and ceiling.cpu_per_text:
        per_text = sum(ceiling.cpu_per_text) / len(ceiling.cpu_per_text)
        summary.embedder_cpu_ms_per_text = round(per_text * 1000, 3)
        summary.ceiling_cpu_seconds = round(ceiling.cpu_seconds, 3)
    if fine is not None:
        summary.fine = fine
        summary.memories_written += fine.memories_written
        summary.memories_skipped += fine.memories_skipped
        summary.edges += fine.edges
        summary.seconds = round(summary.seconds + fine.seconds, 3)
    return summary


def _run_fine(
    args: IngestArgs, config: MemosConfig, files: list[Path], run_id: str, route: LLMRoute
) -> FineSummary:
    """The fine pass, after the fast one; removes the job's own LLM app when done."""

    began = time.time()
    label = ""
    try:
        sink = MemorySink(config, run_id, args.write_batch)
        _fine_pass(args, config, files, run_id, route).write_datasink(sink)
    finally:
        label = close_llm(route)
    totals = sink.totals
    fine = FineSummary(
        **totals.fine.model_dump(),
        memories_written=totals.written,
        memories_skipped=totals.skipped,
        edges=totals.links,
        llm=label,
    )
    fine.llm_seconds = round(fine.llm_seconds, 3)
    if fine.preference_tasks:
        wake_schedulers(config)
    fine.seconds = round(time.time() - began, 3)
    return fine


def _summary(
    totals: WriteCounts, began: float, ended: float, before: float | None, after: float | None
) -> IngestSummary:
    seconds = ended - began
    startup = min(max(totals.ready_at - began, 0.0), seconds) if totals.ready_at else 0.0
    rate = totals.written / seconds if seconds > 0 else 0.0
    steady = totals.written / (seconds - startup) if seconds > startup else 0.0
    measured = [m for m in (before, after) if m]
    ceiling = sum(measured) / len(measured) if measured else None
    has_ratio = bool(ceiling and totals.written)
    return IngestSummary(
        rows=totals.records,
        bad_rows=totals.bad,
        cubes=len(totals.cubes),
        memories_written=totals.written,
        memories_skipped=totals.skipped,
        edges=len(totals.edges),
        seconds=round(seconds, 3),
        startup_seconds=round(startup, 3),
        memories_per_s=round(rate, 2),
        steady_memories_per_s=round(steady, 2),
        embedder_ceiling_per_s=round(ceiling, 2) if ceiling else None,
        ratio=round(steady / ceiling, 3) if has_ratio and ceiling else None,
        ratio_overall=round(rate / ceiling, 3) if has_ratio and ceiling else None,
        embedder_ceiling_before_per_s=round(before, 2) if before else None,
        embedder_ceiling_after_per_s=round(after, 2) if after else None,
        bad_examples=totals.bad_examples[:20],
    )


# -- command line ---------------------------------------------------------------------------


def _load_yaml(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ingest args, memos config) from a job config, or the memos config of a Serve config."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping")
    if "applications" in data:  # a Serve config: take the memos app's config
        apps = data.get("applications") or []
        memos: dict[str, Any] = next((a.get("args", {}).get("config", {}) for a in apps), {})
        return {}, memos or {}
    return dict(data.get("ingest") or {}), dict(data.get("memos") or {})


def parse_args(argv: list[str] | None = None) -> IngestArgs:
    p = argparse.ArgumentParser(prog="python -m jobs.ingest", description=__doc__.split("\n")[0])
    p.add_argument(
        "--config",
        help="YAML: `ingest:` (these options) and `memos:` (stores), "
        "or a Serve config whose app config is used",
    )
    p.add_argument("--format", choices=FORMATS)
    p.add_argument("--input", action="append", help="file or directory (repeatable)")
    p.add_argument("--data-dir", help="data dir of the embedded stores (default MEMOS_DATA_DIR)")
    p.add_argument("--address", help="Ray cluster to join ('auto': the local one's head)")
    p.add_argument("--user-id", help="owner of records without user_id (default 'ingest')")
    p.add_argument("--limit", type=int, help="first N records / conversations per file")
    p.add_argument("--embed-batch-size", type=int, help="rows per embedding call (256)")
    p.add_argument("--actors", type=int, help="embedding actors (1)")
    p.add_argument("--max-actors", type=int, help="let the pool grow to this many")
    p.add_argument("--num-gpus", type=float, help="GPUs per embedding actor (0)")
    p.add_argument("--threads", type=int, help="torch threads per embedding actor")
    p.add_argument("--actor-cpus", type=float, help="Ray CPUs reserved per embedding actor")
    p.add_argument("--write-batch", type=int, help="rows per store write (512)")
    p.add_argument("--partitions", type=int, help="JSONL/Parquet: cube shuffle partitions")
    p.add_argument("--ceiling-sample", type=int, help="texts timed on the embedder alone (256)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.add_argument(
        "--fine", action="store_true", default=None, help="also extract facts with the LLM"
    )
    p.add_argument("--llm-app", help="--fine: the Serve app whose LLMDeployment reads windows")
    p.add_argument("--llm-replicas", type=int, help="--fine: replicas of a job-deployed LLM")
    p.add_argument("--llm-actors", type=int, help="--fine: extraction actors (1)")
    p.add_argument("--llm-concurrency", type=int, help="--fine: windows in flight per actor (16)")
    ns = p.parse_args(argv)
    values, memos = _load_yaml(ns.config) if ns.config else ({}, {})
    flags = {k: v for k, v in vars(ns).items() if k != "config" and v is not None}
    values.update(flags)
    values["memos"] = {**memos, **values.get("memos", {})}
    try:
        return IngestArgs.model_validate(values)
    except ValueError as exc:
        p.error(str(exc))
        raise  # unreachable: error() exits


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args = parse_args(argv)
    try:
        summary = run_ingest(args)
    except (ConfigError, FileNotFoundError, ValidationError) as exc:
        # What the user must fix (input paths, config, a missing model): no traceback.
        print(f"jobs.ingest: error: {exc}", file=sys.stderr)
        return 2
    for bad in summary.bad_examples:
        print(f"bad record {bad['source']}:{bad['line']}: {bad['error']}", file=sys.stderr)
    sys.stdout.flush()
    print(json.dumps(summary.model_dump()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
