"""What a task handler is given: the config, the task log and the scheduler's services."""

from __future__ import annotations

import importlib
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from memos_ray.config import MemosConfig
from memos_ray.stores.sql.tasks import Task, TaskStore

if TYPE_CHECKING:
    from memos_ray.runtime.compose import Services

Handler = Callable[[Task, "HandlerContext"], "dict[str, Any] | None"]


class HandlerContext:
    """What handlers may use; the services are built on first use in the scheduler's process
    and reach the models through the Serve app's deployments."""

    def __init__(self, config: MemosConfig, tasks: TaskStore | None = None) -> None:
        self.config = config
        self.tasks = tasks
        self._services: Services | None = None
        self._lock = threading.Lock()

    def follow_up(self, task: Task, label: str, payload: dict[str, Any]) -> Task:
        """Queue more work for the task's cube, once: its id derives from the task's, so a
        handler re-run after a crash finds the follow-up it queued before. Never refused for
        a full queue (the work was accepted already); the cube's loop runs it in turn."""
        if self.tasks is None:
            raise RuntimeError("this handler context has no task log")
        return self.tasks.enqueue(
            task.cube_id,
            task.user_id,
            label,
            payload,
            request_task_id=task.request_task_id,
            max_attempts=self.config.scheduler.max_attempts,
            task_id=uuid.uuid5(uuid.NAMESPACE_OID, f"{task.task_id}/{label}").hex,
        )

    def services(self) -> Services:
        with self._lock:
            if self._services is None:
                # deferred: the service stack (Serve handles, store clients; about 2 s of
                # imports) loads when a handler first asks for it, not in every cube's actor.
                from memos_ray.scheduler.services import build_task_services

                self._services = build_task_services(self.config)
            return self._services


def load_handler(path: str) -> Handler:
    module, _, name = path.partition(":")
    handler = getattr(importlib.import_module(module), name, None)
    if not callable(handler):
        raise ValueError(f"scheduler handler {path!r} is not a callable module:function")
    return handler
