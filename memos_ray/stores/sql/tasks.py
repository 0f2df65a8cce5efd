"""The task log role: the scheduler's durable queue, one row per task.

A task is written here before the caller is told about it; the scheduler claims the
oldest runnable task of its cube, and records completion, a retry (with the time it may
run again) or the dead-letter state. Anything claimed but never finished (a crash) goes
back to waiting when the cube's scheduler starts again.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

from pydantic import BaseModel
from sqlalchemy import CursorResult, Engine, Result, Table, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from memos_ray import metrics
from memos_ray.domain.memory import iso, utc_now
from memos_ray.errors import MemosError, NotFoundError, StoreError
from memos_ray.stores.sql.models import TaskRow

TaskState = Literal["waiting", "in_progress", "completed", "failed"]
PENDING: tuple[str, ...] = ("waiting", "in_progress")


class QueueFullError(MemosError):
    """The cube's queue is at its limit: try again later (nothing was recorded)."""

    status_code = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Task(BaseModel):
    task_id: str
    cube_id: str
    user_id: str
    label: str
    payload: dict[str, Any]
    state: TaskState
    attempts: int
    max_attempts: int
    error: str | None = None
    result: dict[str, Any] | None = None
    request_task_id: str | None = None
    seq: int
    not_before: str
    created_at: str
    updated_at: str


class TaskStore(ABC):
    @abstractmethod
    def enqueue(
        self,
        cube_id: str,
        user_id: str,
        label: str,
        payload: dict[str, Any],
        *,
        request_task_id: str | None = None,
        max_attempts: int = 3,
        queue_limit: int | None = None,
        task_id: str | None = None,
    ) -> Task:
        """Record a waiting task; QueueFullError when the cube already has `queue_limit`.

        With a `task_id` the call is idempotent: a task already recorded under that id is
        returned as it stands (a handler re-run after a crash queues its follow-ups once)."""

    @abstractmethod
    def claim(self, cube_id: str) -> Task | None:
        """The cube's oldest waiting task, now in progress (attempts + 1); None when there is
        none or it is still backing off."""

    @abstractmethod
    def complete(self, task_id: str, result: dict[str, Any] | None = None) -> Task: ...

    @abstractmethod
    def fail(self, task_id: str, error: str, retry_in_s: float | None) -> Task:
        """Back to waiting (runnable after `retry_in_s`) or, with None, failed for good."""

    @abstractmethod
    def requeue_unfinished(self, cube_id: str) -> int:
        """In-progress tasks of a scheduler that died back to waiting; returns how many."""

    @abstractmethod
    def discard(self, task_ids: Sequence[str]) -> int:
        """Remove tasks that never ran (waiting, no attempt): the write that recorded them
        failed, so they must not run. Returns how many were removed."""

    @abstractmethod
    def get(self, task_ids: Sequence[str]) -> list[Task]: ...

    @abstractmethod
    def find(
        self,
        *,
        user_id: str | None = None,
        cube_id: str | None = None,
        request_task_id: str | None = None,
        states: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> list[Task]:
        """Tasks in arrival order, newest last."""

    @abstractmethod
    def count_by_state(self, user_id: str | None = None) -> dict[str, int]:
        """How many tasks (of the user, or all) are in each state."""

    @abstractmethod
    def pending(self, cube_id: str) -> int:
        """Waiting plus in-progress tasks of the cube."""

    @abstractmethod
    def cubes_with_pending(self) -> list[str]:
        """Cubes with unfinished tasks (a restarted service resumes them)."""

    @abstractmethod
    def waiting_with_label(self, cube_id: str, label: str) -> bool:
        """Whether a task of that label waits to run in the cube (work that coalesces)."""

    @abstractmethod
    def next_runnable_in_s(self, cube_id: str) -> float | None:
        """Seconds until the cube's next waiting task may run (0 if now); None if none."""


class SQLTaskStore(TaskStore):
    """On the tenancy store's engine (same database, its own table)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        cast("Table", TaskRow.__table__).create(engine, checkfirst=True)

    def _session(self) -> Session:
        return self._sessions()

    def _run(self, fn: Any) -> Any:
        try:
            with self._session() as session, session.begin():
                return fn(session)
        except MemosError:
            raise
        except SQLAlchemyError as exc:
            metrics.store_error("tasks", self._engine.dialect.name, "transaction")
            raise StoreError(f"task store failed: {exc}") from exc

    def enqueue(
        self,
        cube_id: str,
        user_id: str,
        label: str,
        payload: dict[str, Any],
        *,
        request_task_id: str | None = None,
        max_attempts: int = 3,
        queue_limit: int | None = None,
        task_id: str | None = None,
    ) -> Task:
        now = iso(utc_now())

        def go(s: Session) -> Task:
            if task_id is not None:
                found = s.scalars(select(TaskRow).where(TaskRow.task_id == task_id)).first()
                if found is not None:
                    return _task(found)
            if queue_limit is not None:
                count = s.scalar(
                    select(func.count())
                    .select_from(TaskRow)
                    .where(TaskRow.cube_id == cube_id, TaskRow.state.in_(PENDING))
                )
                if (count or 0) >= queue_limit:
                    raise QueueFullError(
                        f"cube {cube_id!r} has {count} tasks queued (limit {queue_limit}); "
                        "retry later",
                        retry_after_s=5,
                    )
            row = TaskRow(
                task_id=task_id or uuid.uuid4().hex,
                cube_id=cube_id,
                user_id=user_id,
                label=label,
                payload=json.dumps(payload),
                state="waiting",
                attempts=0,
                max_attempts=max_attempts,
                request_task_id=request_task_id,
                not_before=now,
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            s.flush()
            return _task(row)

        return self._run(go)

    def claim(self, cube_id: str) -> Task | None:
        now = iso(utc_now())

        def go(s: Session) -> Task | None:
            # Strict arrival order: a task waiting out its retry back-off holds back the
            # cube's later tasks (writes to a cube apply in order).
            row = s.scalars(
                select(TaskRow)
                .where(TaskRow.cube_id == cube_id, TaskRow.state == "waiting")
                .order_by(TaskRow.seq)
                .limit(1)
            ).first()
            if row is None or row.not_before > now:
                return None
            claimed = _rowcount(
                s.execute(
                    update(TaskRow)
                    .where(TaskRow.seq == row.seq, TaskRow.state == "waiting")
                    .values(state="in_progress", attempts=TaskRow.attempts + 1, updated_at=now)
                )
            )
            if not claimed:  # somebody else took it
                return None
            s.refresh(row)
            return _task(row)

        return self._run(go)

    def _change(self, task_id: str, **values: Any) -> Task:
        def go(s: Session) -> Task:
            row = s.scalars(select(TaskRow).where(TaskRow.task_id == task_id)).first()
            if row is None:
                raise NotFoundError(f"task {task_id!r} not found")
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = iso(utc_now())
            s.flush()
            return _task(row)

        return self._run(go)

    def complete(self, task_id: str, result: dict[str, Any] | None = None) -> Task:
        return self._change(task_id, state="completed", error=None, result=json.dumps(result or {}))

    def fail(self, task_id: str, error: str, retry_in_s: float | None) -> Task:
        if retry_in_s is None:
            return self._change(task_id, state="failed", error=error[:4000])
        when = iso(utc_now() + timedelta(seconds=retry_in_s))
        return self._change(task_id, state="waiting", error=error[:4000], not_before=when)

    def requeue_unfinished(self, cube_id: str) -> int:
        def go(s: Session) -> int:
            return _rowcount(
                s.execute(
                    update(TaskRow)
                    .where(TaskRow.cube_id == cube_id, TaskRow.state == "in_progress")
                    .values(state="waiting", updated_at=iso(utc_now()))
                )
            )

        return self._run(go)

    def discard(self, task_ids: Sequence[str]) -> int:
        if not task_ids:
            return 0

        def go(s: Session) -> int:
            return _rowcount(
                s.execute(
                    delete(TaskRow).where(
                        TaskRow.task_id.in_(list(task_ids)),
                        TaskRow.state == "waiting",
                        TaskRow.attempts == 0,
                    )
                )
            )

        return self._run(go)

    def get(self, task_ids: Sequence[str]) -> list[Task]:
        if not task_ids:
            return []

        def go(s: Session) -> list[Task]:
            rows = s.scalars(select(TaskRow).where(TaskRow.task_id.in_(list(task_ids))))
            by_id = {r.task_id: _task(r) for r in rows}
            return [by_id[t] for t in task_ids if t in by_id]

        return self._run(go)

    def find(
        self,
        *,
        user_id: str | None = None,
        cube_id: str | None = None,
        request_task_id: str | None = None,
        states: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> list[Task]:
        def go(s: Session) -> list[Task]:
            query = select(TaskRow)
            if user_id is not None:
                query = query.where(TaskRow.user_id == user_id)
            if cube_id is not None:
                query = query.where(TaskRow.cube_id == cube_id)
            if request_task_id is not None:
                query = query.where(TaskRow.request_task_id == request_task_id)
            if states:
                query = query.where(TaskRow.state.in_(list(states)))
            rows = s.scalars(query.order_by(TaskRow.seq.desc()).limit(limit)).all()
            return [_task(r) for r in reversed(rows)]

        return self._run(go)

    def count_by_state(self, user_id: str | None = None) -> dict[str, int]:
        def go(s: Session) -> dict[str, int]:
            query = select(TaskRow.state, func.count()).group_by(TaskRow.state)
            if user_id is not None:
                query = query.where(TaskRow.user_id == user_id)
            return {str(state): int(n) for state, n in s.execute(query).all()}

        return self._run(go)

    def pending(self, cube_id: str) -> int:
        def go(s: Session) -> int:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(TaskRow)
                    .where(TaskRow.cube_id == cube_id, TaskRow.state.in_(PENDING))
                )
                or 0
            )

        return self._run(go)

    def cubes_with_pending(self) -> list[str]:
        def go(s: Session) -> list[str]:
            rows = s.scalars(select(TaskRow.cube_id).where(TaskRow.state.in_(PENDING)).distinct())
            return sorted(rows)

        return self._run(go)

    def waiting_with_label(self, cube_id: str, label: str) -> bool:
        def go(s: Session) -> bool:
            found = s.scalar(
                select(TaskRow.seq)
                .where(
                    TaskRow.cube_id == cube_id,
                    TaskRow.label == label,
                    TaskRow.state == "waiting",
                )
                .limit(1)
            )
            return found is not None

        return self._run(go)

    def next_runnable_in_s(self, cube_id: str) -> float | None:
        def go(s: Session) -> float | None:
            first = s.scalar(
                select(func.min(TaskRow.not_before)).where(
                    TaskRow.cube_id == cube_id, TaskRow.state == "waiting"
                )
            )
            if first is None:
                return None
            when = datetime.strptime(first, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            return max(0.0, (when - utc_now()).total_seconds())

        return self._run(go)


def _task(row: TaskRow) -> Task:
    return Task(
        task_id=row.task_id,
        cube_id=row.cube_id,
        user_id=row.user_id,
        label=row.label,
        payload=json.loads(row.payload),
        state=row.state,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        error=row.error,
        result=json.loads(row.result) if row.result else None,
        request_task_id=row.request_task_id,
        seq=row.seq,
        not_before=row.not_before,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE touched (its result is a cursor result)."""
    return cast("CursorResult[Any]", result).rowcount
