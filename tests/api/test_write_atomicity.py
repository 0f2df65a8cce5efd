"""All or nothing per write, over real stores (embedded FalkorDB, qdrant-edge, SQLite, HTTP).

What a crash can leave (a point without its node, a node without its point) is made here
the way the crash leaves it: by writing one store and not the other. A failing vector
write is `FaultyVectorStore`, a FAULT-INJECTION DOUBLE around the real store that raises
once at a chosen point (before the write reaches the store, or after it landed, as a
timed-out call whose write still happened).
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import pytest

from memos_ray import __version__
from memos_ray.api.app import create_app
from memos_ray.api.context import ApiContext
from memos_ray.config import MemosConfig, SearchConfig
from memos_ray.core.keywords import query_vector
from memos_ray.core.reader import Window
from memos_ray.domain.memory import MemoryType, memory_id_for
from memos_ray.errors import StoreError
from memos_ray.models.embedder import SentenceTransformerEmbedder
from memos_ray.runtime.compose import LocalStack
from memos_ray.scheduler.actor import SchedulerClient
from memos_ray.services.fine import FineService
from memos_ray.services.memory import MemoryService, Reconciled, SearchOptions, items_for_windows
from memos_ray.services.preferences import preference_id
from memos_ray.services.ranking import CubeIndexCache
from memos_ray.stores.preference.base import Preference, PreferenceStore
from memos_ray.stores.sql.tasks import SQLTaskStore, Task
from memos_ray.stores.vector.base import (
    CubeScan,
    LateScores,
    SparseVector,
    VectorFilter,
    VectorHit,
    VectorRecord,
    VectorStore,
)
from tests.fixtures.scripted_model import ScriptedChatModel
from tests.fixtures.servers import serve_in_thread

FailAt = Literal["before", "after"]


class FaultyVectorStore(VectorStore):
    """FAULT-INJECTION DOUBLE: the real store, except that after `fail_next_upsert` the
    next upsert raises StoreError once, before the write ("before") or after it landed
    ("after": the caller sees a failure, the point is there)."""

    def __init__(self, inner: VectorStore) -> None:
        self.inner = inner
        self._armed: FailAt | None = None
        self._skip = 0

    def fail_next_upsert(self, at: FailAt, skip: int = 0) -> None:
        """Fail the upsert after the next `skip` ones."""
        self._armed, self._skip = at, skip

    @property
    def dim(self) -> int:
        return self.inner.dim

    def upsert(self, cube_id: str, records: Sequence[VectorRecord]) -> None:
        if self._armed is not None and self._skip:
            self._skip -= 1
            self.inner.upsert(cube_id, records)
            return
        armed, self._armed = self._armed, None
        if armed == "before":
            raise StoreError("injected: vector write failed")
        self.inner.upsert(cube_id, records)
        if armed == "after":
            raise StoreError("injected: vector write timed out (it landed)")

    def search_dense(
        self,
        cube_ids: Sequence[str],
        vector: Sequence[float],
        limit: int,
        filter: VectorFilter | None = None,
    ) -> list[VectorHit]:
        return self.inner.search_dense(cube_ids, vector, limit, filter)

    def search_sparse(
        self,
        cube_ids: Sequence[str],
        vector: SparseVector,
        limit: int,
        filter: VectorFilter | None = None,
    ) -> list[VectorHit]:
        return self.inner.search_sparse(cube_ids, vector, limit, filter)

    def revision(self, cube_id: str) -> str:
        return self.inner.revision(cube_id)

    def scan(self, cube_id: str, filter: VectorFilter | None = None) -> CubeScan:
        return self.inner.scan(cube_id, filter)

    def late_scores(self, cube_id: str, query_tokens: np.ndarray, ids: Sequence[str]) -> LateScores:
        return self.inner.late_scores(cube_id, query_tokens, ids)

    def retrieve(self, cube_id: str, ids: Sequence[str]) -> list[VectorRecord]:
        return self.inner.retrieve(cube_id, ids)

    def existing_ids(self, cube_id: str, ids: Sequence[str]) -> set[str]:
        return self.inner.existing_ids(cube_id, ids)

    def delete(self, cube_id: str, ids: Sequence[str]) -> None:
        self.inner.delete(cube_id, ids)

    def count(self, cube_id: str) -> int:
        return self.inner.count(cube_id)

    def close(self) -> None:
        self.inner.close()


class FaultyTaskStore(SQLTaskStore):
    """FAULT-INJECTION DOUBLE: the real SQL task log, except that after `fail_next_enqueue`
    the enqueue after the next `skip` ones raises StoreError once (nothing recorded)."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self._armed = False
        self._skip = 0

    def fail_next_enqueue(self, skip: int = 0) -> None:
        self._armed, self._skip = True, skip

    def enqueue(self, *args: Any, **kwargs: Any) -> Task:
        if self._armed and not self._skip:
            self._armed = False
            raise StoreError("injected: task log write failed")
        self._skip = max(self._skip - 1, 0)
        return super().enqueue(*args, **kwargs)


@dataclass
class Api:
    http: httpx.Client
    # Async adds go to a second app with a scheduler and a (scripted) model.
    async_http: httpx.Client
    service: MemoryService
    preferences: PreferenceStore
    vectors: FaultyVectorStore
    tasks: FaultyTaskStore
    config: MemosConfig

    def add(self, user: str, text: str, **fields: Any) -> httpx.Response:
        body = {"user_id": user, "messages": text, "async_mode": "sync", **fields}
        return self.http.post("/product/add", json=body)

    def search(self, user: str, query: str) -> list[str]:
        body = {"user_id": user, "query": query, "relativity": 0.0, "dedup": "no", "top_k": 20}
        response = self.http.post("/product/search", json=body)
        assert response.status_code == 200, response.text
        return [m["id"] for m in response.json()["data"]["text_mem"][0]["memories"]]

    def traces(self, cube: str, memory_id: str, word: str) -> dict[str, bool]:
        """Where the memory is: graph, vector point, keyword index, ranking index."""
        index = CubeIndexCache(self.service.vectors, self.config.search.ranking).get(cube)
        keyword = self.service.vectors.search_sparse([cube], query_vector(word), 50)
        return {
            "graph": bool(self.service.graph.existing_ids(cube, [memory_id])),
            "vectors": bool(self.service.vectors.existing_ids(cube, [memory_id])),
            "keywords": memory_id in [h.id for h in keyword],
            "ranking": memory_id in index.index.ids,
        }


NOWHERE = {"graph": False, "vectors": False, "keywords": False, "ranking": False}
EVERYWHERE = {"graph": True, "vectors": True, "keywords": True, "ranking": True}


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder
) -> Iterator[Api]:
    data_dir: Path = tmp_path_factory.mktemp("write-atomicity")
    config = MemosConfig(data_dir=data_dir).resolved()
    with LocalStack(config, embedder=embedder) as stack:
        vectors = FaultyVectorStore(stack.service.vectors)
        service = MemoryService(stack.service.graph, vectors, embedder, None, config.search)
        tasks = FaultyTaskStore(stack.tenancy.engine)
        # The composition root's services, with the fault-injecting vector store under them.
        faulty = dataclasses.replace(stack.services, memory=service)
        plain = ApiContext.of(faulty, __version__)
        fine = FineService(service, ScriptedChatModel([]))
        queued = ApiContext.of(
            dataclasses.replace(faulty, fine=fine, preferences=None),
            __version__,
            SchedulerClient(config, tasks),
        )
        with (
            serve_in_thread(create_app(lambda: plain)) as url,
            serve_in_thread(create_app(lambda: queued)) as async_url,
            httpx.Client(base_url=url, timeout=60) as http,
            httpx.Client(base_url=async_url, timeout=60) as async_http,
        ):
            assert stack.preferences is not None
            yield Api(http, async_http, service, stack.preferences.store, vectors, tasks, config)


def note(text: str) -> Window:
    """A window as a plain-text add makes it (same text, so the same memory id)."""
    return Window(text=text, memory_type=MemoryType.LONG_TERM, sources=[])


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def test_point_without_node_is_not_found_and_delete_removes_it(api: Api) -> None:
    """(a) A vector point whose node is missing (a write landed after its rollback, a graph
    that lost its last second): search never returns it, delete by id removes it."""
    user = new_user()
    assert api.add(user, "The lighthouse keeper feeds the gulls at dawn.").status_code == 200
    word = f"orphanword{uuid.uuid4().hex[:6]}"
    [item] = items_for_windows(user, user, [note(f"My locker code is {word}.")]).values()
    seq = 1
    api.vectors.upsert(user, api.service._records(api.service.spaces.of(user), [item], [seq]))
    assert api.traces(user, item.id, word)["vectors"]
    assert not api.traces(user, item.id, word)["graph"]

    assert item.id not in api.search(user, f"locker code {word}")
    hybrid = MemoryService(
        api.service.graph, api.vectors, api.service.embedder, None, SearchConfig(ranker="hybrid")
    )
    found = hybrid.search(f"locker code {word}", {user: None}, SearchOptions(relativity=0.0))
    assert item.id not in [m.id for m in found[user]]

    # Another cube's delete of the same id does not reach this cube's point.
    other = new_user()
    assert api.add(other, "Another user's note.").status_code == 200
    body = {"user_id": other, "memory_ids": [item.id]}
    assert api.http.post("/product/delete_memory", json=body).json()["data"]["deleted_count"] == 0
    assert api.traces(user, item.id, word)["vectors"]

    body = {"user_id": user, "memory_ids": [item.id, "not-a-uuid"]}
    response = api.http.post("/product/delete_memory", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["deleted"] == {user: [item.id]}
    assert api.traces(user, item.id, word) == NOWHERE


def test_retried_add_completes_a_node_left_without_its_point(api: Api) -> None:
    """(b) A crash between the node and the point: the node is there, the point is not.
    The same add again is no duplicate: it writes the point, and the memory is found."""
    user = new_user()
    word = f"halfword{uuid.uuid4().hex[:6]}"
    text = f"The spare key hides under the {word} flowerpot."
    [item] = items_for_windows(user, user, [note(text)]).values()
    api.service.graph.upsert_nodes(user, [item])
    assert item.id not in api.search(user, f"spare key {word}")

    response = api.add(user, text)
    assert response.status_code == 200, response.text
    assert "1 stored, 0 duplicates" in response.json()["message"]
    assert response.json()["data"][0]["memory_id"] == item.id
    assert api.traces(user, item.id, word) == EVERYWHERE
    assert item.id in api.search(user, f"spare key {word}")
    # The node the first try wrote is kept as it was (its creation time).
    [node] = api.service.graph.get_nodes([user], [item.id])
    assert node.metadata.created_at == item.metadata.created_at

    again = api.add(user, text)
    assert "0 stored, 1 duplicates" in again.json()["message"]


def test_retried_add_completes_a_point_left_without_its_node(api: Api) -> None:
    """The other half: a point with no node is not a duplicate either; the retry writes
    the node and the memory is whole."""
    user = new_user()
    word = f"pointword{uuid.uuid4().hex[:6]}"
    text = f"The boiler service is booked with {word} plumbing."
    [item] = items_for_windows(user, user, [note(text)]).values()
    api.vectors.upsert(user, api.service._records(api.service.spaces.of(user), [item], [1]))
    response = api.add(user, text)
    assert "1 stored, 0 duplicates" in response.json()["message"]
    assert api.traces(user, item.id, word) == EVERYWHERE
    assert item.id in api.search(user, f"boiler {word}")


@pytest.mark.parametrize("at", ["before", "after"])
def test_failed_vector_write_leaves_nothing(api: Api, at: FailAt) -> None:
    """(c) The vector write fails (before it reached the store, or after it landed): the
    add is not answered 200 and no store keeps anything, then the retry stores it whole."""
    user = new_user()
    assert api.add(user, "A memory stored before the failure.").status_code == 200
    word = f"failword{uuid.uuid4().hex[:6]}"
    text = f"The gate code is {word}."
    memory_id = memory_id_for(user, text)
    api.vectors.fail_next_upsert(at)
    response = api.add(user, text)
    assert response.status_code >= 500
    assert api.traces(user, memory_id, word) == NOWHERE
    assert memory_id not in api.search(user, f"gate code {word}")

    assert api.add(user, text).status_code == 200
    assert api.traces(user, memory_id, word) == EVERYWHERE


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_add_to_two_cubes_failing_in_the_second_leaves_nothing_in_the_first(
    api: Api, mode: str
) -> None:
    """One request, two cubes: the first cube's write succeeded, the second's failed. The
    request answers an error, so the first cube's memory is removed again (and, async, no
    task is left for either cube)."""
    user = new_user()
    assert api.add(user, "The user's own cube exists.").status_code == 200
    team = f"team-{uuid.uuid4().hex[:6]}"
    created = api.http.post("/product/create_cube", json={"owner_id": user, "cube_id": team})
    assert created.status_code == 200, created.text
    word = f"twoword{uuid.uuid4().hex[:6]}"
    text = f"The shared printer code is {word}."
    api.vectors.fail_next_upsert("before", skip=1)
    body = {"user_id": user, "messages": text, "writable_cube_ids": [user, team]}
    client = api.async_http if mode == "async" else api.http
    response = client.post("/product/add", json={**body, "async_mode": mode})
    assert response.status_code >= 500, response.text
    for cube in (user, team):
        assert api.traces(cube, memory_id_for(cube, text), word) == NOWHERE
        assert api.tasks.find(cube_id=cube) == []


def test_async_add_whose_task_cannot_be_recorded_leaves_nothing(api: Api) -> None:
    """Two cubes written, the first cube's task recorded, the second's refused by the task
    log: the recorded task is discarded before any scheduler saw it, and the memories of
    both cubes are removed again."""
    user = new_user()
    assert api.add(user, "The user's own cube exists.").status_code == 200
    team = f"team-{uuid.uuid4().hex[:6]}"
    created = api.http.post("/product/create_cube", json={"owner_id": user, "cube_id": team})
    assert created.status_code == 200, created.text
    word = f"taskword{uuid.uuid4().hex[:6]}"
    text = f"The storage unit number is {word}."
    api.tasks.fail_next_enqueue(skip=1)
    body = {"user_id": user, "messages": text, "writable_cube_ids": [user, team]}
    response = api.async_http.post("/product/add", json={**body, "async_mode": "async"})
    assert response.status_code >= 500, response.text
    for cube in (user, team):
        assert api.tasks.find(cube_id=cube) == []
        assert api.traces(cube, memory_id_for(cube, text), word) == NOWHERE


def test_add_with_a_file_failing_after_the_chunks_removes_the_chunks(api: Api) -> None:
    """A request carrying a file and a message: the file's chunks are written, then the
    message's write fails; the chunks are removed again."""
    user = new_user()
    assert api.add(user, "The user's own cube exists.").status_code == 200
    before = (api.service.graph.count(user), api.vectors.count(user))
    text = "\n\n".join(f"Part {n}. The cellar valve {n} opens clockwise." * 20 for n in range(3))
    encoded = base64.b64encode(text.encode()).decode()
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "Here is the cellar manual."},
            {
                "type": "file",
                "file": {"file_data": f"data:text/markdown;base64,{encoded}", "filename": "m.md"},
            },
        ],
    }
    api.vectors.fail_next_upsert("before", skip=1)
    response = api.add(user, "", messages=[message])
    assert response.status_code >= 500, response.text
    assert (api.service.graph.count(user), api.vectors.count(user)) == before

    assert api.add(user, "", messages=[message]).status_code == 200
    assert api.service.graph.count(user) > before[0]


def test_failed_async_add_leaves_no_task(api: Api) -> None:
    """(d) An async add (recorded as a `mem_read` task for the scheduler) whose write
    fails: no memory and no task; the scheduler has nothing to run."""
    user = new_user()
    word = f"asyncword{uuid.uuid4().hex[:6]}"
    text = f"The bike lock combination is {word}."
    api.vectors.fail_next_upsert("before")
    body = {"user_id": user, "messages": text, "async_mode": "async", "task_id": f"req-{word}"}
    response = api.async_http.post("/product/add", json=body)
    assert response.status_code >= 500, response.text
    assert api.tasks.find(cube_id=user) == []
    assert api.tasks.pending(user) == 0
    assert api.traces(user, memory_id_for(user, text), word) == NOWHERE


def test_delete_leaves_no_trace_in_any_store_or_index(api: Api) -> None:
    """(e) A delete answered 200 leaves nothing in the graph, the vector store, the keyword
    index or the cube's ranking index, and search no longer returns it."""
    user = new_user()
    word = f"goneword{uuid.uuid4().hex[:6]}"
    added = api.add(user, f"The safe combination is {word}.").json()["data"]
    memory_id = added[0]["memory_id"]
    keep = api.add(user, "The safe is behind the painting.").json()["data"][0]["memory_id"]
    assert api.traces(user, memory_id, word) == EVERYWHERE
    assert memory_id in api.search(user, f"safe combination {word}")

    body = {"user_id": user, "memory_ids": [memory_id]}
    response = api.http.post("/product/delete_memory", json=body)
    assert response.status_code == 200, response.text
    assert api.traces(user, memory_id, word) == NOWHERE
    assert memory_id not in api.search(user, f"safe combination {word}")
    assert api.traces(user, keep, "painting")["graph"]


def test_delete_by_id_reaches_the_preference_store(api: Api) -> None:
    """A preference (pref_mem in search) lives in its own store: deleting its id removes it
    there, and only in the caller's cube."""
    user, other = new_user(), new_user()
    assert api.add(user, "I travel a lot for work.").status_code == 200
    assert api.add(other, "Someone else's note.").status_code == 200
    text = "Prefers aisle seats on long flights"
    preference = Preference(
        id=preference_id(user, text), cube_id=user, user_id=user, kind="explicit", preference=text
    )
    api.preferences.upsert(user, [preference], api.service.embedder.embed([text]))
    body = {"user_id": other, "memory_ids": [preference.id]}
    assert api.http.post("/product/delete_memory", json=body).json()["data"]["deleted_count"] == 0
    assert api.preferences.get(user, [preference.id])

    body = {"user_id": user, "memory_ids": [preference.id]}
    response = api.http.post("/product/delete_memory", json=body)
    assert response.json()["data"]["deleted"] == {user: [preference.id]}
    assert api.preferences.get(user, [preference.id]) == []


def test_reconcile_removes_orphan_points_and_completes_half_written_memories(api: Api) -> None:
    """The operator's repair of a cube after a crash settles both halves at once; topic
    nodes, which have no point by design, are left as they are."""
    user = new_user()
    assert api.add(user, "A whole memory stays as it is.").status_code == 200
    items = items_for_windows(
        user, user, [note("Only the point was written."), note("Only the node.")]
    )
    orphan, half = items.values()
    api.vectors.upsert(user, api.service._records(api.service.spaces.of(user), [orphan], [1]))
    topic = half.model_copy(
        update={
            "id": str(uuid.uuid4()),
            "memory": "A topic over the cube",
            "metadata": half.metadata.model_copy(update={"memory_type": MemoryType.TOPIC}),
        }
    )
    api.service.graph.upsert_nodes(user, [half, topic])
    done = api.service.reconcile(user)
    assert done.orphan_points == [orphan.id] and done.completed == [half.id]
    assert not api.traces(user, orphan.id, "point")["vectors"]
    assert api.traces(user, half.id, "node")["vectors"]
    assert api.service.reconcile(user) == Reconciled(orphan_points=[], completed=[])
    assert not api.traces(user, topic.id, "topic")["vectors"]  # topics are graph-only
