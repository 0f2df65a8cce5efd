"""The per-cube index built from stored points: order, sessions, dates, masks."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from pathlib import Path

import numpy as np

from memos_ray.core.turn_ranking import CubeIndex, RankingParams, first_stage
from memos_ray.domain.memory import MemoryStatus
from memos_ray.services.ranking import CubeIndexCache, IndexedCube, extend_cube, index_cube
from memos_ray.stores.vector.base import VectorRecord, WriteStamp
from memos_ray.stores.vector.qdrant_edge import QdrantEdgeVectorStore


def _payload(session: str, seq: int, text: str, **extra: object) -> dict:
    return {"session_id": session, "seq": seq, "text": text, "memory_type": "UserMemory", **extra}


def test_units_are_ordered_by_session_then_arrival() -> None:
    # Stored order is arbitrary (a scan); sessions interleaved in time by parallel adds.
    ids = ["b2", "a1", "b1", "a2", "c1"]
    payloads = [
        _payload("s-b", 21, "second of b"),
        _payload("s-a", 10, "first of a", speaker="Ann", chat_time="2023-05-08T10:00:00"),
        _payload("s-b", 20, "first of b"),
        _payload("s-a", 30, "second of a"),
        _payload("s-c", 5, "only c", memory_type="LongTermMemory"),
    ]
    vectors = np.eye(5, 8, dtype=np.float32)
    cube = index_cube(ids, vectors, payloads, "rev-1", RankingParams())
    index = cube.index
    assert index.ids == ["c1", "a1", "a2", "b1", "b2"]
    # Each row still carries its own vector and payload.
    assert np.allclose(index.vectors[1], vectors[1]) and cube.payloads[1]["text"] == "first of a"
    assert index.session_of.tolist() == [0, 1, 1, 2, 2]
    assert index.prev.tolist() == [-1, -1, 1, -1, 3]
    assert index.next.tolist() == [-1, 2, -1, 4, -1]
    assert index.speakers[1] == "ann"
    assert index.days[1] == dt.date(2023, 5, 8).toordinal() and index.days[0] == 0
    assert cube.revision == "rev-1" and cube.positions["b2"] == 4

    by_type = cube.allowed(["UserMemory"], None)
    assert by_type is not None and by_type.tolist() == [False, True, True, True, True]
    both = cube.allowed(["UserMemory"], ["a2", "c1", "unknown"])
    assert both is not None and both.tolist() == [False, False, True, False, False]
    assert cube.allowed(None, None) is None
    # Types covering every indexed unit need no mask.
    assert cube.allowed(["UserMemory", "LongTermMemory", "ToolSchemaMemory"], None) is None


def test_an_empty_cube_indexes() -> None:
    cube = index_cube([], np.zeros((0, 8), np.float32), [], "", RankingParams())
    assert cube.index.size == 0 and cube.allowed(["UserMemory"], None) is None


def _index_of(cube: IndexedCube) -> dict[str, object]:
    """Everything a search reads from a cube's index, comparable across builds."""
    index = cube.index
    return {
        "ids": index.ids,
        "sessions": index.session_of.tolist(),
        "prev": index.prev.tolist(),
        "next": index.next.tolist(),
        "days": index.days.tolist(),
        "speakers": index.speakers,
        "roles": None if index.roles is None else index.roles.tolist(),
        "asks": index.asks.tolist(),
        "types": cube.memory_types.tolist(),
        "positions": {i: cube.positions[i] for i in index.ids},
    }


def _random_cube(rng: random.Random, n: int) -> tuple[list[str], np.ndarray, list[dict]]:
    words = [
        "ann",
        "bob",
        "lisbon",
        "hiking",
        "trip",
        "pottery",
        "class",
        "nervous",
        "proud",
        "osaka",
        "dinner",
        "camping",
    ]
    ids, payloads, seq = [], [], 100
    for s in range(n):
        for _ in range(rng.randint(1, 4)):
            seq += rng.randint(1, 5)
            text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 10)))
            text += rng.choice(["", "", "?"])
            day = f"2023-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T10:00:00"
            payloads.append(
                _payload(
                    f"s{s}",
                    seq,
                    text,
                    speaker=rng.choice(["Ann", "Bob", ""]),
                    role=rng.choice(["user", "assistant", ""]),
                    chat_time=day,
                    status=MemoryStatus.ACTIVATED,
                )
            )
            ids.append(f"u{len(ids)}")
    vectors = np.random.default_rng(rng.randint(0, 99)).normal(size=(len(ids), 8))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return ids, vectors, payloads


def test_extending_an_index_gives_what_a_rebuild_gives() -> None:
    """A chat's next turns (the last session, or a new one) are appended to the cached index;
    every score a search computes must equal a rebuild's over all the points."""
    rng = random.Random(5)
    params = RankingParams()
    for trial in range(6):
        ids, vectors, payloads = _random_cube(rng, 4 + trial)
        full = index_cube(ids, vectors, payloads, "all", params)
        cut = rng.randint(0, len(ids) - 1)
        cube = index_cube(ids[:cut], vectors[:cut], payloads[:cut], "before", params)
        size_before = cube.index.size
        # In two writes: one turn, then the rest (a chat adds a turn at a time).
        for part in (slice(cut, cut + 1), slice(cut + 1, len(ids))):
            grown = extend_cube(cube, ids[part], vectors[part], payloads[part], "after")
            assert grown is not None
            cube = grown
        assert cube.revision == "after" and _index_of(cube) == _index_of(full)
        queries = ("ann hiking lisbon", "what did bob cook in osaka in march 2023?", "my trip?")
        for query in queries:
            q = vectors[rng.randrange(len(ids))]
            np.testing.assert_allclose(
                first_stage(cube.index, query, q, "2023-04-01", params),
                first_stage(full.index, query, q, "2023-04-01", params),
                atol=1e-4,
            )
    # The index it grew from is unchanged (searches holding it go on).
    ids, vectors, payloads = _random_cube(random.Random(1), 5)
    base = index_cube(ids[:-2], vectors[:-2], payloads[:-2], "r1", params)
    snapshot = _index_of(base)
    assert size_before >= 0 and extend_cube(base, ids[-2:], vectors[-2:], payloads[-2:], "r2")
    assert _index_of(base) == snapshot and base.index.vectors.shape[0] == len(ids) - 2


def test_the_speaker_term_boosts_the_named_speakers_turns_including_appended_ones() -> None:
    """Step 3 per search reads the cube's distinct names once per index: a speaker first
    seen in an append, after the index was searched, is found by name too."""
    params = RankingParams(w_speaker=5.0)
    ids = ["a1", "b1", "u1", "a2"]
    payloads = [
        _payload("s1", 1, "hello there", speaker="Ann"),
        _payload("s1", 2, "hi ann", speaker="Bob"),
        _payload("s1", 3, "my plans", speaker="user"),  # a role word, not a name
        _payload("s1", 4, "see you", speaker="Ann"),
    ]
    vectors = np.eye(4, 8, dtype=np.float32)
    cube = index_cube(ids, vectors, payloads, "r1", params)
    q = np.full(8, 0.1, np.float32)

    def boost(index: CubeIndex, query: str) -> list[float]:
        named = first_stage(index, query, q, None, params)
        return np.round(named - first_stage(index, "plans", q, None, params), 4).tolist()

    # Neighbours and the session share some of a boost (steps 4 and 5), never most of it.
    ann = boost(cube.index, "plans of Ann")
    assert min(ann[0], ann[3]) - max(ann[1], ann[2]) > 2
    both = boost(cube.index, "plans of Ann and Bob")
    assert min(both[0], both[1], both[3]) - both[2] > 1
    assert boost(cube.index, "plans of the user") == boost(cube.index, "plans of someone")
    grown = extend_cube(
        cube,
        ["c1"],
        np.eye(1, 8, 4, dtype=np.float32),
        [_payload("s1", 5, "new here", speaker="Cleo", status=MemoryStatus.ACTIVATED)],
        "r2",
    )
    assert grown is not None
    cleo = boost(grown.index, "plans of Cleo")
    assert cleo[4] - max(cleo[:4]) > 2


def test_a_turn_after_a_question_moves_toward_the_question_score() -> None:
    """Step 5's answers: the turn after a question (appended ones too) gains `w_answer` of
    the gap to the question's score; a turn after a statement, or scoring above its
    question, does not."""
    ids = ["q", "a", "s", "b", "c"]
    payloads = [
        _payload("s1", 1, "what pottery class did you take?", speaker="Bob"),
        _payload("s1", 2, "the wheel one, on tuesdays", speaker="Ann"),
        _payload("s2", 3, "pottery is my thing", speaker="Bob"),
        _payload("s2", 4, "good for you", speaker="Ann"),
        _payload("s3", 5, "unrelated words here", speaker="Ann"),
    ]
    vectors = np.eye(5, 8, dtype=np.float32)
    q = np.eye(1, 8, 0, dtype=np.float32)[0]  # the dense side agrees with the question turn
    query = "which pottery class"

    def scores(cube: IndexedCube, w: float) -> np.ndarray:
        return first_stage(cube.index, query, q, None, RankingParams(w_answer=w))

    cube = index_cube(ids[:4], vectors[:4], payloads[:4], "r1", RankingParams())
    assert cube.index.asks.tolist() == [True, False, False, False]
    off, on = scores(cube, 0.0), scores(cube, 0.5)
    assert off[0] > off[1]
    np.testing.assert_allclose(on[1], off[1] + 0.5 * (off[0] - off[1]), rtol=1e-5)
    np.testing.assert_allclose(np.delete(on, 1), np.delete(off, 1), rtol=1e-6)
    assert off[2] > off[3]  # after a statement: no lift
    # An answer already above its question keeps its score, as does everything else.
    wheel = np.eye(1, 8, 1, dtype=np.float32)[0]
    above = [first_stage(cube.index, "wheel tuesdays", wheel, None, RankingParams(w_answer=w))
             for w in (0.0, 0.5)]  # fmt: skip
    assert above[0][1] > above[0][0]
    np.testing.assert_allclose(above[1], above[0], rtol=1e-6)
    # Appended: a question ending one write, its answer the next; a filter keeps it finite.
    asked = {**payloads[4], "text": "any pottery class for beginners?", "status": "activated"}
    grown = extend_cube(cube, ["c"], vectors[4:], [asked], "r2")
    assert grown is not None
    answer = _payload("s3", 6, "yes, the wheel one", speaker="Bob", status="activated")
    grown = extend_cube(grown, ["d"], np.eye(1, 8, 5, dtype=np.float32), [answer], "r3")
    assert grown is not None
    assert grown.index.asks.tolist() == [True, False, False, False, True, False]
    off, on = scores(grown, 0.0), scores(grown, 0.5)
    np.testing.assert_allclose(on[5], off[5] + 0.5 * (off[4] - off[5]), rtol=1e-5)
    only_answers = np.array([False, True, False, True, False, True])
    masked = first_stage(grown.index, query, q, None, RankingParams(), only_answers)
    assert np.isfinite(masked[only_answers]).all() and np.isneginf(masked[~only_answers]).all()


def test_writes_that_do_not_append_are_refused() -> None:
    ids, vectors, payloads = _random_cube(random.Random(2), 5)
    params = RankingParams()
    cube = index_cube(ids[1:], vectors[1:], payloads[1:], "r1", params)
    # An older turn (sorts before the last indexed one): only a rebuild places it.
    assert extend_cube(cube, ids[:1], vectors[:1], payloads[:1], "r2") is None
    # An id the index holds (an update), or a memory that is not active.
    assert extend_cube(cube, ids[-1:], vectors[-1:], payloads[-1:], "r2") is None
    late = {**payloads[-1], "seq": 10**9, "status": "archived"}
    assert extend_cube(cube, ["new"], vectors[:1], [late], "r2") is None


def test_the_cache_extends_on_its_own_writes_and_rebuilds_on_others(tmp_path: Path) -> None:
    """With a real store (qdrant-edge): a write stamped from the cached revision extends the
    index; one from another writer (a stamp that does not follow it) drops it."""
    store = QdrantEdgeVectorStore(8, tmp_path / "edge")
    cache = CubeIndexCache(store, RankingParams())
    ids, vectors, payloads = _random_cube(random.Random(3), 6)
    uuids = [str(uuid.uuid4()) for _ in ids]

    def records(rows: range) -> list[VectorRecord]:
        return [
            VectorRecord(id=uuids[i], dense=vectors[i].tolist(), payload=payloads[i]) for i in rows
        ]

    store.upsert("cube", records(range(len(ids) - 2)))
    first = cache.get("cube")
    assert first.index.size == len(ids) - 2
    new = records(range(len(ids) - 2, len(ids) - 1))
    stamp = store.upsert("cube", new)
    assert stamp is not None and stamp.before == first.revision
    cache.written(
        "cube", stamp, [r.id for r in new], vectors[len(ids) - 2 : -1], [r.payload for r in new]
    )
    grown = cache.get("cube", store.revision("cube"))
    assert grown is not first and grown.index.size == len(ids) - 1
    assert (
        grown.index.ids
        == index_cube(
            [uuids[i] for i in range(len(ids) - 1)],
            vectors[:-1],
            payloads[:-1],
            "",
            RankingParams(),
        ).index.ids
    )
    # Another process wrote in between: the stamp does not start at the cached revision.
    store.upsert("cube", records(range(len(ids) - 1, len(ids))))
    last = records(range(len(ids) - 1, len(ids)))
    stale = WriteStamp(before="someone-else", after=store.revision("cube"))
    cache.written("cube", stale, [r.id for r in last], vectors[-1:], [r.payload for r in last])
    rebuilt = cache.get("cube", store.revision("cube"))
    assert rebuilt.index.size == len(ids) and rebuilt is not grown
    store.close()


def test_the_cache_keeps_to_its_count_and_its_bytes(tmp_path: Path) -> None:
    store = QdrantEdgeVectorStore(8, tmp_path / "edge")
    ids, vectors, payloads = _random_cube(random.Random(4), 3)
    for cube in ("a", "b", "c"):
        store.upsert(
            cube,
            [
                VectorRecord(id=str(uuid.uuid4()), dense=vectors[i].tolist(), payload=payloads[i])
                for i in range(len(ids))
            ],
        )
    one = CubeIndexCache(store, RankingParams()).get("a").size_bytes
    assert one > vectors.nbytes
    by_count = CubeIndexCache(store, RankingParams(), max_cubes=2)
    by_bytes = CubeIndexCache(store, RankingParams(), max_bytes=2 * one + one // 2)
    for cache in (by_count, by_bytes):
        first = cache.get("a")
        cache.get("b")
        assert cache.get("a") is first  # a hit also refreshes "a"
        cache.get("c")  # past either bound: "b", the least recently used, goes
        assert cache.get("a") is first and cache.held_bytes == 2 * one
    # A cube bigger than the whole budget is still served (and kept alone).
    tiny = CubeIndexCache(store, RankingParams(), max_bytes=1)
    tiny.get("a")
    assert tiny.get("b").index.size == len(ids) and tiny.held_bytes == one
    store.close()
