"""Scheduler routes (MemOS dialect): task status, wait for a cube's queue, progress stream.

Backed by the durable task log, so they answer the same after any restart. No `from
__future__ import annotations`: FastAPI must see the dependency aliases as objects.
"""

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi.responses import StreamingResponse
from pydantic import ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from memos_ray.api.context import ApiContext
from memos_ray.api.deps import Ctx, Who, validated
from memos_ray.api.sse import sse_response
from memos_ray.config import LimitsConfig
from memos_ray.errors import BadRequestError, NotFoundError, ServiceUnavailableError
from memos_ray.runtime.netguard import redact
from memos_ray.scheduler.actor import SchedulerClient
from memos_ray.scheduler.feed import FeedWaiter
from memos_ray.schemas.envelope import ok
from memos_ray.schemas.values import ValidText
from memos_ray.stores.sql.tasks import Task

_STREAM_POLL_S = 0.5
_STATES = ("waiting", "in_progress", "completed", "failed", "cancelled")


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
    """MemOS's StatusResponse: `data` lists the tasks (each with `task_id` and `status`, plus
    memos-ray's record); an unknown task is 404. The counts by state come as `summary`."""
    scheduler = _scheduler(context)
    acting = context.access.act_as(who, user_id or who.user_id)
    tasks = _tasks(scheduler, acting, task_id)
    if task_id and not tasks:
        raise NotFoundError(f"task {task_id!r} not found for user {acting!r}")
    body = ok([_task_json(t) for t in tasks], "Memory get status successfully")
    body["summary"] = _summary(tasks)
    return body


@router.get("/allstatus")
def all_status(context: Ctx, who: Who, user_id: str | None = None) -> dict[str, Any]:
    """MemOS's AllStatusResponse. The admin key (or open mode) sees every task; a user's
    key sees its own."""
    scheduler = _scheduler(context)
    acting = None
    if not (who.unrestricted and not user_id):
        acting = context.access.act_as(who, user_id or who.user_id)
    counts = scheduler.tasks.count_by_state(acting)
    summary = {state: counts.get(state, 0) for state in _STATES}
    summary["pending"] = summary["waiting"] + summary["in_progress"]
    summary["total"] = sum(counts.values())
    data = {"scheduler_summary": summary, "all_tasks_summary": summary}
    return ok(data, "Scheduler status summary retrieved successfully")


@router.get("/task_queue_status")
def task_queue_status(context: Ctx, who: Who, user_id: str | None = None) -> dict[str, Any]:
    """MemOS's TaskQueueResponse over the task log: one queue per cube (its `stream_keys`),
    running tasks as `pending`, waiting ones as `remaining`."""
    scheduler = _scheduler(context)
    acting = context.access.act_as(who, user_id or who.user_id)
    queued = scheduler.tasks.find(user_id=acting, states=["waiting", "in_progress"])
    running = [t.task_id for t in queued if t.state == "in_progress"]
    waiting = [t.task_id for t in queued if t.state == "waiting"]
    data = {
        "user_id": acting,
        "user_name": acting,
        "mem_cube_id": queued[0].cube_id if queued else None,
        "stream_keys": sorted({t.cube_id for t in queued}),
        "users_count": 1 if queued else 0,
        "pending_tasks_count": len(running),
        "remaining_tasks_count": len(waiting),
        "pending_tasks_detail": running,
        "remaining_tasks_detail": waiting,
    }
    return ok(data, "Scheduler task queue status retrieved successfully")


@router.post("/wait")
async def wait(
    context: Ctx,
    who: Who,
    body: Annotated[WaitRequest | None, Body()] = None,
    user_name: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    timeout_seconds: Annotated[float | None, Query(gt=0, le=3600)] = None,
    poll_interval: Annotated[float | None, Query(gt=0, le=60)] = None,
    user_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
) -> dict[str, Any]:
    """MemOS passes query parameters, memos-ray's clients a JSON body: either works.

    Async, and woken by the task log's change feed: while nothing changes it holds no thread
    and reads nothing."""
    req = _wait_request(body, user_name, timeout_seconds, poll_interval, user_id)

    def authorise() -> tuple[SchedulerClient, str]:
        scheduler = _scheduler(context)
        acting = context.access.acting_user(who, req.user_id, [req.user_name])
        cube = context.access.cubes_for(acting, [req.user_name], write=False, caller=who)[0]
        return scheduler, cube

    started = time.monotonic()
    scheduler, cube = await run_in_threadpool(authorise)
    timeout, poll = wait_plan(req.timeout_seconds, req.poll_interval, context.config.limits)
    deadline = time.monotonic() + timeout
    changes = FeedWaiter(context.config, [f"cube:{cube}"], fallback_s=poll)
    await changes.start()
    pending = await run_in_threadpool(scheduler.tasks.pending, cube)
    while pending and time.monotonic() < deadline:
        if await changes.next_change(deadline - time.monotonic()):
            pending = await run_in_threadpool(scheduler.tasks.pending, cube)
    failed = len(
        await run_in_threadpool(lambda: scheduler.tasks.find(cube_id=cube, states=["failed"]))
    )
    data = {
        "cube_id": cube,
        "user_name": req.user_name,
        "pending": pending,
        "running_tasks": pending,
        "failed": failed,
        "timed_out": pending > 0,
        "waited_seconds": round(time.monotonic() - started, 3),
        "timeout_seconds": timeout,
        "poll_interval": poll,
    }
    return ok(data, "idle" if not pending else "timeout")


def _wait_request(
    body: WaitRequest | None,
    user_name: str | None,
    timeout_seconds: float | None,
    poll_interval: float | None,
    user_id: str | None,
) -> WaitRequest:
    fields: dict[str, Any] = body.model_dump() if body is not None else {}
    given = {
        "user_name": user_name,
        "timeout_seconds": timeout_seconds,
        "poll_interval": poll_interval,
        "user_id": user_id,
    }
    fields.update({k: v for k, v in given.items() if v is not None})
    if not fields.get("user_name"):
        raise BadRequestError("user_name is required (a query parameter or in the body)")
    return validated(WaitRequest, fields)  # query values are checked here, not by FastAPI


@router.get("/wait/stream")
def wait_stream(
    context: Ctx,
    who: Who,
    user_name: Annotated[str, Query(min_length=1, max_length=128)],
    timeout_seconds: Annotated[float, Query(gt=0, le=3600)] = 120.0,
    poll_interval: Annotated[float, Query(gt=0, le=60)] = 0.5,
    user_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
) -> StreamingResponse:
    """MemOS's progress stream for a queue: a frame per interval (`running` with the count of
    active tasks, then `idle`), or `timeout`; the count is read again only when the task
    log's change feed says the cube's tasks changed. `user_name` is the cube (a user's default cube
    has the user's id)."""
    scheduler = _scheduler(context)
    acting = context.access.acting_user(who, user_id, [user_name])
    cube = context.access.cubes_for(acting, [user_name], write=False, caller=who)[0]
    timeout, poll = wait_plan(timeout_seconds, poll_interval, context.config.limits)

    async def frames() -> AsyncIterator[str]:
        started = time.monotonic()
        changes = FeedWaiter(context.config, [f"cube:{cube}"], fallback_s=poll)
        await changes.start()
        active = await run_in_threadpool(scheduler.tasks.pending, cube)
        while True:
            elapsed = time.monotonic() - started
            timed_out = active > 0 and elapsed >= timeout
            state = "timeout" if timed_out else ("running" if active else "idle")
            frame: dict[str, Any] = {
                "user_name": user_name,
                "active_tasks": active,
                "elapsed_seconds": round(elapsed, 3),
                "status": state,
            }
            if timed_out:
                frame["timed_out"] = True
            yield f"data: {json.dumps(frame)}\n\n"
            if state != "running":
                return
            # A frame each interval (MemOS's clients show progress); the log is read only
            # when the feed says the cube's tasks changed.
            if await changes.next_change(min(poll, max(0.0, timeout - elapsed) + 0.01)):
                active = await run_in_threadpool(scheduler.tasks.pending, cube)

    return sse_response(frames(), context.config.limits.sse_ping_s)


@router.get("/stream")
def stream(
    context: Ctx,
    who: Who,
    user_id: str | None = None,
    task_id: str | None = None,
    timeout_seconds: float = 600.0,
    follow: bool = False,
) -> StreamingResponse:
    """Server-sent events: each task's state when it changes, then an end frame (once every
    task is finished, or with `follow` only at the deadline: new tasks show up as they come).

    At most `limits.max_stream_s` long. The task log is read when its change feed
    (`scheduler.feed`) says one of the user's tasks changed: a quiet stream reads nothing and,
    being an async generator, holds no thread."""
    scheduler = _scheduler(context)
    acting = context.access.act_as(who, user_id or who.user_id)
    if not 0 < timeout_seconds <= 3600:  # NaN fails this too
        raise BadRequestError("timeout_seconds must be in (0, 3600]")
    duration = min(timeout_seconds, context.config.limits.max_stream_s)
    poll = max(_STREAM_POLL_S, context.config.limits.min_poll_interval_s)

    async def frames() -> AsyncIterator[str]:
        seen: dict[str, tuple[str, int]] = {}
        deadline = time.monotonic() + duration
        changes = FeedWaiter(context.config, [f"user:{acting}"], fallback_s=poll)
        await changes.start()
        while True:
            tasks = await run_in_threadpool(_tasks, scheduler, acting, task_id)
            for task in tasks:
                state = (task.state, task.attempts)
                if seen.get(task.task_id) != state:
                    seen[task.task_id] = state
                    yield f"data: {json.dumps({'type': 'task', 'data': _task_json(task)})}\n\n"
            done = all(t.state in ("completed", "failed") for t in tasks)
            if (done and not follow) or time.monotonic() > deadline:
                end = {"type": "end", "data": {"done": done, "tasks": len(tasks)}}
                yield f"data: {json.dumps(end)}\n\n"
                return
            # Pushed, not polled: the next read waits for the feed to say one of the user's
            # tasks changed (or for the deadline, for the end frame).
            while not await changes.next_change(deadline - time.monotonic()):
                if time.monotonic() >= deadline:
                    break

    return sse_response(frames(), context.config.limits.sse_ping_s)


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


def _summary(tasks: list[Task]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task.state] = counts.get(task.state, 0) + 1
    return counts


def _task_json(task: Task) -> dict[str, Any]:
    """A task as clients see it: its error (a handler's exception text, which may name a
    store's address or the data dir) redacted."""
    data = task.model_dump(exclude={"payload", "seq", "not_before"})
    data["status"] = task.state  # MemOS's name for it
    if data.get("error"):
        data["error"] = redact(str(data["error"]))
    return data
