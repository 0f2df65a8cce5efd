"""Per-cube scheduler actors on a real local Ray cluster, over the durable task log (SQLite).

Handlers are real ones from tests/fixtures/task_handlers.py: they append to a per-cube log,
so the order and count of what was applied can be read back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from memos_ray.config import MemosConfig
from memos_ray.scheduler import SchedulerClient, scheduler_name
from memos_ray.stores.sql.tasks import QueueFullError, SQLTaskStore, Task
from memos_ray.wiring import build_tenancy_store

pytestmark = pytest.mark.ray

HANDLERS = {
    "record": "tests.fixtures.task_handlers:record",
    "slow_record": "tests.fixtures.task_handlers:slow_record",
    "fail": "tests.fixtures.task_handlers:always_fail",
}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> MemosConfig:
    return MemosConfig(
        data_dir=tmp_path_factory.mktemp("scheduler"),
        scheduler={
            "handlers": HANDLERS,
            "retry_backoff_s": 0.05,
            "max_attempts": 3,
            "queue_limit": 400,
            "idle_exit_s": 60,
        },
    ).resolved()


@pytest.fixture(scope="module")
def client(ray_cluster: None, config: MemosConfig) -> Iterator[SchedulerClient]:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    tasks = SQLTaskStore(build_tenancy_store(config).engine)
    yield SchedulerClient(config, tasks)


def _applied(config: MemosConfig, cube: str) -> list[tuple[str, int]]:
    path = Path(config.data_dir) / f"applied-{cube}.log"
    if not path.exists():
        return []
    return [(line.split()[0], int(line.split()[1])) for line in path.read_text().splitlines()]


def _wait_done(client: SchedulerClient, cube: str, timeout_s: float = 90) -> list[Task]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.tasks.pending(cube) == 0:
            return client.tasks.find(cube_id=cube, limit=10_000)
        time.sleep(0.2)
    raise AssertionError(f"cube {cube} still has {client.tasks.pending(cube)} tasks")


def test_concurrent_adds_to_one_cube_apply_in_order_once(
    client: SchedulerClient, config: MemosConfig
) -> None:
    cube = "ordered"
    with ThreadPoolExecutor(8) as pool:
        submitted = list(
            pool.map(lambda n: client.submit(cube, "u", "record", {"n": n}), range(200))
        )
    done = _wait_done(client, cube)
    assert len(done) == 200 and {t.state for t in done} == {"completed"}
    applied = _applied(config, cube)
    by_seq = [t.task_id for t in sorted(submitted, key=lambda t: t.seq)]
    assert [task_id for task_id, _ in applied] == by_seq  # arrival order, none lost, none twice


def test_cubes_progress_in_parallel(client: SchedulerClient, config: MemosConfig) -> None:
    cubes = [f"parallel-{i}" for i in range(8)]
    started = time.monotonic()
    for n in range(5):
        for cube in cubes:
            client.submit(cube, "u", "slow_record", {"n": n, "sleep": 0.4})
    for cube in cubes:
        _wait_done(client, cube)
    elapsed = time.monotonic() - started
    # One at a time would take 8 cubes x 5 tasks x 0.4 s = 16 s.
    assert elapsed < 10, elapsed
    assert all(len(_applied(config, cube)) == 5 for cube in cubes)


def test_killed_scheduler_finishes_its_queue_once(
    client: SchedulerClient, config: MemosConfig
) -> None:
    import ray

    cube = "killed"
    for n in range(50):
        client.submit(cube, "u", "slow_record", {"n": n, "sleep": 0.05})
    time.sleep(0.6)  # some done, most still queued
    actor = ray.get_actor(scheduler_name(config, cube), namespace=config.serving.namespace)
    ray.kill(actor, no_restart=False)  # Ray restarts it; its successor resumes the queue
    done = _wait_done(client, cube)
    assert len(done) == 50 and {t.state for t in done} == {"completed"}
    applied = _applied(config, cube)
    assert sorted(n for _, n in applied) == list(range(50))  # all, none twice


def test_failing_task_ends_in_dead_letter_and_the_cube_moves_on(
    client: SchedulerClient, config: MemosConfig
) -> None:
    cube = "failing"
    bad = client.submit(cube, "u", "fail", {"n": 1})
    good = client.submit(cube, "u", "record", {"n": 2})
    _wait_done(client, cube)
    [failed] = client.tasks.get([bad.task_id])
    assert failed.state == "failed" and failed.attempts == 3
    assert "handler refuses task 1" in (failed.error or "")
    assert client.tasks.get([good.task_id])[0].state == "completed"


def test_queue_limit_refuses_without_dropping(config: MemosConfig, client: SchedulerClient) -> None:
    tight = SchedulerClient(
        config.model_copy(
            update={"scheduler": config.scheduler.model_copy(update={"queue_limit": 3})}
        ),
        client.tasks,
    )
    cube = "tight"
    accepted = []
    refused = 0
    for n in range(10):
        try:
            accepted.append(tight.submit(cube, "u", "slow_record", {"n": n, "sleep": 0.3}))
        except QueueFullError as exc:
            refused += 1
            assert exc.retry_after_s > 0 and exc.status_code == 429
    assert refused > 0 and len(accepted) >= 3
    done = _wait_done(client, cube)
    assert {t.task_id for t in done} == {t.task_id for t in accepted}
