"""Per-cube schedulers: one Ray actor per cube runs that cube's tasks, in order, one at a time.

The queue itself is the task log in the relational store (`stores/sql/tasks.py`): a task
is recorded before the caller hears of it, so an actor (or the whole service) can die at
any point and its successor picks up where it stopped. Handlers are looked up by label
from import paths (`scheduler.handlers`), so deployments can add their own.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError

from memos_ray import metrics
from memos_ray.config import MemosConfig
from memos_ray.embedded.falkordb_actor import actor_suffix
from memos_ray.scheduler.context import Handler, HandlerContext, load_handler
from memos_ray.scheduler.feed import FeedingTaskStore
from memos_ray.stores.sql.sqlalchemy import SQLTenancyStore
from memos_ray.stores.sql.tasks import QueueFullError, SQLTaskStore, Task, TaskStore

logger = logging.getLogger("memos_ray.scheduler.actor")

# How often an actor with an empty queue looks at the task log anyway.
_IDLE_POLL_S = 5.0
# How often a cube with work asks the gate again when every slot is taken.
_GATE_POLL_S = 0.2


class SchedulerMetrics:
    """The scheduler's metrics (`memos_ray.metrics`): tasks by label and outcome, handler time,
    and queue lengths. The queue gauge carries no cube id (each actor reports its own cube's
    length: their sum is the total queued) unless the cube is in `metrics.watch_cubes`."""

    def __init__(self, watch_cubes: Sequence[str] = ()) -> None:
        self.watch_cubes = frozenset(watch_cubes)

    def task(self, label: str, outcome: str, seconds: float) -> None:
        label = metrics.bounded(label)
        metrics.SCHEDULER_TASKS.inc(label=label, outcome=outcome)
        metrics.SCHEDULER_TASK_SECONDS.observe(seconds, label=label)

    def queue(self, cube_id: str, length: int) -> None:
        metrics.SCHEDULER_QUEUE.set(length)
        if cube_id in self.watch_cubes:
            metrics.SCHEDULER_CUBE_QUEUE.set(length, cube=cube_id)


class CubeScheduler:
    """Runs one cube's tasks: claim the oldest, run its handler, record the outcome.

    A failure is retried after `backoff_s * 2**(attempt-1)` (capped) until the task's
    `max_attempts`, then it stays `failed` (dead letter) with the error, and the cube moves on.
    """

    def __init__(
        self,
        cube_id: str,
        tasks: TaskStore,
        handlers: Mapping[str, Handler],
        context: HandlerContext,
        *,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.cube_id = cube_id
        self.tasks = tasks
        self.handlers = handlers
        self.context = context
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s

    def step(self) -> Task | None:
        task = self.tasks.claim(self.cube_id)
        if task is None:
            return None
        handler = self.handlers.get(task.label)
        started = time.monotonic()
        try:
            if handler is None:
                raise ValueError(f"no handler for task label {task.label!r}")
            result = handler(task, self.context)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            retry: float | None = None
            if handler is not None and task.attempts < task.max_attempts:
                retry = min(self.backoff_s * 2 ** (task.attempts - 1), self.max_backoff_s)
            logger.warning(
                "task %s (%s) of cube %s failed on attempt %d: %s",
                task.task_id,
                task.label,
                self.cube_id,
                task.attempts,
                error,
            )
            if self.metrics is not None:
                outcome = "retry" if retry is not None else "dead_letter"
                self.metrics.task(task.label, outcome, time.monotonic() - started)
            return self.tasks.fail(task.task_id, error, retry)
        if self.metrics is not None:
            self.metrics.task(task.label, "completed", time.monotonic() - started)
        return self.tasks.complete(task.task_id, result)

    def drain(self, limit: int | None = None) -> int:
        """Run the tasks runnable now (at most `limit`); returns how many ran."""
        ran = 0
        while (limit is None or ran < limit) and self.step() is not None:
            ran += 1
        return ran


class Slots:
    """At most `limit` holders; a freed slot goes to the longest-waiting asker, not to
    whoever asks first after. A holder not renewed for `lease_s` is presumed gone (its actor
    was killed); a refused asker that stops asking for `waiter_ttl_s` loses its place."""

    def __init__(self, limit: int, lease_s: float = 900.0, waiter_ttl_s: float = 5.0) -> None:
        self.limit = limit
        self.lease_s = lease_s
        self.waiter_ttl_s = waiter_ttl_s
        self.holders: dict[str, float] = {}
        self.waiting: dict[str, float] = {}  # in the order they first asked

    def acquire(self, key: str, now: float) -> bool:
        self.holders = {k: t for k, t in self.holders.items() if now - t < self.lease_s}
        self.waiting = {k: t for k, t in self.waiting.items() if now - t < self.waiter_ttl_s}
        if key in self.holders:
            self.holders[key] = now
            return True
        free = self.limit - len(self.holders)
        line = list(self.waiting)
        room = free > len(line) if key not in self.waiting else key in line[:free]
        if free > 0 and room:
            self.waiting.pop(key, None)
            self.holders[key] = now
            return True
        self.waiting[key] = now  # joins the line, or keeps its place in it
        return False

    def release(self, key: str) -> None:
        self.holders.pop(key, None)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SchedulerGate:
    """How many cubes run a task at once, cluster-wide (`scheduler.max_concurrent_cubes`).

    A slot belongs to a cube, so a restarted scheduler of that cube takes its own slot back.
    If the gate itself restarts it starts empty: the cap may be exceeded briefly, no task lost.
    """

    def __init__(self, limit: int) -> None:
        self._slots = Slots(limit)

    def acquire(self, cube_id: str) -> bool:
        return self._slots.acquire(cube_id, time.monotonic())

    def release(self, cube_id: str) -> None:
        self._slots.release(cube_id)

    def holders(self) -> list[str]:
        return sorted(self._slots.holders)


def scheduler_gate(config: MemosConfig) -> Any:

    return SchedulerGate.options(  # type: ignore[attr-defined]
        name=f"memos-sched-gate-{actor_suffix(config)}",
        namespace=config.serving.namespace,
        get_if_exists=True,
        lifetime="detached",
    ).remote(config.scheduler.max_concurrent_cubes)


def scheduler_name(config: MemosConfig, cube_id: str) -> str:

    return f"memos-sched-{actor_suffix(config)}-{hashlib.sha1(cube_id.encode()).hexdigest()[:16]}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class CubeSchedulerActor:
    """Owns one cube's scheduler loop. Ray restarts it if it dies; on start it requeues
    what its predecessor left in progress. After `idle_exit_s` with nothing to do it ends
    itself (for good: the next submit creates it again)."""

    def __init__(self, config: MemosConfig, cube_id: str) -> None:

        sched = config.scheduler
        self._tasks = FeedingTaskStore(
            SQLTaskStore(SQLTenancyStore.for_config(config).engine), config
        )
        handlers = {label: load_handler(path) for label, path in sched.handler_paths().items()}
        self._core = CubeScheduler(
            cube_id,
            self._tasks,
            handlers,
            HandlerContext(config, self._tasks),
            backoff_s=sched.retry_backoff_s,
            max_backoff_s=sched.max_backoff_s,
            metrics=SchedulerMetrics(config.metrics.watch_cubes),
        )
        self._idle_exit_s = sched.idle_exit_s
        self._burst = sched.burst
        self._gate = scheduler_gate(config)
        self._wake = threading.Event()
        requeued = self._tasks.requeue_unfinished(cube_id)
        if requeued:
            logger.info("cube %s: %d unfinished tasks requeued", cube_id, requeued)
        self._thread = threading.Thread(target=self._loop, name="cube-scheduler", daemon=True)
        self._thread.start()

    def _run_burst(self) -> tuple[int, float | None]:
        """Up to `burst` tasks under one of the gate's slots, then the slot goes back so
        that other cubes get their turn; without a slot, look again shortly."""
        cube = self._core.cube_id
        wait = self._tasks.next_runnable_in_s(cube)
        if wait != 0:
            return 0, wait
        if not ray.get(self._gate.acquire.remote(cube)):
            return 0, _GATE_POLL_S
        try:
            ran = self._core.drain(self._burst)
        finally:
            self._gate.release.remote(cube)
        return ran, self._tasks.next_runnable_in_s(cube)

    def _loop(self) -> None:
        idle_since = time.monotonic()
        while True:
            try:
                ran, wait = self._run_burst()
                if ran and self._core.metrics is not None:
                    cube = self._core.cube_id
                    self._core.metrics.queue(cube, self._tasks.pending(cube))
            except Exception:
                logger.exception("scheduler loop of cube %s failed; retrying", self._core.cube_id)
                ran, wait = 0, 1.0
            if ran:
                idle_since = time.monotonic()
            idle = wait is None and time.monotonic() - idle_since > self._idle_exit_s
            if idle and self._tasks.pending(self._core.cube_id) == 0:
                if self._core.metrics is not None:
                    self._core.metrics.queue(self._core.cube_id, 0)
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return
            if wait == 0:
                continue  # more to run: ask the gate again (waiting cubes go first)
            # Nothing waiting: submit wakes us; the slow poll only covers a lost wake-up.
            # (No longer than the idle exit, so an idle actor ends on time.)
            idle_poll = min(_IDLE_POLL_S, max(self._idle_exit_s, 0.1))
            self._wake.wait(timeout=min(wait, 1.0) if wait is not None else idle_poll)
            self._wake.clear()

    def notify(self) -> int:
        """New work was recorded: run it now. Returns the cube's pending count."""
        self._wake.set()
        return self._tasks.pending(self._core.cube_id)

    def ping(self) -> str:
        return self._core.cube_id


class SchedulerClient:
    """The service side: record a task, then wake (or create) the cube's scheduler."""

    def __init__(self, config: MemosConfig, tasks: TaskStore) -> None:
        self.config = config
        # Its writes reach the change feed that the scheduler streams wait on.
        self.tasks = (
            tasks if isinstance(tasks, FeedingTaskStore) else FeedingTaskStore(tasks, config)
        )

    def actor(self, cube_id: str) -> Any:
        options: dict[str, Any] = {
            "name": scheduler_name(self.config, cube_id),
            "namespace": self.config.serving.namespace,
            "get_if_exists": True,
            "lifetime": "detached",
        }
        if self.config.scheduler.resources:
            # Only nodes with these run cubes' actors (Ray prefers the caller's node among them).
            options["resources"] = dict(self.config.scheduler.resources)
        return CubeSchedulerActor.options(**options).remote(  # type: ignore[attr-defined]
            self.config, cube_id
        )

    def submit(
        self,
        cube_id: str,
        user_id: str,
        label: str,
        payload: dict[str, Any],
        *,
        request_task_id: str | None = None,
        task_id: str | None = None,
    ) -> Task:
        sched = self.config.scheduler
        task = self.tasks.enqueue(
            cube_id,
            user_id,
            label,
            payload,
            request_task_id=request_task_id,
            max_attempts=sched.max_attempts,
            queue_limit=sched.queue_limit,
            task_id=task_id,
        )
        self.wake(cube_id)
        return task

    def ensure_room(self, cube_ids: Sequence[str]) -> None:
        """QueueFullError (429) when a cube's queue is at its limit: checked before a write
        whose task is recorded after it, so a full queue refuses the write, not its task.
        Concurrent writers may pass the check together and overshoot the limit a little."""
        limit = self.config.scheduler.queue_limit
        for cube_id in cube_ids:
            count = self.tasks.pending(cube_id)
            if count >= limit:
                raise QueueFullError(
                    f"cube {cube_id!r} has {count} tasks queued (limit {limit}); retry later",
                    retry_after_s=5,
                )

    def record(
        self,
        cube_id: str,
        user_id: str,
        label: str,
        payload: dict[str, Any],
        *,
        task_id: str,
        request_task_id: str | None = None,
    ) -> Task:
        """Record a task for work already written, without waking the cube (`wake` once the
        whole request is recorded). Idempotent by `task_id`; never refused for a full queue
        (`ensure_room` was asked before the write)."""
        return self.tasks.enqueue(
            cube_id,
            user_id,
            label,
            payload,
            request_task_id=request_task_id,
            max_attempts=self.config.scheduler.max_attempts,
            task_id=task_id,
        )

    def discard(self, task_ids: Sequence[str]) -> int:
        """Drop recorded tasks that have not run, because the request that recorded them
        failed."""
        return self.tasks.discard(task_ids)

    def wake(self, cube_id: str, attempts: int = 3) -> None:
        """Have the cube's actor run what was recorded, without waiting for it.

        An actor ends itself when idle; one that was ending as the task was recorded answers
        the wake-up with RayActorError, and then a new actor is made (the name is free again)
        and woken. Failing to reach the actor at all raises: the caller undoes its request.
        """
        ref = self.actor(cube_id).notify.remote()

        def check(done: Any) -> None:
            try:
                done.result()
            except RayActorError:
                if attempts > 1:
                    # Not here: this runs on Ray's own callback thread, and a Ray call made
                    # from it waits on that same thread (it hung). A thread of its own.
                    threading.Thread(
                        target=self.wake, args=(cube_id, attempts - 1), daemon=True
                    ).start()
                else:
                    logger.error("the scheduler of cube %s kept dying on wake-up", cube_id)
            except Exception:
                logger.exception("waking the scheduler of cube %s failed", cube_id)

        ref.future().add_done_callback(check)

    def resume_all(self) -> int:
        """After a restart: wake the scheduler of every cube with unfinished tasks."""
        cubes = self.tasks.cubes_with_pending()
        for cube_id in cubes:
            self.wake(cube_id)
        return len(cubes)
