"""The change feed (memos_ray.scheduler.feed): what a waiter is told, and no Ray without Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from memos_ray.scheduler.feed import ANY, ChangeLog


def test_a_waiter_hears_only_of_its_own_keys() -> None:
    log = ChangeLog()
    start = log.seq
    log.changed(["user:bob", "cube:bob"])
    assert not log.newer(["user:alice"], start)
    assert log.newer(["user:bob"], start)
    after = log.changed(["user:alice"])
    assert not log.newer(["user:alice"], after)
    assert not log.newer(["user:bob"], after)


def test_a_change_to_any_key_reaches_every_waiter() -> None:
    log = ChangeLog()
    start = log.changed(["user:bob"])
    log.changed([ANY])  # a requeue after a crash: whose tasks is not known
    assert log.newer(["user:alice"], start)


def test_a_number_the_feed_never_gave_means_it_restarted() -> None:
    log = ChangeLog()
    assert log.newer(["user:alice"], 7)  # a new feed is at 0: read the log again


def test_forgotten_keys_count_as_changed_when_forgotten() -> None:
    log = ChangeLog(max_keys=2)
    start = log.changed(["a"])
    log.changed(["b"])
    log.changed(["c"])  # "a" is forgotten now
    assert len(log.last) == 2
    assert log.newer(["a"], start)
    assert not log.newer(["a"], log.seq)


# Run in a process of its own: the check is that no Ray appears in a process that had none.
_NO_RAY_SCRIPT = """
import asyncio, json, sys, time

import ray
import sqlalchemy

from memos_ray.config import MemosConfig
from memos_ray.scheduler.feed import FeedingTaskStore, FeedWaiter
from memos_ray.stores.sql.tasks import SQLTaskStore

config = MemosConfig(data_dir=sys.argv[1])
store = FeedingTaskStore(SQLTaskStore(sqlalchemy.create_engine("sqlite://")), config)
store.enqueue("cube-1", "user-1", "mem_read", {"memory_ids": []})


async def wait() -> bool:
    waiter = FeedWaiter(config, ["cube:cube-1"], fallback_s=0.05)
    await waiter.start()
    return await waiter.next_change(5.0)


started = time.monotonic()
changed = asyncio.run(wait())
print(json.dumps({"ray": ray.is_initialized(), "seconds": time.monotonic() - started,
                  "changed": changed, "pending": store.pending("cube-1")}))
"""


def test_without_ray_the_feed_never_starts_a_cluster(tmp_path: Path) -> None:
    """A task written and a wait in a process with no Ray: the feed is skipped (the waiter
    reads the log on its timer) instead of Ray starting a cluster inside the request."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", _NO_RAY_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["ray"] is False
    assert seen["changed"] is True and seen["pending"] == 1
    assert seen["seconds"] < 2.0  # two timer sleeps of 0.05 s, not a cluster's start-up
