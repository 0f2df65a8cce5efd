"""Scheduler routes (MemOS dialect): task status, wait for a cube's queue, progress stream.

Backed by the durable task log, so they answer the same after any restart. No `from
__future__ import annotations`: FastAPI must see the dependency aliases as objects.
"""

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from memos_ray.api.context import ApiContext
from memos_ray.api.deps import dependencies
from memos_ray.errors import BadRequestError, ServiceUnavailableError
from memos_ray.netguard import redact
from memos_ray.scheduler import SchedulerClient
from memos_ray.schemas.envelope import ok
from memos_ray.stores.sql.tasks import Task


class WaitRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # MemOS names the cube `user_name` here.
    user_name: str = Field(min_length=1, max_length=128)
    user_id: str | None = None
    timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    poll_interval: float = Field(default=0.5, gt=0, le=60)


def build_scheduler_routers(get_context: Callable[[], ApiContext]) -> list[APIRouter]:
    Ctx, Who = dependencies(get_context)
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
    def wait(req: WaitRequest, context: Ctx, who: Who) -> dict[str, Any]:
        scheduler = _scheduler(context)
        acting = context.access.act_as(who, req.user_id or who.user_id)
        cube = context.access.cubes_for(acting, [req.user_name], write=False, caller=who)[0]
        deadline = time.monotonic() + req.timeout_seconds
        pending = scheduler.tasks.pending(cube)
        while pending and time.monotonic() < deadline:
            time.sleep(min(req.poll_interval, max(0.0, deadline - time.monotonic())))
            pending = scheduler.tasks.pending(cube)
        failed = len(scheduler.tasks.find(cube_id=cube, states=["failed"]))
        data = {"cube_id": cube, "pending": pending, "failed": failed, "timed_out": pending > 0}
        return ok(data, "Queue drained" if not pending else "Timed out with tasks pending")

    @router.get("/stream")
    def stream(
        context: Ctx,
        who: Who,
        user_id: str | None = None,
        task_id: str | None = None,
        timeout_seconds: float = 600.0,
    ) -> StreamingResponse:
        """Server-sent events: each task's state when it changes, then an end frame."""
        scheduler = _scheduler(context)
        acting = context.access.act_as(who, user_id or who.user_id)
        if timeout_seconds <= 0 or timeout_seconds > 3600:
            raise BadRequestError("timeout_seconds must be in (0, 3600]")

        def frames() -> Iterator[str]:
            seen: dict[str, tuple[str, int]] = {}
            deadline = time.monotonic() + timeout_seconds
            while True:
                tasks = _tasks(scheduler, acting, task_id)
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
                time.sleep(0.5)

        return StreamingResponse(frames(), media_type="text/event-stream")

    return [router]


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
