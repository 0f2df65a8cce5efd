"""The fine pass of `jobs.ingest --fine`: windows read by the LLM deployment, in batches.

It runs after the fast pass has stored the turns and document chunks (so the facts' `MATERIAL`
edges always find both ends): read -> cut each cube into fine windows -> extract on an actor
pool, each actor keeping `llm_concurrency` windows in flight to the LLM deployment (whose
replicas batch them: vLLM continuously, on GPU) -> embed -> write, edges with their facts.

Each window's answer is recorded in `ingest_extractions` before anything derived from it is
written, and the memories are derived from the records alone: a re-run asks the LLM only for
windows it never answered, and writes exactly what a clean run would have.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import pyarrow as pa
from ray import serve

from jobs.ingest_stages import MEMORY_SCHEMA, Stores, row, stored_ids, stores_for, units_by_cube
from memos_ray import metrics
from memos_ray.config import MemosConfig, NoPreferenceConfig
from memos_ray.models.chat import ChatModel
from memos_ray.runtime.compose import build_tenancy_store
from memos_ray.runtime.jobs_llm import LLMRoute, chat_model_for
from memos_ray.scheduler.actor import SchedulerClient
from memos_ray.scheduler.feed import FeedingTaskStore
from memos_ray.services.fine_reader import FineReader
from memos_ray.services.ingest.extractions import ExtractionLedger
from memos_ray.services.ingest.fine import (
    FINE_SEQ_BASE,
    FineCounts,
    FineRecord,
    FineWindow,
    fine_memories,
    fine_windows,
)
from memos_ray.services.memory import embedding_text
from memos_ray.stores.sql.tasks import SQLTaskStore

logger = logging.getLogger("memos_ray.jobs.ingest_fine")

_TASK_NAMESPACE = uuid.UUID("6c1f4a52-93c1-4d51-9a47-0b5d2f1e7c30")

WINDOWS_SCHEMA = pa.schema([("cube_id", pa.string()), ("windows", pa.string())])


def fine_cut_batch(batch: pa.Table, *, config: MemosConfig, run_id: str) -> pa.Table:
    """Rows of whole cubes (or one cube's group) in, one row per cube's windows out.

    Cubes the fast pass refused (moved by jobs.reembed) give none."""
    units, _ = units_by_cube(batch)  # bad records: reported by the fast pass
    stores = stores_for(config, run_id) if units else None
    moved = stores.moved_cubes(config, list(units)) if stores is not None else {}
    out = []
    for cube_id, cube_units in units.items():
        if cube_id in moved:
            continue
        windows = fine_windows(cube_id, cube_units, config.fine, config.reader)
        if windows:
            payload = "[" + ",".join(w.model_dump_json() for w in windows) + "]"
            out.append({"cube_id": cube_id, "windows": payload})
    return pa.Table.from_pylist(out, schema=WINDOWS_SCHEMA)


class ExtractStage:
    """One per actor of the pool: a cube's windows read concurrently, records kept first."""

    def __init__(self, config: MemosConfig, run_id: str, route: LLMRoute, concurrency: int) -> None:
        self._config = config
        self._run_id = run_id
        self._route = route
        self._concurrency = concurrency
        self._model: ChatModel | None = None
        self._ledger: ExtractionLedger | None = None
        self._tasks: Any = None

    def _stores(self) -> Stores:
        stores = stores_for(self._config, self._run_id)
        if self._ledger is None:
            engine = stores.tenancy.engine
            self._ledger = ExtractionLedger(engine)
            self._tasks = FeedingTaskStore(SQLTaskStore(engine), self._config)
        return stores

    def __call__(self, batch: pa.Table) -> pa.Table:
        stores = self._stores()
        out: list[dict[str, Any]] = []
        for cube_id, payload in zip(
            batch.column("cube_id").to_pylist(), batch.column("windows").to_pylist(), strict=True
        ):
            windows = [FineWindow.model_validate(w) for w in json.loads(payload)]
            out += self._cube(stores, cube_id, windows)
        return pa.Table.from_pylist(out, schema=MEMORY_SCHEMA)

    def _cube(
        self, stores: Stores, cube_id: str, windows: list[FineWindow]
    ) -> list[dict[str, Any]]:
        counts = FineCounts(windows=len(windows))
        records = self._records(stores, cube_id, windows, counts)
        fine = self._config.fine
        made = fine_memories(cube_id, windows, records, keep_turns=fine.keep_turns)
        counts.failed, counts.empty = made.failed, made.empty
        counts.preference_tasks = self._queue_preferences(cube_id, made.preferences, windows)
        ids = [item.id for item in made.items]
        present = stored_ids(stores, cube_id, ids)
        rows = [row("count", cube_id, fine=counts.model_dump_json())]
        for n, item in enumerate(made.items):
            links = made.links.get(item.id) or []
            rows.append(
                row(
                    "memory",
                    cube_id,
                    id=item.id,
                    item=item.model_dump_json(),
                    text=embedding_text(item),
                    seq=FINE_SEQ_BASE + n,
                    exists=item.id in present,
                    links=json.dumps([[e.source, e.target, str(e.type)] for e in links])
                    if links
                    else "",
                )
            )
        return rows

    def _records(
        self, stores: Stores, cube_id: str, windows: Sequence[FineWindow], counts: FineCounts
    ) -> dict[str, FineRecord]:
        """Recorded answers, asking the LLM for the windows that have none (each answer is
        recorded as soon as it comes, so a crash loses at most the ones in flight)."""

        assert self._ledger is not None
        found = self._ledger.get_many([w.window_id for w in windows])
        records = {wid: FineRecord.model_validate_json(r) for wid, r in found.items()}
        counts.reused = len(records)
        missing = [w for w in windows if w.window_id not in records]
        if not missing:
            return records
        if self._model is None:
            self._model = chat_model_for(self._config, self._route)
        fine = self._config.fine
        reader = FineReader(self._model, max_attempts=fine.max_attempts, max_tokens=fine.max_tokens)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self._concurrency) as pool:
            futures = {pool.submit(reader.extract, w.window()): w for w in missing}
            try:
                for future in as_completed(futures):
                    window = futures[future]
                    record = FineRecord.from_result(future.result())
                    answer = {window.window_id: record.model_dump_json()}
                    kept = self._ledger.record(cube_id, answer)[window.window_id]
                    records[window.window_id] = FineRecord.model_validate_json(kept)
                    counts.read += 1
                    counts.llm_calls += record.calls
                    counts.prompt_tokens += record.prompt_tokens
                    counts.completion_tokens += record.completion_tokens
            finally:
                for future in futures:
                    future.cancel()
                counts.llm_seconds = round(time.perf_counter() - started, 3)
                metrics.llm_tokens("ingest", counts.prompt_tokens, counts.completion_tokens)
                if counts.llm_calls:
                    stores.tenancy.record_llm_usage(
                        cube_id, counts.prompt_tokens, counts.completion_tokens, counts.llm_calls
                    )
        return records

    def _queue_preferences(
        self, cube_id: str, batches: Sequence[tuple[str, Any]], windows: Sequence[FineWindow]
    ) -> int:
        """Preferences go to the cube's `pref_add` tasks, as the service's own reading does:
        the service applies them in order with the cube's other writes (one queued while no
        service runs waits in the task store for the next start). Task ids are derived from
        the window, so a re-run queues nothing twice."""
        if not batches or isinstance(self._config.preference, NoPreferenceConfig):
            return 0
        users = {w.window_id: w.user_id for w in windows}
        for window_id, batch in batches:
            self._tasks.enqueue(
                cube_id,
                users[window_id],
                "pref_add",
                {"batches": [batch.model_dump(mode="json")]},
                max_attempts=self._config.scheduler.max_attempts,
                task_id=str(uuid.uuid5(_TASK_NAMESPACE, f"{window_id}\x00pref_add")),
            )
        return len(batches)


def wake_schedulers(config: MemosConfig) -> int:
    """When the service runs in this cluster, its schedulers start on the queued
    preference tasks now (otherwise they run when it next starts)."""

    if config.serving.app_name not in serve.status().applications:
        return 0

    tenancy = build_tenancy_store(config)
    try:
        return SchedulerClient(config, SQLTaskStore(tenancy.engine)).resume_all()
    finally:
        tenancy.close()
