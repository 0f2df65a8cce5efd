"""The Ray Data stages of `jobs.ingest`: read, cut (with the existence check), embed, write.

Rows between stages are plain columns; a memory travels as its item JSON, the text to embed
and its `seq`. Crash safety rests on two rules:

- ids are deterministic (`memory_id_for`), and every write is an upsert by id;
- a memory counts as stored only when BOTH stores hold it (graph written first, vectors
  last). A run killed between the two writes, or a graph that lost its last second of
  writes with its server, leaves memories that the next run simply writes again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import Block, BlockAccessor, BlockMetadata
from ray.data.datasource import Datasink
from ray.data.datasource.datasink import WriteResult

from memos_ray.config import MemosConfig
from memos_ray.domain.memory import Edge, MemoryItem
from memos_ray.errors import ConflictError
from memos_ray.models.embedder import Encoded, SentenceTransformerEmbedder
from memos_ray.runtime.compose import build_ray_stores, build_tenancy_store
from memos_ray.services.ingest.cutting import cut_cube
from memos_ray.services.ingest.fine import FineCounts
from memos_ray.services.ingest.formats import BadRecord, Unit, read_units
from memos_ray.services.memory import vector_records
from memos_ray.services.space_registry import SpaceRegistry
from memos_ray.services.spaces import default_space
from memos_ray.stores.graph.base import GraphStore
from memos_ray.stores.sql.sqlalchemy import SQLTenancyStore
from memos_ray.stores.vector.base import VectorStore

logger = logging.getLogger("memos_ray.jobs.ingest_stages")

READ_BLOCK_ROWS = 1024
# Ids per existence query (both stores take them as one filtered call).
CHECK_CHUNK = 1024
# Bad records kept for the report (all are counted).
BAD_KEPT = 100


# -- stores, one set per worker process ---------------------------------------------------


@dataclass
class Stores:
    run_id: str
    graph: GraphStore
    vectors: VectorStore
    tenancy: SQLTenancyStore
    known_cubes: set[str] = field(default_factory=set)
    _spaces: Any = None

    def moved_cubes(self, config: MemosConfig, cube_ids: Sequence[str]) -> dict[str, str]:
        """Cubes `jobs.reembed` moved out of the configured embedding space, with where to.

        The job embeds with the configured model into the configured store only; writing a
        moved cube's memories there would hide them from its searches.
        """

        if self._spaces is None:
            self._spaces = SpaceRegistry(self.tenancy.engine)
        default = default_space(config)
        records = self._spaces.get_many(cube_ids)
        return {c: r.active.slug for c, r in records.items() if r.active != default}

    def close(self) -> None:
        """This process's connections only; the engines are shared and stay up."""
        for closing in (self.graph.close, self.vectors.close, self.tenancy.close):
            try:
                closing()
            except Exception as exc:  # a store already gone: nothing left to release
                logger.debug("closing a store of run %s: %r", self.run_id, exc)


_STORES: dict[str, Stores] = {}


def stores_for(config: MemosConfig, run_id: str) -> Stores:
    """Built once per worker process and run: Ray reuses workers across tasks, and across
    jobs in one cluster, whose store owners may have been restarted in between."""

    key = str(config.data_dir)
    cached = _STORES.get(key)
    if cached is not None and cached.run_id != run_id:
        cached.close()
        cached = None
    if cached is None:
        graph, vectors = build_ray_stores(config)
        cached = _STORES[key] = Stores(run_id, graph, vectors, build_tenancy_store(config))
    return cached


def drop_stores(config: MemosConfig) -> None:
    cached = _STORES.pop(str(config.data_dir), None)
    if cached is not None:
        cached.close()


def stored_ids(stores: Stores, cube_id: str, ids: Sequence[str]) -> set[str]:
    """Ids present in both stores (a memory half-written by a killed run is absent)."""
    present: set[str] = set()
    for start in range(0, len(ids), CHECK_CHUNK):
        chunk = list(ids[start : start + CHECK_CHUNK])
        in_graph = stores.graph.existing_ids(cube_id, chunk)
        if not in_graph:
            continue
        in_vectors = stores.vectors.existing_ids(cube_id, sorted(in_graph))
        present |= in_graph & in_vectors
    return present


# -- read -----------------------------------------------------------------------------------


def _rows_table(rows: list[dict[str, str]]) -> pa.Table:
    return pa.Table.from_pylist(
        rows,
        schema=pa.schema([("cube_id", pa.string()), ("units", pa.string()), ("bad", pa.string())]),
    )


def _read_file(
    path: str, index: int, fmt: str, user: str, limit: int | None, whole_cubes: bool
) -> Iterator[pa.Table]:
    """Rows of (cube_id, units JSON list, bad JSON). Benchmark files come one cube a row."""
    rows: list[dict[str, str]] = []
    cubes: dict[str, list[str]] = {}
    for entry in read_units(Path(path), index, fmt, user, limit):
        if isinstance(entry, BadRecord):
            bad = {"source": entry.source, "line": entry.line, "error": entry.error}
            rows.append({"cube_id": "", "units": "", "bad": json.dumps(bad)})
        elif whole_cubes:
            cubes.setdefault(entry.cube_id, []).append(entry.model_dump_json())
            continue
        else:
            rows.append(
                {"cube_id": entry.cube_id, "units": f"[{entry.model_dump_json()}]", "bad": ""}
            )
        if len(rows) >= READ_BLOCK_ROWS:
            yield _rows_table(rows)
            rows = []
    rows += [{"cube_id": c, "units": f"[{','.join(u)}]", "bad": ""} for c, u in cubes.items()]
    if rows:
        yield _rows_table(rows)


class UnitSource(Datasource):
    """One read task per input file (split big inputs into several files to read in parallel)."""

    def __init__(self, files: Sequence[str], fmt: str, user: str, limit: int | None) -> None:
        super().__init__()
        self._files = list(files)
        self._fmt = fmt
        self._user = user
        self._limit = limit

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(os.path.getsize(f) for f in self._files)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        whole_cubes = self._fmt in ("locomo", "longmemeval")
        return [
            ReadTask(
                partial(_read_file, path, index, self._fmt, self._user, self._limit, whole_cubes),
                BlockMetadata(
                    num_rows=None,
                    size_bytes=os.path.getsize(path),
                    exec_stats=None,
                    input_files=(path,),
                ),
                per_task_row_limit=per_task_row_limit,
            )
            for index, path in enumerate(self._files)
        ]


# -- cut ------------------------------------------------------------------------------------

MEMORY_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # "memory" | "bad" | "count" (a cube that gave no memory)
        ("cube_id", pa.string()),
        ("id", pa.string()),
        ("item", pa.string()),
        ("text", pa.string()),
        ("seq", pa.int64()),
        ("exists", pa.bool_()),
        ("records", pa.int64()),
        ("edges", pa.string()),
        ("bad", pa.string()),
        # Edges of this memory, written with it (both ends exist: fine pass only).
        ("links", pa.string()),
        # The fine pass's counts for a cube (FineCounts JSON, on its "count" row).
        ("fine", pa.string()),
    ]
)


def row(kind: str, cube_id: str = "", **values: Any) -> dict[str, Any]:
    out = {"kind": kind, "cube_id": cube_id, "id": "", "item": "", "text": "", "seq": 0}
    out.update({"exists": False, "records": 0, "edges": "", "bad": "", "links": "", "fine": ""})
    out.update(values)
    return out


def units_by_cube(batch: pa.Table) -> tuple[dict[str, list[Unit]], list[str]]:
    """A read batch's units by cube, and its bad records (JSON)."""
    units: dict[str, list[Unit]] = defaultdict(list)
    bad_records: list[str] = []
    for cube_id, payload, bad in zip(
        batch.column("cube_id").to_pylist(),
        batch.column("units").to_pylist(),
        batch.column("bad").to_pylist(),
        strict=True,
    ):
        if bad:
            bad_records.append(bad)
        else:
            units[cube_id] += [Unit.model_validate(u) for u in json.loads(payload)]
    return units, bad_records


def cut_batch(batch: pa.Table, *, config: MemosConfig, run_id: str, turns: bool = True) -> pa.Table:
    """Rows of whole cubes (or one cube's group) in, one row per memory out, flagged when
    already stored. A cube's first row carries its record count and document edges.

    `turns=False` (fine ingest without `fine.keep_turns`): document chunks only."""
    units, bad_records = units_by_cube(batch)
    out = [row("bad", records=1, bad=bad) for bad in bad_records]
    reader = config.reader
    stores = stores_for(config, run_id) if units else None
    moved = stores.moved_cubes(config, list(units)) if stores is not None else {}
    for cube_id, cube_units in units.items():
        kept = cube_units if turns else [u for u in cube_units if u.document is not None]
        cut = cut_cube(cube_id, kept, reader.window_messages, reader.window_chars)
        cut.records = sum(u.records for u in cube_units)
        if cube_id in moved:
            error = (
                f"cube {cube_id} is in embedding space {moved[cube_id]} (moved by jobs.reembed);"
                " this job writes the configured space only: its records were not ingested"
            )
            bad = json.dumps({"source": f"cube:{cube_id}", "line": 0, "error": error})
            out.append(row("bad", cube_id, records=cut.records, bad=bad))
            continue
        edges = (
            json.dumps([[e.source, e.target, str(e.type)] for e in cut.edges]) if cut.edges else ""
        )
        if not cut.memories:
            out.append(row("count", cube_id, records=cut.records))
            continue
        ids = [m.item.id for m in cut.memories]
        present = stored_ids(stores, cube_id, ids) if stores is not None else set()
        for n, memory in enumerate(cut.memories):
            out.append(
                row(
                    "memory",
                    cube_id,
                    id=memory.item.id,
                    item=memory.item.model_dump_json(),
                    text=memory.text,
                    seq=memory.seq,
                    exists=memory.item.id in present,
                    records=cut.records if n == 0 else 0,
                    edges=edges if n == 0 else "",
                )
            )
    return pa.Table.from_pylist(out, schema=MEMORY_SCHEMA)


# -- embed ----------------------------------------------------------------------------------


class EmbedStage:
    """One per actor of the pool: embeds the rows still to write.

    The model loads on the first batch with something to embed (a re-run of stored input
    loads none). `ready_at` (epoch seconds, on every row) is when this actor's model was
    ready, so the driver can tell start-up from steady throughput.
    """

    def __init__(
        self, model: str | None, device: str, batch_size: int, threads: int | None, dim: int
    ) -> None:
        self._options = (model, device, batch_size)
        self._threads = threads
        self._dim = dim
        self._embedder: Any = None
        self._ready_at = 0.0

    def _load(self) -> Any:
        # deferred: imports torch
        import torch

        if self._threads:
            torch.set_num_threads(self._threads)
        model, device, batch_size = self._options
        embedder = SentenceTransformerEmbedder(model, device=device, batch_size=batch_size)
        if embedder.dim != self._dim:
            raise ValueError(
                f"the embedder gives {embedder.dim}-d vectors, config says {self._dim}"
            )
        embedder.encode(["warm up"])
        self._ready_at = time.time()
        return embedder

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        todo = np.flatnonzero((batch["kind"] == "memory") & ~batch["exists"].astype(bool))
        n = len(batch["kind"])
        dense = np.zeros((n, self._dim), dtype=np.float32)
        tokens = np.empty(n, dtype=object)
        tokens[:] = b""
        counts = np.zeros(n, dtype=np.int32)
        if len(todo):
            if self._embedder is None:
                self._embedder = self._load()
            encoded = self._embedder.encode([str(batch["text"][i]) for i in todo])
            dense[todo] = encoded.dense
            for at, tok in zip(todo, encoded.tokens or [], strict=False):
                tokens[at] = np.ascontiguousarray(tok, dtype=np.float16).tobytes()
                counts[at] = len(tok)
        batch["dense"] = dense
        batch["tokens"] = tokens
        batch["token_count"] = counts
        batch["ready_at"] = np.full(n, self._ready_at)
        return batch


# -- write ----------------------------------------------------------------------------------


@dataclass
class WriteCounts:
    records: int = 0
    written: int = 0
    skipped: int = 0
    bad: int = 0
    bad_examples: list[dict[str, Any]] = field(default_factory=list)
    edges: list[tuple[str, str, str, str]] = field(default_factory=list)
    cubes: set[str] = field(default_factory=set)
    # Edges written with their memories (the fine pass's MATERIAL and SUMMARY edges).
    links: int = 0
    # The fine pass's counts, summed over cubes.
    fine: FineCounts = field(default_factory=FineCounts)
    # When the first embedding actor was ready (epoch seconds; 0: none was needed).
    ready_at: float = 0.0

    def add(self, other: WriteCounts) -> None:
        if other.ready_at and (not self.ready_at or other.ready_at < self.ready_at):
            self.ready_at = other.ready_at
        self.records += other.records
        self.written += other.written
        self.skipped += other.skipped
        self.bad += other.bad
        room = BAD_KEPT - len(self.bad_examples)
        self.bad_examples += other.bad_examples[: max(room, 0)]
        self.edges += other.edges
        self.cubes |= other.cubes
        self.links += other.links
        self.fine.add(other.fine)


class MemorySink(Datasink[WriteCounts]):
    """Graph nodes, then vector points, per cube and batch. Document edges are written once
    all nodes exist; a memory's own `links` right after its node, before its vector point
    (the point is what marks it stored, so a crash never leaves a stored memory unlinked)."""

    def __init__(self, config: MemosConfig, run_id: str, rows_per_write: int) -> None:
        self._config = config
        self._run_id = run_id
        self._rows_per_write = rows_per_write
        self.totals = WriteCounts()

    @property
    def min_rows_per_write(self) -> int | None:
        return self._rows_per_write

    def get_name(self) -> str:
        return "MemoryStores"

    def write(self, blocks: Iterable[Block], ctx: Any) -> WriteCounts:
        counts = WriteCounts()
        stores = stores_for(self._config, self._run_id)
        for block in blocks:
            batch = BlockAccessor.for_block(block).to_batch_format("numpy")
            self._write_batch(stores, batch, counts)
        return counts

    def _write_batch(
        self, stores: Stores, batch: dict[str, np.ndarray], counts: WriteCounts
    ) -> None:
        pending: dict[str, list[int]] = defaultdict(list)
        ready = batch["ready_at"][batch["ready_at"] > 0]
        if len(ready):
            counts.add(WriteCounts(ready_at=float(ready.min())))
        for i, kind in enumerate(batch["kind"]):
            counts.records += int(batch["records"][i])
            if kind == "bad":  # a bad record, or a refused cube's records
                counts.bad += int(batch["records"][i])
                if len(counts.bad_examples) < BAD_KEPT:
                    counts.bad_examples.append(json.loads(str(batch["bad"][i])))
                continue
            cube_id = str(batch["cube_id"][i])
            counts.cubes.add(cube_id)
            if batch["fine"][i]:
                counts.fine.add(FineCounts.model_validate_json(str(batch["fine"][i])))
            if batch["edges"][i]:
                counts.edges += [
                    (cube_id, s, t, k) for s, t, k in json.loads(str(batch["edges"][i]))
                ]
            if kind != "memory":
                continue
            if bool(batch["exists"][i]):
                counts.skipped += 1
            else:
                pending[cube_id].append(i)
        dim = batch["dense"].shape[1] if len(batch["kind"]) else 0
        for cube_id, rows in pending.items():
            items = [MemoryItem.model_validate_json(str(batch["item"][i])) for i in rows]
            self._register(stores, cube_id, items[0].metadata.user_id)
            tokens = [
                np.frombuffer(batch["tokens"][i], dtype=np.float16).reshape(
                    int(batch["token_count"][i]), dim
                )
                for i in rows
            ]
            encoded = Encoded(np.asarray(batch["dense"][rows], dtype=np.float32), tokens)
            records = vector_records(items, [int(batch["seq"][i]) for i in rows], encoded)
            stores.graph.upsert_nodes(cube_id, items)
            links = [
                Edge(source=s, target=t, type=k)
                for i in rows
                if batch["links"][i]
                for s, t, k in json.loads(str(batch["links"][i]))
            ]
            if links:
                stores.graph.add_edges(cube_id, links)
                counts.links += len(links)
            stores.vectors.upsert(cube_id, records)
            counts.written += len(items)

    @staticmethod
    def _register(stores: Stores, cube_id: str, user_id: str) -> None:
        """The cube exists for the API before its memories do (owned by its first user)."""

        if cube_id in stores.known_cubes:
            return
        if stores.tenancy.get_cube(cube_id) is None:
            stores.tenancy.ensure_user(user_id)
            # ConflictError: created meanwhile by another writer.
            with contextlib.suppress(ConflictError):
                stores.tenancy.create_cube(cube_id, cube_id, user_id)
        stores.known_cubes.add(cube_id)

    def on_write_complete(self, write_result: WriteResult[WriteCounts]) -> None:
        for counts in write_result.write_returns:
            self.totals.add(counts)
        self._write_edges()

    def _write_edges(self) -> None:
        """Idempotent (MERGE): rewritten on every run, so a crash never loses them."""
        if not self.totals.edges:
            return
        stores = stores_for(self._config, self._run_id)
        by_cube: dict[str, list[Edge]] = defaultdict(list)
        for cube_id, source, target, kind in self.totals.edges:
            by_cube[cube_id].append(Edge(source=source, target=target, type=kind))
        for cube_id, edges in by_cube.items():
            stores.graph.add_edges(cube_id, edges)
