"""Per-cube scheduler actors on a real local Ray cluster, over the durable task log (SQLite).

Handlers are real ones from tests/fixtures/task_handlers.py: they append to a per-cube log,
so the order and count of what was applied can be read back.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from memos_ray.config import MemosConfig
from memos_ray.runtime.compose import build_tenancy_store
from memos_ray.scheduler.actor import SchedulerClient, scheduler_name
from memos_ray.stores.sql.tasks import QueueFullError, SQLTaskStore, Task

pytestmark = pytest.mark.ray

HANDLERS = {
    "record": "tests.fixtures.task_handlers:record",
    "slow_record": "tests.fixtures.task_handlers:slow_record",
    "fail": "tests.fixtures.task_handlers:always_fail",
    "interval": "tests.fixtures.task_handlers:interval",
    "spawn": "tests.fixtures.task_handlers:spawn_then_fail_once",
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
    """Not timed (the machine is shared): the handlers log when they ran, and tasks of
    different cubes must have been running at the same moment."""
    cubes = [f"parallel-{i}" for i in range(8)]
    for n in range(3):
        for cube in cubes:
            client.submit(cube, "u", "interval", {"n": n, "sleep": 0.5})
    for cube in cubes:
        _wait_done(client, cube)
    rows = [line.split() for line in (config.data_dir / "intervals.log").read_text().splitlines()]
    spans = [(cube, float(a), float(b)) for cube, a, b in rows if cube.startswith("parallel-")]
    assert len(spans) == 24
    # Within a cube: one at a time. Across cubes: overlapping.
    for cube in cubes:
        own = sorted((a, b) for c, a, b in spans if c == cube)
        assert all(prev[1] <= nxt[0] for prev, nxt in itertools.pairwise(own))
    busiest = max(sum(1 for _, a, b in spans if a <= t < b) for _, t, _ in spans)
    assert busiest >= 3, busiest


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


def test_tasks_left_by_a_stopped_service_complete_after_restart(
    client: SchedulerClient, config: MemosConfig
) -> None:
    import ray

    cube = "restarted"
    for n in range(20):
        client.submit(cube, "u", "slow_record", {"n": n, "sleep": 0.1})
    time.sleep(0.3)
    # The service stops: its scheduler is gone for good (no Ray restart), tasks stay queued.
    actor = ray.get_actor(scheduler_name(config, cube), namespace=config.serving.namespace)
    ray.kill(actor, no_restart=True)
    time.sleep(0.5)
    left = client.tasks.pending(cube)
    assert left > 0
    # A new service starts: it resumes every cube with unfinished tasks.
    fresh = SchedulerClient(config, SQLTaskStore(build_tenancy_store(config).engine))
    assert fresh.resume_all() >= 1
    done = _wait_done(fresh, cube)
    assert {t.state for t in done} == {"completed"}
    assert sorted(n for _, n in _applied(config, cube)) == list(range(20))


@dataclasses.dataclass
class ApiUnderTest:
    http: httpx.Client
    config: MemosConfig
    engine: Any  # the API's own SQL engine: the test counts what the routes read


@contextmanager
def _api(
    config: MemosConfig, embedder: Any, folder: str, queue_limit: int
) -> Iterator[ApiUnderTest]:
    """The HTTP API with its own scheduler, on embedded stores in a folder of the data dir.
    `mem_read` is the logging handler (no LLM reads anything); `mem_feedback` the real one
    over a scripted model (see tests/fixtures/scripted_model.py)."""
    from memos_ray import __version__
    from memos_ray.api.app import create_app
    from memos_ray.api.context import ApiContext
    from memos_ray.runtime.compose import LocalStack
    from memos_ray.services.fine import FineService
    from tests.fixtures.scripted_model import ScriptedChatModel
    from tests.fixtures.servers import serve_in_thread

    api_config = config.model_copy(
        update={
            "data_dir": config.data_dir / folder,
            "scheduler": config.scheduler.model_copy(
                update={
                    "queue_limit": queue_limit,
                    "handlers": {**HANDLERS, "mem_read": "tests.fixtures.task_handlers:record"},
                }
            ),
        }
    )
    with LocalStack(api_config, embedder=embedder) as stack:
        scheduler = SchedulerClient(api_config, SQLTaskStore(stack.tenancy.engine))
        fine = FineService(stack.service, ScriptedChatModel([]))
        services = dataclasses.replace(stack.services, fine=fine)
        context = ApiContext.of(services, __version__, scheduler)
        with (
            serve_in_thread(create_app(lambda: context)) as url,
            httpx.Client(base_url=url, timeout=60) as http,
        ):
            yield ApiUnderTest(http, api_config, stack.tenancy.engine)


@pytest.fixture(scope="module")
def api_run(client: SchedulerClient, config: MemosConfig, embedder: Any) -> Iterator[ApiUnderTest]:
    """A small queue limit (2), to see 429s."""
    with _api(config, embedder, "api", queue_limit=2) as run:
        yield run


@pytest.fixture(scope="module")
def api(api_run: ApiUnderTest) -> httpx.Client:
    return api_run.http


def test_200_concurrent_http_adds_are_read_in_order_once(
    client: SchedulerClient, config: MemosConfig, embedder: Any
) -> None:
    """Through HTTP: each async add is acknowledged with its task, every task runs once, in
    the order the service recorded them, and every fast memory is there."""
    with _api(config, embedder, "api-wide", queue_limit=1000) as run:
        http = run.http

        def add(n: int) -> dict[str, Any]:
            response = http.post(
                "/product/add",
                json={"user_id": "crowd", "messages": f"crowd note {n}: item {n * 7919}"},
            )
            assert response.status_code == 200, response.text
            [entry] = response.json()["data"]
            return entry

        with ThreadPoolExecutor(8) as pool:
            entries = list(pool.map(add, range(200)))
        waited = http.post(
            "/product/scheduler/wait",
            json={"user_name": "crowd", "user_id": "crowd", "timeout_seconds": 120},
        ).json()["data"]
        assert waited["pending"] == 0 and not waited["timed_out"]
        api_config = config.model_copy(update={"data_dir": config.data_dir / "api-wide"})
        tasks = SQLTaskStore(build_tenancy_store(api_config).engine).find(
            cube_id="crowd", limit=1000
        )
        assert {t.state for t in tasks} == {"completed"} and len(tasks) == 200
        assert {t.task_id for t in tasks} == {e["task_id"] for e in entries}
        # Each task reads the memory its add stored.
        by_task = {t.task_id: t.payload["memory_ids"] for t in tasks}
        assert all(by_task[e["task_id"]] == [e["memory_id"]] for e in entries)
        applied = [task_id for task_id, _ in _applied(api_config, "crowd")]
        assert applied == [t.task_id for t in sorted(tasks, key=lambda t: t.seq)]
        stored = http.post("/product/get_memory", json={"user_id": "crowd"})
        memories = stored.json()["data"]["text_mem"][0]["memories"]
        assert {m["id"] for m in memories} == {e["memory_id"] for e in entries}


def test_cube_concurrency_is_capped_cluster_wide(config: MemosConfig) -> None:
    """max_concurrent_cubes=2: never more than two cubes run at once (logged intervals),
    yet every task of six cubes completes."""
    capped = config.model_copy(
        update={
            "data_dir": config.data_dir / "capped",
            "scheduler": config.scheduler.model_copy(update={"max_concurrent_cubes": 2}),
        }
    )
    capped.data_dir.mkdir(parents=True, exist_ok=True)
    sched = SchedulerClient(capped, SQLTaskStore(build_tenancy_store(capped).engine))
    cubes = [f"capped-{i}" for i in range(6)]
    for n in range(2):
        for cube in cubes:
            sched.submit(cube, "u", "interval", {"n": n, "sleep": 0.3})
    for cube in cubes:
        assert {t.state for t in _wait_done(sched, cube)} == {"completed"}
    rows = [line.split() for line in (capped.data_dir / "intervals.log").read_text().splitlines()]
    spans = [(float(a), float(b)) for _, a, b in rows]
    assert len(spans) == 12
    busiest = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
    assert busiest == 2, busiest


def test_follow_up_tasks_are_queued_once(client: SchedulerClient, config: MemosConfig) -> None:
    """A handler that queues a follow-up and then dies is run again: the follow-up it
    queued the first time is found, not queued twice."""
    cube = "follow"
    first = client.submit(cube, "u", "spawn", {"n": 1})
    done = _wait_done(client, cube)
    [parent] = [t for t in done if t.task_id == first.task_id]
    children = [t for t in done if t.task_id != first.task_id]
    assert parent.state == "completed" and parent.attempts == 2  # failed once after queuing
    assert len(children) == 1 and children[0].label == "record"
    assert children[0].state == "completed"
    assert [n for _, n in _applied(config, cube)] == [101]


def test_async_add_queues_work_and_says_429_when_full(api: httpx.Client) -> None:
    def add(n: int) -> httpx.Response:
        return api.post(
            "/product/add",
            json={
                "user_id": "busy",
                "messages": f"note {n}: " + "words " * 5,
                "task_id": f"req-{n}",
            },
        )

    first = add(0)
    assert first.status_code == 200, first.text
    [entry] = first.json()["data"]
    assert entry["task_id"] and "queued" in first.json()["message"]
    responses = [add(n) for n in range(1, 6)]
    refused = [r for r in responses if r.status_code == 429]
    assert refused and int(refused[0].headers["Retry-After"]) > 0
    assert "queued" in refused[0].json()["message"]
    status = api.get("/product/scheduler/status", params={"user_id": "busy", "task_id": "req-0"})
    assert [t["task_id"] for t in status.json()["data"]] == [entry["task_id"]]
    waited = api.post(
        "/product/scheduler/wait",
        json={"user_name": "busy", "user_id": "busy", "timeout_seconds": 30},
    )
    assert waited.json()["data"]["pending"] == 0 and not waited.json()["data"]["timed_out"]


def test_dead_letter_is_visible_through_the_status_api(
    api: httpx.Client, client: SchedulerClient
) -> None:
    # The API has its own data dir, hence its own task log: the failing task goes there.
    api_config = client.config.model_copy(update={"data_dir": client.config.data_dir / "api"})
    scheduler = SchedulerClient(api_config, SQLTaskStore(build_tenancy_store(api_config).engine))
    bad = scheduler.submit("doomed", "doomed", "fail", {"n": 7})
    _wait_done(scheduler, "doomed")
    body = api.get("/product/scheduler/status", params={"user_id": "doomed"}).json()
    [task] = body["data"]
    assert task["task_id"] == bad.task_id and task["state"] == "failed" and task["attempts"] == 3
    assert task["status"] == "failed"  # MemOS's field name
    assert "handler refuses task 7" in task["error"] and body["summary"] == {"failed": 1}
    stream = api.get("/product/scheduler/stream", params={"user_id": "doomed"})
    frames = [
        json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: ")
    ]
    assert frames[0]["data"]["state"] == "failed" and frames[-1]["type"] == "end"


def test_idle_scheduler_exits_and_comes_back_on_demand(
    client: SchedulerClient, config: MemosConfig
) -> None:
    import ray

    quick = SchedulerClient(
        config.model_copy(
            update={"scheduler": config.scheduler.model_copy(update={"idle_exit_s": 1.0})}
        ),
        client.tasks,
    )
    cube = "idle"
    quick.submit(cube, "u", "record", {"n": 1})
    _wait_done(quick, cube)
    name = scheduler_name(config, cube)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=config.serving.namespace)
        except ValueError:
            break  # gone
        time.sleep(0.5)
    else:
        raise AssertionError("the idle scheduler did not exit")
    quick.submit(cube, "u", "record", {"n": 2})
    _wait_done(quick, cube)
    assert [n for _, n in _applied(config, cube)] == [1, 2]


def test_task_stream_is_pushed_by_the_task_log_not_polled(api_run: ApiUnderTest) -> None:
    """While a task runs for 3 s the stream reads the task log only when the task changes
    (claimed, finished): the change feed wakes it. Polling every 0.5 s would read 6+ times."""
    from sqlalchemy import event

    reads: list[float] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and " tasks" in statement:
            reads.append(time.monotonic())

    scheduler = SchedulerClient(api_run.config, SQLTaskStore(api_run.engine))
    event.listen(api_run.engine, "before_cursor_execute", count)
    try:
        task = scheduler.submit("pushed", "pushed", "slow_record", {"n": 1, "sleep": 3})
        frames: list[tuple[float, dict[str, Any]]] = []
        with api_run.http.stream(
            "GET", "/product/scheduler/stream", params={"user_id": "pushed"}
        ) as stream:
            started = time.monotonic()
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    frames.append((time.monotonic(), json.loads(line[6:])))
        streamed = [r for r in reads if r >= started]
    finally:
        event.remove(api_run.engine, "before_cursor_execute", count)
    states = [f["data"]["state"] for _, f in frames if f["type"] == "task"]
    assert states[-1] == "completed" and frames[-1][1]["type"] == "end", frames
    assert frames[-1][0] - started >= 2.5  # the stream did wait out the 3 s task
    # One read to start, one per change (claimed, completed) and the stream's own: not 6+.
    assert len(streamed) <= 4, len(streamed)
    assert scheduler.tasks.get([task.task_id])[0].state == "completed"
