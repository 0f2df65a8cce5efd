"""The task log's change feed: streams wait on it instead of re-reading SQL every interval.

Every write to the task log (a task recorded, claimed, finished, failed, requeued) goes
through `FeedingTaskStore`, which tells one detached actor per app (`TaskFeed`) which keys
changed: `user:<id>` and `cube:<id>`, or `*` for writes whose users are not known. A stream
asks the feed to hold its call until one of its keys changes, then reads the log once. The
feed holds no task data, only a sequence number per key: if it restarts it starts at zero, and
a waiter whose number is ahead of the feed's is told "changed" at once (it reads the log again
and carries on).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import ray

from memos_ray.config import MemosConfig
from memos_ray.embedded.falkordb_actor import actor_suffix
from memos_ray.stores.sql.tasks import Task, TaskStore

logger = logging.getLogger("memos_ray.scheduler.feed")

ANY = "*"
# A feed call never blocks longer than this: a waiter on a feed that restarted finds out.
MAX_WAIT_S = 30.0


def task_keys(task: Task) -> list[str]:
    return [f"user:{task.user_id}", f"cube:{task.cube_id}"]


class ChangeLog:
    """Sequence numbers by key, bounded: the oldest keys are forgotten past `max_keys`, and a
    forgotten key counts as changed at the moment it was forgotten (a waiter reads once more,
    which is never wrong)."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.seq = 0
        self.max_keys = max_keys
        self.last: OrderedDict[str, int] = OrderedDict()
        self.floor = 0

    def changed(self, keys: Sequence[str]) -> int:
        self.seq += 1
        for key in keys:
            self.last[key] = self.seq
            self.last.move_to_end(key)
        while len(self.last) > self.max_keys:
            self.last.popitem(last=False)
            self.floor = self.seq
        return self.seq

    def newer(self, keys: Sequence[str], after: int) -> bool:
        """Whether any of `keys` changed after `after` (always, for a number the log never
        gave: the feed restarted since)."""
        if after > self.seq:
            return True
        latest = max((self.last.get(k, self.floor) for k in (*keys, ANY)), default=0)
        return latest > after


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class TaskFeed:
    """One per app (data dir); async, so thousands of waiters cost no thread."""

    def __init__(self) -> None:
        self._log = ChangeLog()
        self._event = asyncio.Event()

    async def changed(self, keys: list[str]) -> int:
        seq = self._log.changed(keys)
        # Wake every waiter; each checks its own keys and waits again on a fresh event.
        self._event.set()
        self._event = asyncio.Event()
        return seq

    async def wait(self, keys: list[str], after: int | None, timeout_s: float) -> tuple[bool, int]:
        """(changed, sequence number to pass next time). `after=None` answers at once: the
        caller's starting point, taken before its first read of the log."""
        if after is None:
            return True, self._log.seq
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(timeout_s, 0.0), MAX_WAIT_S)
        while not self._log.newer(keys, after):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False, after
            event = self._event
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return False, after
        return True, self._log.seq


class FeedUnavailable(RuntimeError):
    """No Ray in this process: its callers read the task log on a timer instead."""


def task_feed(config: MemosConfig) -> Any:
    """The app's feed actor. Never starts Ray: a process without a cluster (an app run with no
    Ray, a script) would otherwise get a new one of its own, seconds into a request."""
    if not ray.is_initialized():
        raise FeedUnavailable("no Ray cluster in this process")
    return TaskFeed.options(  # type: ignore[attr-defined]
        name=f"memos-task-feed-{actor_suffix(config)}",
        namespace=config.serving.namespace,
        get_if_exists=True,
        lifetime="detached",
    ).remote()


class FeedWaiter:
    """A stream's side: `await next_change()` returns when one of its keys changed (True) or
    `timeout_s` passed (False). Without a reachable feed it sleeps `fallback_s` and says
    changed, so the stream reads the log as before rather than stalling."""

    def __init__(self, config: MemosConfig, keys: Sequence[str], fallback_s: float) -> None:
        self.config = config
        self.keys = list(keys)
        self.fallback_s = fallback_s
        self.seq: int | None = None
        self._feed: Any = None

    async def start(self) -> None:
        """Take the starting point; call before the first read of the log."""
        await self.next_change(0.0)

    async def next_change(self, timeout_s: float) -> bool:
        try:
            if self._feed is None:
                self._feed = await asyncio.to_thread(task_feed, self.config)
            changed, self.seq = await self._feed.wait.remote(self.keys, self.seq, timeout_s)
            return bool(changed)
        except Exception as exc:  # no Ray here, an actor restarting, Ray going away
            if not isinstance(exc, FeedUnavailable):
                logger.warning("task feed unreachable (%r); reading the task log on a timer", exc)
            self._feed = None
            self.seq = None
            await asyncio.sleep(min(self.fallback_s, max(timeout_s, 0.0)))
            return True


class FeedingTaskStore(TaskStore):
    """A task log that tells the feed about each of its writes (fire and forget: a lost
    notice delays a stream's frame until its next read, it never loses a task)."""

    def __init__(self, inner: TaskStore, config: MemosConfig) -> None:
        self.inner = inner
        self.config = config
        self._feed: Any = None

    def _notify(self, keys: list[str]) -> None:
        try:
            if self._feed is None:
                self._feed = task_feed(self.config)
            self._feed.changed.remote(keys)
        except Exception as exc:
            self._feed = None
            logger.debug("task feed not told of %s: %r", keys, exc)

    def _told(self, task: Task) -> Task:
        self._notify(task_keys(task))
        return task

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
        return self._told(
            self.inner.enqueue(
                cube_id,
                user_id,
                label,
                payload,
                request_task_id=request_task_id,
                max_attempts=max_attempts,
                queue_limit=queue_limit,
                task_id=task_id,
            )
        )

    def claim(self, cube_id: str) -> Task | None:
        task = self.inner.claim(cube_id)
        return None if task is None else self._told(task)

    def complete(self, task_id: str, result: dict[str, Any] | None = None) -> Task:
        return self._told(self.inner.complete(task_id, result))

    def fail(self, task_id: str, error: str, retry_in_s: float | None) -> Task:
        return self._told(self.inner.fail(task_id, error, retry_in_s))

    def requeue_unfinished(self, cube_id: str) -> int:
        count = self.inner.requeue_unfinished(cube_id)
        if count:
            self._notify([ANY])
        return count

    def discard(self, task_ids: Sequence[str]) -> int:
        count = self.inner.discard(task_ids)
        if count:
            self._notify([ANY])
        return count

    def get(self, task_ids: Sequence[str]) -> list[Task]:
        return self.inner.get(task_ids)

    def find(
        self,
        *,
        user_id: str | None = None,
        cube_id: str | None = None,
        request_task_id: str | None = None,
        states: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> list[Task]:
        return self.inner.find(
            user_id=user_id,
            cube_id=cube_id,
            request_task_id=request_task_id,
            states=states,
            limit=limit,
        )

    def count_by_state(self, user_id: str | None = None) -> dict[str, int]:
        return self.inner.count_by_state(user_id)

    def pending(self, cube_id: str) -> int:
        return self.inner.pending(cube_id)

    def cubes_with_pending(self) -> list[str]:
        return self.inner.cubes_with_pending()

    def waiting_with_label(self, cube_id: str, label: str) -> bool:
        return self.inner.waiting_with_label(cube_id, label)

    def next_runnable_in_s(self, cube_id: str) -> float | None:
        return self.inner.next_runnable_in_s(cube_id)
