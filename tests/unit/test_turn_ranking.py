from __future__ import annotations

import datetime as dt

import pytest

from memos_ray.memory.turn_ranking import (
    RankingParams,
    RankTurn,
    build_index,
    first_stage,
    parse_date,
    query_date_windows,
    rank,
)
from memos_ray.models.embedder import SentenceTransformerEmbedder


def test_dates_in_every_format_the_data_uses() -> None:
    assert parse_date("2023-05-08T13:56:00") == dt.date(2023, 5, 8)
    assert parse_date("2023/05/20 (Sat) 02:21") == dt.date(2023, 5, 20)
    assert parse_date("1:56 pm on 8 May, 2023") == dt.date(2023, 5, 8)
    assert parse_date("soon") is None
    assert query_date_windows("What happened on 13 October, 2023?") == [(dt.date(2023, 10, 13), 1)]
    assert query_date_windows("What did I do in May 2023?") == [(dt.date(2023, 5, 15), 16)]
    asked = dt.date(2023, 6, 10)
    assert query_date_windows("Where did I eat last week?", asked) == [(dt.date(2023, 6, 3), 4)]
    assert query_date_windows("What did I buy two days ago?", asked) == [(dt.date(2023, 6, 8), 1)]
    assert query_date_windows("Where did I eat?", asked) == []


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()


def _cube() -> list[RankTurn]:
    may, june = "2023-05-08T10:00:00", "2023-06-20T10:00:00"
    return [
        RankTurn("D1:1", "s1", "Did you end up adopting anything?", "Bo", may),
        RankTurn("D1:2", "s1", "Yes! A grey kitten, I named her Miso.", "Ann", may),
        RankTurn("D1:3", "s1", "Lovely, send pictures.", "Bo", may),
        RankTurn("D2:1", "s2", "I started pottery classes on Tuesdays.", "Ann", june),
        RankTurn("D2:2", "s2", "Pottery sounds relaxing.", "Bo", june),
        RankTurn("D2:3", "s2", "My sister visited from Lisbon.", "Ann", june),
    ]


def test_answer_turn_ranks_first(embedder: SentenceTransformerEmbedder) -> None:
    index = build_index(_cube(), embedder.embed)
    query = "What is the name of Ann's kitten?"
    ranked = rank(index, query, embedder.embed([query])[0])
    assert ranked[0] == "D1:2"
    assert sorted(ranked) == sorted(t.id for t in _cube())


def test_a_named_date_lifts_exactly_that_session(embedder: SentenceTransformerEmbedder) -> None:
    index = build_index(_cube(), embedder.embed)
    query = "What happened in May 2023?"
    vector = embedder.embed([query])[0]
    with_date = first_stage(index, query, vector)
    without = first_stage(index, query, vector, params=RankingParams(w_date=0.0))
    lift = with_date - without
    assert lift[:3] == pytest.approx([2.0, 2.0, 2.0])
    assert lift[3:] == pytest.approx([0.0, 0.0, 0.0])
