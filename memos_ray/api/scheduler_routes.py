"""Scheduler routes (MemOS dialect): task status, wait for a cube's queue, progress stream.

Backed by the durable task log, so they answer the same after any restart. No `from
__future__ import annotations`: FastAPI must see the dependency aliases as objects.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from memos_ray.api.context import ApiContext
from memos_ray.api.deps import Ctx, Who
from memos_ray.config import LimitsConfig
from memos_ray.errors import BadRequestError, ServiceUnavailableError
from memos_ray.runtime.netguard import redact
from memos_ray.scheduler.actor import SchedulerClient
from memos_ray.schemas.envelope import ok
from memos_ray.schemas.values import ValidText
from memos_ray.stores.sql.tasks import Task

_STREAM_POLL_S = 0.5


class WaitRequest(ValidText):
    model_config = ConfigDict(extra="ignore")

    # MemOS names the cube `user_name` here.
    user_name: str = Field(min_length=1, max_length=128)
    user_id: str | None = None
    timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    poll_interval: float = Field(default=0.5, gt=0, le=60)


def wait_plan(timeout_s: float, poll_s: float, limits: LimitsConfig) -> tuple[float, float]:
    """(timeout, poll interval) a wait really uses: clamped to the configured bounds, so a
    caller cannot poll the task log every microsecond or hold a request for an hour."""
    timeout = min(timeout_s, limits.max_wait_s)
    poll = min(max(poll_s, limits.min_poll_interval_s), max(timeout, limits.min_poll_interval_s))
    return timeout, poll


router = APIRouter(prefix="/product/scheduler")


@router.get("/status")
def status(
    context: Ctx, who: Who, user_id: str | None = None, task_id: str | None = None
) -> dict[str, Any]:
    scheduler = _scheduler(context)
    acting = context.access.act_as(who, user_id or who.user_id)
    tasks = _tasks(scheduler, acting, task_id)
    summary: dict[str, int] = {}
    for task in tasks:
        summary[task.state] = summary.get(task.state, 0) + 1
    return ok({"tasks": [_task_json(t) for t in tasks], "summary": summary}, "Task status")


@router.post("/wait")
async def wait(req: WaitRequest, context: Ctx, who: Who) -> dict[str, Any]:
    """Async: while it sleeps between polls it holds no thread, only the SQL reads do."""

    def authorise() -> tuple[SchedulerClient, str]:
        scheduler = _scheduler(context)
        acting = context.access.act_as(who, req.user_id or who.user_id)
        cube = context.access.cubes_for(acting, [req.user_name], write=False, caller=who)[0]
        return scheduler, cube

    scheduler, cube = await run_in_threadpool(authorise)
    timeout, poll = wait_plan(req.timeout_seconds, req.poll_interval, context.config.limits)
    deadline = time.monotonic() + timeout
    pending = await run_in_threadpool(scheduler.tasks.pending, cube)
    while pending and time.monotonic() < deadline:
        await asyncio.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        pending = await run_in_threadpool(scheduler.tasks.pending, cube)
    failed = len(
        await run_in_threadpool(lambda: scheduler.tasks.find(cube_id=cube, states=["failed"]))
    )
    data = {
        "cube_id": cube,
        "pending": pending,
        "failed": failed,
        "timed_out": pending > 0,
        "timeout_seconds": timeout,
        "poll_interval": poll,
    }
    return ok(data, "Queue drained" if not pending else "Timed out with tasks pending")


@router.get("/stream")
def stream(
    context: Ctx,
    who: Who,
    user_id: str | None = None,
    task_id: str | None = None,
    timeout_seconds: float = 600.0,
) -> StreamingResponse:
    """Server-sent events: each task's state when it changes, then an end frame.

    At most `limits.max_stream_s` long; an async generator, so an open stream holds no
    thread between its polls."""
    scheduler = _scheduler(context)
    acting = context.access.act_as(who, user_id or who.user_id)
    if not 0 < timeout_seconds <= 3600:  # NaN fails this too
        raise BadRequestError("timeout_seconds must be in (0, 3600]")
    duration = min(timeout_seconds, context.config.limits.max_stream_s)
    poll = max(_STREAM_POLL_S, context.config.limits.min_poll_interval_s)

    async def frames() -> AsyncIterator[str]:
        seen: dict[str, tuple[str, int]] = {}
        deadline = time.monotonic() + duration
        while True:
            tasks = await run_in_threadpool(_tasks, scheduler, acting, task_id)
            for task in tasks:
                state = (task.state, task.attempts)
                if seen.get(task.task_id) != state:
                    seen[task.task_id] = state
                    yield f"data: {json.dumps({'type': 'task', 'data': _task_json(task)})}\n\n"
            done = all(t.state in ("completed", "failed") for t in tasks)
            if done or time.monotonic() > deadline:
                end = {"type": "end", "data": {"done": done, "tasks": len(tasks)}}
                yield f"data: {json.dumps(end)}\n\n"
                return
            await asyncio.sleep(min(poll, max(0.0, deadline - time.monotonic()) + 0.01))

    return StreamingResponse(frames(), media_type="text/event-stream")


def _scheduler(context: ApiContext) -> SchedulerClient:
    if context.scheduler is None:
        raise ServiceUnavailableError("no scheduler runs here (the service is not on Ray)")
    return context.scheduler


def _tasks(scheduler: SchedulerClient, user_id: str, task_id: str | None) -> list[Task]:
    """By the task id we returned, or by the caller's own `task_id`, or all of the user's."""
    if task_id:
        direct = [t for t in scheduler.tasks.get([task_id]) if t.user_id == user_id]
        return direct or scheduler.tasks.find(user_id=user_id, request_task_id=task_id)
    return scheduler.tasks.find(user_id=user_id, limit=200)


def _task_json(task: Task) -> dict[str, Any]:
    """A task as clients see it: its error (a handler's exception text, which may name a
    store's address or the data dir) redacted."""
    data = task.model_dump(exclude={"payload", "seq", "not_before"})
    if data.get("error"):
        data["error"] = redact(str(data["error"]))
    return data
