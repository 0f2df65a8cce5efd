"""The per-cube index built from stored points: order, sessions, dates, masks."""

from __future__ import annotations

import datetime as dt

import numpy as np

from memos_ray.core.turn_ranking import RankingParams
from memos_ray.services.ranking import index_cube


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
