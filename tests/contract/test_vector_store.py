"""One contract for every VectorStore backend: what recall code may rely on, whatever the engine."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from memos_ray.core.keywords import document_vector, query_vector
from memos_ray.errors import BadRequestError, MemosError
from memos_ray.stores.vector.base import (
    SparseVector,
    VectorFilter,
    VectorHit,
    VectorRecord,
    VectorStore,
)
from memos_ray.stores.vector.qdrant import QdrantVectorStore
from memos_ray.stores.vector.qdrant_edge import QdrantEdgeVectorStore

DIM = 16


@dataclass
class Backend:
    """Opens stores of one kind; `reopen` gives the same data again where the backend persists."""

    name: str
    open: Callable[[int], VectorStore]
    persistent: bool
    opened: list[VectorStore] = field(default_factory=list)

    def __call__(self, dim: int = DIM) -> VectorStore:
        store = self.open(dim)
        self.opened.append(store)
        return store


def _actor_opener(path: Path) -> Callable[[int], VectorStore]:
    from memos_ray.embedded.actors import get_or_create_vector_actor

    def open_(dim: int) -> VectorStore:
        spec = (
            "memos_ray.stores.vector.qdrant_edge:QdrantEdgeVectorStore",
            {"dim": dim, "path": str(path)},
        )
        return get_or_create_vector_actor(f"vectors-{uuid.uuid4()}", "memos-tests", spec)

    return open_


@pytest.fixture(
    params=[
        "qdrant-memory",
        "qdrant-local",
        "qdrant-edge",
        pytest.param("actor-qdrant-edge", marks=pytest.mark.ray),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind: str = request.param
    if kind == "qdrant-memory":
        b = Backend(kind, lambda dim: QdrantVectorStore(dim), persistent=False)
    elif kind == "qdrant-local":
        b = Backend(kind, lambda dim: QdrantVectorStore(dim, path=str(tmp_path / "q")), True)
    elif kind == "qdrant-edge":
        b = Backend(kind, lambda dim: QdrantEdgeVectorStore(dim, tmp_path / "edge"), True)
    else:
        request.getfixturevalue("ray_cluster")
        b = Backend(kind, _actor_opener(tmp_path / "edge"), True)
    yield b
    for store in reversed(b.opened):
        shutdown = getattr(store, "shutdown", None)
        if shutdown is not None:
            import ray

            try:
                shutdown()
            except MemosError:
                ray.kill(store.actor, no_restart=True)  # type: ignore[attr-defined]
        else:
            store.close()


@pytest.fixture
def store(backend: Backend) -> VectorStore:
    return backend()


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _rec(
    vec: np.ndarray | list[float],
    *,
    text: str = "",
    memory_type: str = "LongTermMemory",
    status: str = "activated",
    rid: str | None = None,
    **extra: object,
) -> VectorRecord:
    return VectorRecord(
        id=rid or str(uuid.uuid4()),
        dense=[float(v) for v in vec],
        sparse=document_vector(text),
        payload={"memory_type": memory_type, "status": status, **extra},
    )


def _ids(hits: list) -> list[str]:
    return [h.id for h in hits]


def test_upsert_retrieve_roundtrip(store: VectorStore) -> None:
    rng = np.random.default_rng(1)
    vecs = _unit(rng, 3)
    recs = [
        _rec(
            vecs[0],
            text="Alice adopted a beagle named Pixel",
            session_id="s1",
            tags=["pets", "dogs"],
            meta={"n": 3, "w": 0.5},
        ),
        _rec(vecs[1], text="", memory_type="UserMemory"),
        _rec(vecs[2], text="tea"),
    ]
    store.upsert("cube-a", recs)

    missing = str(uuid.uuid4())
    got = store.retrieve("cube-a", [recs[2].id, missing, recs[0].id, recs[1].id])

    assert store.dim == DIM
    assert [r.id for r in got] == [recs[2].id, recs[0].id, recs[1].id]
    by_id = {r.id: r for r in got}
    for want in recs:
        have = by_id[want.id]
        assert have.dense == pytest.approx(want.dense, abs=1e-5)
        assert have.sparse.indices == want.sparse.indices
        assert have.sparse.values == pytest.approx(want.sparse.values, rel=1e-5)
        assert have.payload == want.payload
        assert "cube_id" not in have.payload
    assert by_id[recs[1].id].sparse == SparseVector()
    assert store.count("cube-a") == 3
    assert store.retrieve("cube-a", []) == []


def test_upsert_replaces_by_id(store: VectorStore) -> None:
    rng = np.random.default_rng(2)
    v1, v2 = _unit(rng, 2)
    rid = str(uuid.uuid4())
    store.upsert("cube-a", [_rec(v1, rid=rid, text="walrus migration", status="activated")])
    store.upsert("cube-a", [_rec(v2, rid=rid, text="penguin colony", status="archived")])

    (got,) = store.retrieve("cube-a", [rid])
    assert got.dense == pytest.approx(list(v2), abs=1e-5)
    assert got.payload["status"] == "archived"
    assert store.count("cube-a") == 1
    assert store.search_sparse(["cube-a"], query_vector("walrus"), 5) == []
    assert _ids(store.search_sparse(["cube-a"], query_vector("penguin"), 5)) == [rid]


def test_dense_search_is_true_top_k_with_cosine_scores(store: VectorStore) -> None:
    rng = np.random.default_rng(3)
    vecs = _unit(rng, 300)
    recs = [_rec(v) for v in vecs]
    store.upsert("cube-a", recs)
    ids = np.array([r.id for r in recs])

    for q in rng.standard_normal((5, DIM)) * 3.0:  # not normalised: cosine must not care
        cos = vecs @ (q / np.linalg.norm(q))
        order = np.argsort(-cos)[:10]
        hits = store.search_dense(["cube-a"], list(q), 10)
        assert _ids(hits) == list(ids[order])
        assert [h.score for h in hits] == pytest.approx(list(cos[order]), abs=1e-4)
        assert all(h.cube_id == "cube-a" for h in hits)

    exact = store.search_dense(["cube-a"], list(vecs[7]), 1)
    assert _ids(exact) == [recs[7].id]
    assert exact[0].score == pytest.approx(1.0, abs=1e-5)
    assert store.search_dense(["cube-a"], list(vecs[7]), 0) == []


def test_cube_isolation(store: VectorStore) -> None:
    rng = np.random.default_rng(4)
    va, vb = _unit(rng, 2)
    a = _rec(va, text="secret marmalade recipe")
    b = _rec(vb, text="secret marmalade recipe")
    store.upsert("cube-a", [a])
    store.upsert("cube-b", [b])

    assert _ids(store.search_dense(["cube-a"], list(vb), 10)) == [a.id]
    assert _ids(store.search_sparse(["cube-a"], query_vector("marmalade"), 10)) == [a.id]
    both = store.search_dense(["cube-a", "cube-b"], list(vb), 10)
    assert {(h.id, h.cube_id) for h in both} == {(a.id, "cube-a"), (b.id, "cube-b")}
    assert both[0].id == b.id
    assert store.search_dense(["cube-c"], list(va), 10) == []
    assert store.search_dense([], list(va), 10) == []

    assert store.retrieve("cube-b", [a.id]) == []
    store.delete("cube-b", [a.id])
    assert [r.id for r in store.retrieve("cube-a", [a.id])] == [a.id]
    assert store.count("cube-a") == 1 and store.count("cube-b") == 1 and store.count("x") == 0

    # An id collision across cubes never overwrites the other cube's point.
    store.upsert("cube-b", [_rec(vb, rid=a.id, text="hijack")])
    (kept,) = store.retrieve("cube-a", [a.id])
    assert kept.dense == pytest.approx(list(va), abs=1e-5)
    assert store.retrieve("cube-b", [a.id]) == []


def test_keyword_scores_ignore_other_cubes(store: VectorStore) -> None:
    """IDF comes from the queried cubes, so another tenant's corpus never moves the scores."""
    rng = np.random.default_rng(5)
    texts = ["the lighthouse keeper", "a quiet harbour", "fog over the harbour"]
    store.upsert("cube-a", [_rec(v, text=t) for v, t in zip(_unit(rng, 3), texts, strict=True)])
    before = store.search_sparse(["cube-a"], query_vector("lighthouse harbour"), 5)

    noise = [_rec(v, text="lighthouse lighthouse everywhere") for v in _unit(rng, 20)]
    store.upsert("cube-b", noise)
    after = store.search_sparse(["cube-a"], query_vector("lighthouse harbour"), 5)

    # Two harbour texts tie; engines may order ties differently after unrelated writes.
    def scored(hits: list[VectorHit]) -> dict[str, float]:
        return {h.id: h.score for h in hits}

    assert set(scored(after)) == set(scored(before))
    for hit_id, score in scored(before).items():
        assert scored(after)[hit_id] == pytest.approx(score, rel=1e-5)


def test_vector_filter_ids_types_statuses(store: VectorStore) -> None:
    rng = np.random.default_rng(6)
    vecs = _unit(rng, 4)
    text = "garden tomatoes ripen in august"
    r0 = _rec(vecs[0], text=text, memory_type="LongTermMemory", status="activated")
    r1 = _rec(vecs[1], text=text, memory_type="UserMemory", status="activated")
    r2 = _rec(vecs[2], text=text, memory_type="LongTermMemory", status="archived")
    r3 = _rec(vecs[3], text=text, memory_type="WorkingMemory", status="deleted")
    store.upsert("cube-a", [r0, r1, r2, r3])
    other = _rec(vecs[0], text=text, memory_type="LongTermMemory")
    store.upsert("cube-b", [other])
    q = list(vecs[0])
    kq = query_vector("tomatoes")

    cases: list[tuple[VectorFilter, set[str]]] = [
        (VectorFilter(ids=[r1.id, r3.id, other.id]), {r1.id, r3.id}),
        (VectorFilter(memory_types=["LongTermMemory"]), {r0.id, r2.id}),
        (VectorFilter(memory_types=["UserMemory", "WorkingMemory"]), {r1.id, r3.id}),
        (VectorFilter(statuses=["activated"]), {r0.id, r1.id}),
        (VectorFilter(memory_types=["LongTermMemory"], statuses=["archived"]), {r2.id}),
        (VectorFilter(ids=[r0.id, r1.id], statuses=["archived"]), set()),
        (VectorFilter(ids=[]), set()),
        (VectorFilter(memory_types=[]), set()),
        (VectorFilter(), {r0.id, r1.id, r2.id, r3.id}),
    ]
    for flt, want in cases:
        assert set(_ids(store.search_dense(["cube-a"], q, 10, flt))) == want, flt
        assert set(_ids(store.search_sparse(["cube-a"], kq, 10, flt))) == want, flt

    # `limit` counts only matching points: the filter is applied inside the index.
    top = store.search_dense(["cube-a"], q, 1, VectorFilter(memory_types=["WorkingMemory"]))
    assert _ids(top) == [r3.id]


def test_keyword_search_rare_term_and_idf(store: VectorStore) -> None:
    rng = np.random.default_rng(7)
    common_docs = [
        "coffee with oat milk in the morning",
        "espresso coffee after lunch",
        "coffee beans from colombia",
        "decaf coffee before bed",
        "iced coffee on hot days",
        "coffee grinder needs cleaning",
    ]
    rare = "booked a xylophone lesson for friday"
    plain_coffee = "prefers coffee black no sugar"
    texts = [*common_docs, rare, plain_coffee]
    recs = [_rec(v, text=t) for v, t in zip(_unit(rng, len(texts)), texts, strict=True)]
    store.upsert("cube-a", recs)
    rare_id, coffee_id = recs[-2].id, recs[-1].id

    assert _ids(store.search_sparse(["cube-a"], query_vector("Xylophone?"), 5)) == [rare_id]
    hits = store.search_sparse(["cube-a"], query_vector("coffee xylophone"), 10)
    assert hits[0].id == rare_id
    assert len(hits) == 8
    assert hits[0].score > max(h.score for h in hits if h.id == coffee_id) > 0
    assert store.search_sparse(["cube-a"], query_vector("zeppelin"), 5) == []
    assert store.search_sparse(["cube-a"], SparseVector(), 5) == []


def test_hybrid_search_returns_both_recalls_with_vectors_and_payloads(
    store: VectorStore,
) -> None:
    rng = np.random.default_rng(12)
    vecs = _unit(rng, 4)
    texts = ["tulip bulbs planted", "bike repair shop", "tulip festival tickets", "tax forms"]
    recs = [_rec(v, text=t, memory=t) for v, t in zip(vecs, texts, strict=True)]
    store.upsert("cube-h", recs)
    store.upsert("cube-other", [_rec(vecs[0], text="tulip bulbs planted")])
    found = store.search_hybrid(["cube-h"], list(vecs[1]), query_vector("tulip"), 3)
    assert _ids(found.dense_hits)[0] == recs[1].id
    assert set(_ids(found.sparse_hits)) == {recs[0].id, recs[2].id}
    union = set(_ids(found.dense_hits)) | set(_ids(found.sparse_hits))
    assert set(found.ids) == union
    by_id = {r.id: r for r in recs}
    for row, item_id in enumerate(found.ids):
        assert np.allclose(found.vectors[row], by_id[item_id].dense, atol=1e-5)
        assert found.payloads[row]["memory"] == by_id[item_id].payload["memory"]
    empty = store.search_hybrid(["cube-none"], list(vecs[0]), query_vector("tulip"), 3)
    assert empty.ids == [] and empty.dense_hits == [] and empty.sparse_hits == []


def test_delete_removes_everywhere(store: VectorStore) -> None:
    rng = np.random.default_rng(8)
    vecs = _unit(rng, 3)
    recs = [_rec(v, text=f"kayak trip number {i}") for i, v in enumerate(vecs)]
    store.upsert("cube-a", recs)
    gone = recs[1]

    store.delete("cube-a", [gone.id, str(uuid.uuid4())])
    store.delete("cube-a", [])

    assert store.retrieve("cube-a", [gone.id]) == []
    assert gone.id not in _ids(store.search_dense(["cube-a"], list(vecs[1]), 10))
    assert gone.id not in _ids(store.search_sparse(["cube-a"], query_vector("kayak"), 10))
    assert len(store.search_sparse(["cube-a"], query_vector("kayak"), 10)) == 2
    assert store.count("cube-a") == 2


def test_existing_ids_and_delete_are_scoped_to_the_cube(store: VectorStore) -> None:
    """Which ids a cube holds (an add's commit marker): never another cube's same id, and a
    delete in one cube leaves the other's point."""
    rng = np.random.default_rng(10)
    a, b = _unit(rng, 2)
    shared = str(uuid.uuid4())
    store.upsert("cube-a", [_rec(a, rid=shared, text="ferry timetable")])
    store.upsert("cube-b", [_rec(b, rid=str(uuid.uuid4()), text="ferry prices")])
    absent = str(uuid.uuid4())
    assert store.existing_ids("cube-a", [shared, absent]) == {shared}
    assert store.existing_ids("cube-b", [shared]) == set()
    assert store.existing_ids("cube-a", []) == set()
    store.delete("cube-b", [shared])
    assert store.existing_ids("cube-a", [shared]) == {shared}
    store.delete("cube-a", [shared])
    assert store.existing_ids("cube-a", [shared]) == set()


def test_bad_input_is_a_bad_request(store: VectorStore) -> None:
    rng = np.random.default_rng(9)
    (v,) = _unit(rng, 1)
    with pytest.raises(BadRequestError):
        store.upsert("cube-a", [_rec([*v, 0.0])])
    with pytest.raises(BadRequestError):
        store.search_dense(["cube-a"], list(v[:-1]), 5)
    with pytest.raises(BadRequestError):
        store.upsert("cube-a", [_rec(v, rid="not-a-uuid")])
    with pytest.raises(BadRequestError):
        store.upsert("cube-a", [_rec(v, cube_id="cube-b")])
    assert store.count("cube-a") == 0


def test_persists_across_close_and_reopen(backend: Backend) -> None:
    if not backend.persistent:
        pytest.skip("in-memory backend")
    rng = np.random.default_rng(10)
    vecs = _unit(rng, 5)
    recs = [_rec(v, text=f"persisted note {i} about glaciers") for i, v in enumerate(vecs)]
    first = backend()
    first.upsert("cube-a", recs)
    first.delete("cube-a", [recs[0].id])
    _shut(first)

    second = backend()
    assert second.count("cube-a") == 4
    assert _ids(second.search_dense(["cube-a"], list(vecs[3]), 1)) == [recs[3].id]
    assert len(second.search_sparse(["cube-a"], query_vector("glaciers"), 10)) == 4
    (got,) = second.retrieve("cube-a", [recs[2].id])
    assert got.payload == recs[2].payload
    _shut(second)

    # The stored dimension wins: opening it as another size is refused.
    with pytest.raises(MemosError):
        backend(DIM + 1)


def _shut(store: VectorStore) -> None:
    shutdown = getattr(store, "shutdown", None)
    if shutdown is not None:
        shutdown()
    else:
        store.close()


@pytest.mark.ray
def test_actor_store_is_shared_across_processes(ray_cluster: None, tmp_path: Path) -> None:
    """The proxy pickles into other Ray processes; all of them see one engine."""
    import ray

    from memos_ray.embedded.actors import get_or_create_vector_actor

    name = f"vectors-{uuid.uuid4()}"
    spec = (
        "memos_ray.stores.vector.qdrant_edge:QdrantEdgeVectorStore",
        {"dim": DIM, "path": str(tmp_path / "edge")},
    )
    store = get_or_create_vector_actor(name, "memos-tests", spec)
    try:
        again = get_or_create_vector_actor(name, "memos-tests", spec)
        assert again.actor._actor_id == store.actor._actor_id

        @ray.remote(num_cpus=0)
        def write(proxy: VectorStore, seed: int) -> str:
            (v,) = _unit(np.random.default_rng(seed), 1)
            rec = _rec(v, text=f"written by worker {seed}")
            proxy.upsert("cube-a", [rec])
            return rec.id

        ids = ray.get([write.remote(store, s) for s in range(4)])
        assert store.count("cube-a") == 4
        assert {r.id for r in store.retrieve("cube-a", ids)} == set(ids)
        store.close()  # a proxy's close leaves the shared engine up
        assert again.count("cube-a") == 4

        # A second owner of the same directory is refused, not silently forked.
        with pytest.raises(MemosError):
            get_or_create_vector_actor(f"{name}-2", "memos-tests", spec)
    finally:
        store.shutdown()


# qdrant-edge specifics: policies the contract relies on but cannot see from outside.


def test_edge_refuses_second_owner_without_harming_the_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    owner = QdrantEdgeVectorStore(DIM, tmp_path / "edge")
    try:
        owner.upsert("cube-a", [_rec(v, text="sourdough starter") for v in _unit(rng, 3)])
        with pytest.raises(MemosError):
            QdrantEdgeVectorStore(DIM, tmp_path / "edge")
        owner.upsert("cube-a", [_rec(v, text="sourdough loaf") for v in _unit(rng, 2)])
        owner.flush()
    finally:
        owner.close()
    reopened = QdrantEdgeVectorStore(DIM, tmp_path / "edge")
    assert reopened.count("cube-a") == 5
    reopened.close()


def test_edge_hnsw_path_after_optimize(tmp_path: Path) -> None:
    """Past the exact-search limit queries take the HNSW path; exact matches still come first."""
    rng = np.random.default_rng(12)
    vecs = _unit(rng, 400)
    store = QdrantEdgeVectorStore(DIM, tmp_path / "edge", exact_max_candidates=50)
    try:
        recs = [_rec(v) for v in vecs]
        store.upsert("cube-a", recs)
        store.optimize()
        for i in (0, 123, 399):
            hits = store.search_dense(["cube-a"], list(vecs[i]), 5)
            assert hits[0].id == recs[i].id
            assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    finally:
        store.close()


def _with_tokens(rec: VectorRecord, tokens: np.ndarray) -> VectorRecord:
    return rec.model_copy(update={"tokens": tokens.astype(np.float16)})


def test_revision_changes_on_every_write_to_the_cube(store: VectorStore) -> None:
    rng = np.random.default_rng(11)
    start = store.revision("cube-a")
    rec = _rec(_unit(rng, 1)[0], text="first")
    store.upsert("cube-a", [rec])
    after_add = store.revision("cube-a")
    assert after_add != start
    assert store.revision("cube-a") == after_add  # reading does not bump it
    other = store.revision("cube-b")
    store.upsert("cube-b", [_rec(_unit(rng, 1)[0], text="elsewhere")])
    assert store.revision("cube-a") == after_add  # another cube's write does not either
    assert store.revision("cube-b") != other
    # A status change keeps the count and the ids: the revision must still move.
    store.upsert("cube-a", [_rec(rec.dense, text="first", rid=rec.id, status="archived")])
    after_update = store.revision("cube-a")
    assert after_update != after_add
    store.delete("cube-a", [rec.id])
    assert store.revision("cube-a") != after_update


def test_scan_returns_every_matching_point_with_vectors(store: VectorStore) -> None:
    rng = np.random.default_rng(12)
    vecs = _unit(rng, 5)
    recs = [
        _rec(v, text=f"t{i}", label=f"t{i}", status="archived" if i == 4 else "activated")
        for i, v in enumerate(vecs)
    ]
    store.upsert("cube-a", recs)
    store.upsert("cube-b", [_rec(_unit(rng, 1)[0], text="other tenant")])
    revision = store.revision("cube-a")

    scan = store.scan("cube-a", VectorFilter(statuses=["activated"]))
    assert scan.revision == revision
    assert sorted(scan.ids) == sorted(r.id for r in recs[:4])
    assert scan.dense.shape == (4, DIM)
    by_id = {r.id: r for r in recs}
    for row, point_id in enumerate(scan.ids):
        assert scan.dense[row] == pytest.approx(np.asarray(by_id[point_id].dense), abs=1e-5)
        assert scan.payloads[row]["label"] == by_id[point_id].payload["label"]
        assert "cube_id" not in scan.payloads[row]
    assert len(store.scan("cube-a").ids) == 5
    empty = store.scan("cube-c")
    assert empty.ids == [] and empty.dense.shape == (0, DIM)


def test_late_scores_are_maxsim_over_stored_token_vectors(store: VectorStore) -> None:
    rng = np.random.default_rng(13)
    tokens = [_unit(rng, n) for n in (3, 5, 2)]
    recs = [
        _with_tokens(_rec(t.mean(0) / np.linalg.norm(t.mean(0)), text=f"d{i}"), t)
        for i, t in enumerate(tokens)
    ]
    bare = _rec(_unit(rng, 1)[0], text="no tokens")
    store.upsert("cube-a", [*recs, bare])
    # The same ids in another cube, with other tokens, must not leak in.
    query = _unit(rng, 4)
    late = store.late_scores("cube-a", query, [r.id for r in recs] + [bare.id])
    assert late.revision == store.revision("cube-a")
    assert set(late.scores) == {r.id for r in recs}  # a point without tokens has no score
    for rec, doc in zip(recs, tokens, strict=True):
        expected = float((query @ doc.T).max(1).sum())
        assert late.scores[rec.id] == pytest.approx(expected, abs=2e-2)  # float16 storage
    only_first = store.late_scores("cube-a", query, [recs[0].id])
    assert set(only_first.scores) == {recs[0].id}
    assert store.late_scores("cube-b", query, [r.id for r in recs]).scores == {}


def test_retrieve_with_tokens_returns_the_stored_token_vectors(store: VectorStore) -> None:
    """What a cube dump reads: the token rows come back as stored (float16), only on request."""
    rng = np.random.default_rng(17)
    tokens = _unit(rng, 4)
    rec = _with_tokens(_rec(tokens.mean(0) / np.linalg.norm(tokens.mean(0)), text="t"), tokens)
    bare = _rec(_unit(rng, 1)[0], text="bare")
    store.upsert("cube-a", [rec, bare])
    plain = {r.id: r for r in store.retrieve("cube-a", [rec.id, bare.id])}
    assert plain[rec.id].tokens is None
    full = {r.id: r for r in store.retrieve("cube-a", [rec.id, bare.id], with_tokens=True)}
    got = full[rec.id].tokens
    assert got is not None and got.shape == tokens.shape
    np.testing.assert_allclose(got.astype(np.float32), tokens.astype(np.float16), atol=1e-3)
    assert full[bare.id].tokens is None
    assert store.retrieve("cube-b", [rec.id], with_tokens=True) == []
