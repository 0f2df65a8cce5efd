"""jobs.reembed against the running app: a cube changes embedding model under live traffic.

The app runs on Ray Serve; the job runs in this process (its `run`) on the same Ray cluster,
so it reaches the app's stores through their owner actors, as `ray job submit` would. A
thread keeps adding and searching through HTTP for the whole move. The new model is MiniLM
with a 384 -> 256 projection (tests/jobs/test_reembed.py): a query embedded with the wrong
model against the wrong store fails outright (dimension mismatch), so "no request failed"
also says that each request used the model of the cube's current space.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from memos_ray.config import MemosConfig
from memos_ray.core.reader import Window
from memos_ray.domain.memory import MemoryType, SourceMessage
from memos_ray.runtime.launcher import wait_ready
from memos_ray.services.reembed import ReembedParams
from memos_ray.services.spaces import SpaceRegistry, SpaceStores, space_for_model
from tests.fixtures.servers import free_port
from tests.jobs.test_reembed import NEW_DIM, save_projected_model

pytestmark = pytest.mark.ray

SUBJECTS = ["violin", "kayak", "sourdough", "telescope", "chess", "orchid", "pottery", "tango"]


def _text(cube: str, n: int) -> str:
    subject = SUBJECTS[n % len(SUBJECTS)]
    return f"Note {n} of {cube}: the {subject} lesson moved to room {100 + n}."


@pytest.fixture(scope="module")
def live_config(tmp_path_factory: pytest.TempPathFactory) -> MemosConfig:
    return MemosConfig(
        data_dir=tmp_path_factory.mktemp("reembed-live"),
        embedder={"num_cpus": 0.5},
        llm={"backend": "none"},
        preference={"backend": "none"},
    ).resolved()


@pytest.fixture(scope="module")
def live_url(ray_cluster: None, live_config: MemosConfig) -> Iterator[str]:
    from ray import serve

    from deployments.app import build_from_config
    from memos_ray.runtime.compose import stop_embedded

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    serve.run(build_from_config(live_config), name="memos", route_prefix="/")
    wait_ready(url)
    yield url
    serve.shutdown()
    stop_embedded(live_config)  # the space shard the move opened included


@dataclass
class Traffic:
    """What the client thread saw, by phase of the test ("before", "job", "after")."""

    phase: str = "before"
    added: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (text, phase)
    failures: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_add(self, memory_id: str, text: str, phase: str) -> None:
        with self.lock:
            self.added[memory_id] = (text, phase)

    def adds_in(self, phase: str) -> int:
        with self.lock:
            return sum(1 for _, p in self.added.values() if p == phase)


def _add(http: httpx.Client, cube: str, texts: list[str]) -> dict[str, str]:
    messages = [{"role": "user", "content": t} for t in texts]
    response = http.post(
        "/product/add", json={"user_id": cube, "messages": messages, "async_mode": "sync"}
    )
    assert response.status_code == 200, response.text
    return {m["memory_id"]: m["memory"] for m in response.json()["data"]}


def _search(http: httpx.Client, cube: str, query: str) -> httpx.Response:
    body = {"user_id": cube, "query": query, "top_k": 5, "relativity": 0}
    return http.post("/product/search", json=body)


def _hit_ids(response: httpx.Response) -> list[str]:
    return [m["id"] for m in response.json()["data"]["text_mem"][0]["memories"]]


def _run_traffic(
    url: str, cube: str, other: str, existing: dict[str, str], traffic: Traffic
) -> None:
    """Adds to the moving cube, searches it for memories that existed before the move (they
    must be found at every moment), and now and then searches the other cube."""
    known = list(existing.items())
    with httpx.Client(base_url=url, timeout=120) as http:
        n = 1000
        while not traffic.stop.is_set():
            phase = traffic.phase
            n += 1
            text = _text(cube, n)
            try:
                added = http.post(
                    "/product/add",
                    json={"user_id": cube, "messages": [{"role": "user", "content": text}]},
                )
                if added.status_code != 200:
                    traffic.failures.append(f"add {phase}: {added.status_code} {added.text}")
                else:
                    [entry] = added.json()["data"]
                    traffic.record_add(entry["memory_id"], text, phase)
                memory_id, memory = known[n % len(known)]
                found = _search(http, cube, memory)
                if found.status_code != 200:
                    traffic.failures.append(f"search {phase}: {found.status_code} {found.text}")
                elif memory_id not in _hit_ids(found):
                    traffic.misses.append(f"{phase}: {memory!r} not found")
                if n % 3 == 0:
                    elsewhere = _search(http, other, "Which lesson moved?")
                    if elsewhere.status_code != 200:
                        traffic.failures.append(f"other cube {phase}: {elsewhere.text}")
            except httpx.HTTPError as exc:
                traffic.failures.append(f"{phase}: {exc!r}")
            traffic.requests[phase] = traffic.requests.get(phase, 0) + 1


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def test_reembed_job_moves_a_cube_under_live_traffic(
    live_url: str, live_config: MemosConfig, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from jobs.reembed import run
    from memos_ray.runtime.compose import build_ray_stores, build_tenancy_store
    from memos_ray.scheduler.services import build_task_services
    from memos_ray.services.memory import SearchOptions

    config = live_config
    model = save_projected_model(tmp_path_factory.mktemp("live-proj256"))
    target = space_for_model(config, str(model), NEW_DIM)
    cube, other = f"mover-{uuid.uuid4().hex[:6]}", f"stayer-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=live_url, timeout=120) as http:
        existing = _add(http, cube, [_text(cube, n) for n in range(8)])
        untouched = _add(http, other, [_text(other, n) for n in range(8)])

        traffic = Traffic()
        worker = threading.Thread(
            target=_run_traffic, args=(live_url, cube, other, existing, traffic), daemon=True
        )
        worker.start()
        try:
            _wait_for(lambda: traffic.adds_in("before") >= 2, "adds before the move")
            traffic.phase = "job"
            # Longer than the services' registry ttl (1 s) plus a request: see ReembedParams.
            summary = run(config, [cube], False, target, ReembedParams(grace_s=3), concurrency=1)
            traffic.phase = "after"
            _wait_for(lambda: traffic.adds_in("after") >= 3, "adds after the move")
        finally:
            traffic.stop.set()
            worker.join(timeout=120)

        assert summary["errors"] == 0 and summary["moved"] == 1, summary
        assert not traffic.failures, traffic.failures[:5]
        assert not traffic.misses, traffic.misses[:5]
        assert traffic.requests.get("job", 0) > 0  # the traffic did overlap the move

        # Every memory of the moving cube, whenever it was added, is found afterwards.
        everything = {**existing, **{i: text for i, (text, _) in traffic.added.items()}}
        for memory_id, text in everything.items():
            found = _search(http, cube, text)
            assert found.status_code == 200, found.text
            assert memory_id in _hit_ids(found), f"{text!r} not found after the move"
        for memory_id, text in untouched.items():
            assert memory_id in _hit_ids(_search(http, other, text))

    # The stores: the moved cube lives in the 256-d store only, written with the new model
    # after the switch; the other cube was not touched.
    graph, vectors = build_ray_stores(config)
    stores = SpaceStores(config, vectors, in_ray=True)
    registry = SpaceRegistry(build_tenancy_store(config).engine)
    new = stores.store(target)
    try:
        assert registry.get(cube).active == target and registry.get(other) is None
        assert vectors.count(cube) == 0  # the old space's points are gone
        assert new.count(cube) == len(everything)
        records = {r.id: r for r in new.retrieve(cube, list(everything))}
        assert {len(r.dense) for r in records.values()} == {NEW_DIM}
        late = [i for i, (_, phase) in traffic.added.items() if phase == "after"]
        encoder = _new_model(model)
        expected = encoder([everything[i] for i in late])
        for memory_id, vector in zip(late, expected, strict=True):
            assert float(np.dot(records[memory_id].dense, vector)) > 0.999
        assert vectors.count(other) == len(untouched) and new.count(other) == 0

        # The scheduler actors' services follow the record the same way.
        services = build_task_services(config)
        options = SearchOptions(relativity=0, top_k=3)
        probe = everything[late[0]]
        assert services.memory.search(probe, {cube: None}, options)[cube][0].id == late[0]
        assert services.memory.nearest(cube, probe, 1)[0].id == late[0]
        fact = f"{cube} was written by a scheduler task."
        [written] = services.memory.add_windows(cube, cube, [_window(fact)]).stored
        assert [r.id for r in new.retrieve(cube, [written.id])] == [written.id]
        assert vectors.retrieve(cube, [written.id]) == []
    finally:
        stores.close()
        graph.close()


def _new_model(path: Path) -> Callable[[list[str]], np.ndarray]:
    from memos_ray.models.embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(str(path)).embed


def _window(text: str) -> Window:
    source = SourceMessage(type="doc", content=text)
    return Window(text=text, memory_type=MemoryType.USER, sources=[source], mode="fine")
