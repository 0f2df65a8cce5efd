"""The add use case: a request's turns, tool traces and files, stored in each writable cube.

All or nothing per request: what a failed request wrote is removed again, and the fine
reading an async add asks for is recorded only after its memories are written (and
discarded if the request fails), so an add that does not answer leaves neither memories
nor a task.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from memos_ray import metrics
from memos_ray.config import MemosConfig, ReaderConfig
from memos_ray.core.documents import Document
from memos_ray.core.reader import Window
from memos_ray.domain.memory import DEFAULT_SESSION, MemoryItem, memory_id_for
from memos_ray.schemas.product import AddRequest
from memos_ray.services.documents import add_documents
from memos_ray.services.fine import FineService
from memos_ray.services.inputs import (
    documents_from_request,
    tool_windows_from_request,
    windows_from_request,
)
from memos_ray.services.memory import AddOutcome, MemoryService
from memos_ray.stores.sql.tasks import Task

logger = logging.getLogger("memos_ray.services.add")


class TaskQueue(Protocol):
    """What the use cases need of the per-cube scheduler (`scheduler.actor.SchedulerClient`)."""

    def ensure_room(self, cube_ids: Sequence[str]) -> None: ...

    def record(
        self,
        cube_id: str,
        user_id: str,
        label: str,
        payload: dict[str, Any],
        *,
        task_id: str,
        request_task_id: str | None = None,
    ) -> Task: ...

    def submit(self, cube_id: str, user_id: str, label: str, payload: dict[str, Any]) -> Task: ...

    def wake(self, cube_id: str) -> None: ...

    def discard(self, task_ids: Sequence[str]) -> int: ...


@dataclass(frozen=True)
class Added:
    """One memory an add answers with; `action` names what a fine or document add did."""

    item: MemoryItem
    cube_id: str
    action: str | None = None
    task_id: str | None = None


@dataclass
class AddResult:
    added: list[Added] = field(default_factory=list)
    message: str = ""


def fine_read_task_id(cube_id: str, memory_ids: Sequence[str], request_task_id: str | None) -> str:
    """The `mem_read` task of an add, derived from what it reads: a retried add (the first
    try died between its write and its answer) finds the task recorded before instead of
    queueing the same reading twice."""
    key = "\x00".join(["mem_read", cube_id, request_task_id or "", *sorted(memory_ids)])
    return uuid.uuid5(uuid.NAMESPACE_OID, key).hex


class _Writes:
    """What one request stored (not its duplicates), per cube, for the undo."""

    def __init__(self, memory: MemoryService) -> None:
        self.memory = memory
        self.ids: dict[str, list[str]] = {}

    def store(
        self, cube_id: str, user_id: str, windows: Sequence[Window], req: AddRequest
    ) -> AddOutcome:
        outcome = self.memory.add_windows(
            cube_id,
            user_id,
            windows,
            session_id=req.session_id or DEFAULT_SESSION,
            tags=req.custom_tags or (),
            info=req.info,
        )
        self.of(cube_id).extend(i.id for i in outcome.stored)
        return outcome

    def of(self, cube_id: str) -> list[str]:
        return self.ids.setdefault(cube_id, [])

    def undo(self) -> None:
        """Best effort: a store that stays down keeps them half written or whole, and the
        client's retry (same ids) settles them."""
        for cube_id, ids in self.ids.items():
            if not ids:
                continue
            try:
                self.memory.delete(cube_id, ids)
            except Exception:
                logger.warning(
                    "cube %s: could not undo %d memories", cube_id, len(ids), exc_info=True
                )


class AddService:
    """`/product/add`: fast memories, sync fine reading, documents and tool traces."""

    def __init__(
        self,
        config: MemosConfig,
        memory: MemoryService,
        fine: FineService | None = None,
        tasks: TaskQueue | None = None,
    ) -> None:
        self.config = config
        self.memory = memory
        self.fine = fine
        self.tasks = tasks

    def add(self, req: AddRequest, user_id: str, cubes: list[str]) -> AddResult:
        started, outcome = time.monotonic(), "error"
        try:
            result = self._add(req, user_id, cubes)
            outcome = "ok"
            return result
        finally:
            metrics.ADD_SECONDS.observe(
                time.monotonic() - started,
                mode=req.mode or "default",
                async_mode=req.async_mode,
                outcome=outcome,
            )

    def _add(self, req: AddRequest, user_id: str, cubes: list[str]) -> AddResult:
        fine = req.mode == "fine" and req.async_mode == "sync" and self.fine is not None
        reader = self.config.reader
        if fine:
            reader = ReaderConfig(
                window_messages=self.config.fine.window_messages,
                window_chars=self.config.fine.window_chars,
            )
        limits = self.config.limits
        documents = documents_from_request(req, limits)
        tools = tool_windows_from_request(req)
        windows = windows_from_request(req, reader, limits, allow_empty=bool(documents or tools))
        fine_reads = self._wants_fine_reads(req, windows)
        if fine_reads:
            assert self.tasks is not None
            self.tasks.ensure_room(cubes)  # a full queue refuses before any write
        writes = _Writes(self.memory)
        try:
            result = self._documents(req, user_id, cubes, documents, fine, writes)
            for cube_id in cubes if tools else []:
                outcome = writes.store(cube_id, user_id, tools, req)
                result.added += _each(outcome, cube_id, "tool")
            if fine:
                return self._fine(req, user_id, cubes, windows, writes, result)
            outcomes = {cube_id: writes.store(cube_id, user_id, windows, req) for cube_id in cubes}
            queued = self._record_fine_reads(req, user_id, cubes, windows) if fine_reads else {}
        except Exception:
            writes.undo()
            raise
        stored = sum(len(o.stored) for o in outcomes.values())
        duplicates = sum(len(o.duplicates) for o in outcomes.values())
        for cube_id, outcome in outcomes.items():
            result.added += _each(outcome, cube_id, None, queued.get(cube_id))
        message = f"Memory added: {stored} stored, {duplicates} duplicates skipped"
        message += result.message
        if queued:
            message += f"; fine extraction queued as tasks {sorted(queued.values())}"
        elif req.mode == "fine" or (req.async_mode == "async" and req.mode != "fast"):
            why = "no chat model is configured" if self.fine is None else "no scheduler runs"
            message += f"; stored in fast mode at once ({why}, so no fine extraction)"
        result.message = message
        return result

    def _wants_fine_reads(self, req: AddRequest, windows: list[Window]) -> bool:
        """Async adds (MemOS's default) with an LLM and a scheduler: a `mem_read` task per
        cube distils the fast memories later."""
        return (
            req.async_mode == "async"
            and req.mode != "fast"
            and self.tasks is not None
            and self.fine is not None
            and bool(windows)
        )

    def _documents(
        self,
        req: AddRequest,
        user_id: str,
        cubes: list[str],
        documents: list[Document],
        fine: bool,
        writes: _Writes,
    ) -> AddResult:
        """Inline files: chunks (RawFileMemory) and, in fine mode, what the LLM read in them;
        the result's message notes the chunk counts."""
        result = AddResult()
        stored = present = 0
        for cube_id in cubes if documents else []:
            outcome = add_documents(
                self.memory,
                cube_id,
                user_id,
                documents,
                fine=self.fine if fine else None,
                session_id=req.session_id or DEFAULT_SESSION,
                tags=req.custom_tags or (),
                info=req.info,
                written=writes.of(cube_id),
            )
            result.added += [Added(i, cube_id, "document") for i in outcome.chunks]
            result.added += [
                Added(i, cube_id, "added") for i in [*outcome.fine, *outcome.summaries]
            ]
            stored += outcome.stored_chunks
            present += len(outcome.chunks) - outcome.stored_chunks
        if stored or present:
            result.message = f"; documents: {stored} chunks stored, {present} already present"
        return result

    def _fine(
        self,
        req: AddRequest,
        user_id: str,
        cubes: list[str],
        windows: list[Window],
        writes: _Writes,
        result: AddResult,
    ) -> AddResult:
        """Sync fine add: each memory says what happened (`added`, `merged`, `raw`, `turn`)."""
        assert self.fine is not None
        if self.config.fine.keep_turns:
            turns = windows_from_request(
                req, self.config.reader, self.config.limits, allow_empty=True
            )
            for cube_id in cubes if turns else []:
                result.added += _each(writes.store(cube_id, user_id, turns, req), cube_id, "turn")
        counts = dict.fromkeys(("added", "merged", "archived", "raw", "failed", "calls"), 0)
        paused = False
        for cube_id in cubes:
            outcome = self.fine.add(
                cube_id,
                user_id,
                windows,
                session_id=req.session_id or DEFAULT_SESSION,
                tags=req.custom_tags or (),
                info=req.info,
            )
            result.added += [Added(i, cube_id, "added") for i in outcome.stored]
            result.added += [Added(i, cube_id, "merged") for i in outcome.merged]
            result.added += [Added(i, cube_id, "raw") for i in outcome.raw_kept]
            counts["added"] += len(outcome.stored)
            counts["merged"] += len(outcome.merged)
            counts["archived"] += len(outcome.archived)
            counts["raw"] += len(outcome.raw_kept)
            counts["failed"] += len(outcome.errors)
            counts["calls"] += outcome.calls
            paused = paused or outcome.paused
        message = (
            f"Memory added (fine): {counts['added']} extracted, {counts['merged']} merged into "
            f"existing memories, {counts['archived']} archived as contradicted, {counts['raw']} "
            f"kept raw; {counts['calls']} LLM calls"
        )
        if counts["failed"]:
            message += (
                f"; extraction failed for {counts['failed']} windows (their raw text is kept)"
            )
        if paused:
            message += "; fine extraction paused: the cube is over its LLM token budget"
        result.message = message + result.message
        return result

    def _record_fine_reads(
        self, req: AddRequest, user_id: str, cubes: list[str], windows: list[Window]
    ) -> dict[str, str]:
        """Record a `mem_read` task per cube for the fast memories just stored, then wake the
        cubes. Recorded after the write, so the scheduler never reads memories that are not
        there yet, and a failed write records nothing; if recording fails part way, the tasks
        recorded so far are discarded (the caller removes the memories); so are they when a
        cube's scheduler cannot be reached."""
        tasks = self.tasks
        assert tasks is not None
        queued: dict[str, str] = {}
        try:
            for cube_id in cubes:
                ids = list(dict.fromkeys(memory_id_for(cube_id, w.text) for w in windows))
                task = tasks.record(
                    cube_id,
                    user_id,
                    "mem_read",
                    {"memory_ids": ids},
                    task_id=fine_read_task_id(cube_id, ids, req.task_id),
                    request_task_id=req.task_id,
                )
                queued[cube_id] = task.task_id
            for cube_id in queued:
                tasks.wake(cube_id)
        except Exception:
            try:
                tasks.discard(list(queued.values()))
            except Exception:
                logger.warning("could not discard the tasks of a failed add", exc_info=True)
            raise
        return queued


def _each(
    outcome: AddOutcome, cube_id: str, action: str | None, task_id: str | None = None
) -> list[Added]:
    return [Added(i, cube_id, action, task_id) for i in [*outcome.stored, *outcome.duplicates]]
