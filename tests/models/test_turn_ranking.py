from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from memos_ray.core.turn_ranking import (
    RankingParams,
    RankTurn,
    build_index,
    first_stage,
    head,
    late_rerank,
    parse_date,
    query_date_windows,
    query_role,
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


def test_context_cosines_match_the_materialised_neighbour_vectors(
    embedder: SentenceTransformerEmbedder,
) -> None:
    """Step 2 is computed from e @ q and stored norms; check it against the definition."""
    turns = _cube()
    index = build_index(turns, embedder.embed)
    query = "pottery on Tuesdays"
    q = embedder.embed([query])[0]
    e = embedder.embed([t.speaker + ": " + t.content for t in turns])
    session = [t.session for t in turns]

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v)

    expected = []
    for i in range(len(turns)):
        prev = e[i - 1] if i > 0 and session[i - 1] == session[i] else 0
        nxt = e[i + 1] if i + 1 < len(turns) and session[i + 1] == session[i] else 0
        expected.append(q @ e[i] + q @ unit(e[i] + prev) + q @ unit(e[i] + nxt))
    only_dense = RankingParams(
        w_speaker=0, g_neighbour=0, lam_session_max=0, lam_session_bm25=0, w_date=0
    )
    got = first_stage(index, query, q, params=only_dense) - first_stage(
        index, query, q, params=only_dense.model_copy(update={"w_dense": 0.0})
    )
    z = (np.array(expected) - np.mean(expected)) / np.std(expected)
    assert got == pytest.approx(z, abs=1e-4)


def test_mask_head_and_late_rerank() -> None:
    score = np.array([0.5, 3.0, -1.0, 2.0, 1.0])
    assert head(score, 3).tolist() == [1, 3, 4]
    masked = np.where(np.array([True, False, True, True, True]), score, -np.inf)
    assert head(masked, 10).tolist() == [3, 4, 0, 2]  # -inf never comes back
    top = head(score, 3)
    # z(first stage) = [1.22, 0, -1.22]; NaN (no token vectors) counts as the worst MaxSim.
    late = np.array([0.1, np.nan, 5.0])
    assert late_rerank(score, top, late).tolist() == [1, 4, 3]
    assert late_rerank(score, top, late, RankingParams(w_maxsim=3)).tolist() == [4, 1, 3]
    assert late_rerank(score, top, late, RankingParams(w_maxsim=0)).tolist() == [1, 3, 4]


def test_allowed_mask_excludes_units(embedder: SentenceTransformerEmbedder) -> None:
    index = build_index(_cube(), embedder.embed)
    query = "kitten"
    allowed = np.array([True, False, True, True, True, True])
    score = first_stage(index, query, embedder.embed([query])[0], allowed=allowed)
    assert np.isneginf(score[1]) and np.isfinite(np.delete(score, 1)).all()


def _chat() -> list[RankTurn]:
    """A user and an assistant, known by their roles only (no names)."""
    day = "2023-05-08T10:00:00"
    said = [
        ("user", "Any tips for eating out in Tokyo?"),
        ("assistant", "Where to have the best ramen? Many had the best ramen at Ichiran."),
        ("user", "Last week I ate at a tiny noodle shop in Osaka: the best bowl of my life."),
        ("assistant", "That sounds wonderful."),
    ]
    return [RankTurn(f"s1:{i}", "s1", text, None, day, role) for i, (role, text) in enumerate(said)]


def test_whose_words_answer_the_question() -> None:
    assert query_role("Where did I have the best ramen?") == 1
    assert query_role("How many plants did my sister give me?") == 1
    assert query_role("Can you remind me which ramen shops you recommended?") == 2
    assert query_role("In our previous chat, what did I ask about?") == 2
    assert query_role("Where is the best ramen in Tokyo?") == 0


def test_the_side_the_question_is_about_comes_first(
    embedder: SentenceTransformerEmbedder,
) -> None:
    index = build_index(_chat(), embedder.embed)
    assert index.roles is not None and index.roles.tolist() == [1, 2, 1, 2]
    off, on = RankingParams(w_role=0), RankingParams()
    for query, side in (
        ("Where did I have the best ramen?", 1),
        ("Which ramen shops did you recommend to me?", 2),
        ("Where is the best ramen?", 0),
    ):
        q = embedder.embed([query])[0]
        lifted = first_stage(index, query, q, params=on) - first_stage(index, query, q, params=off)
        np.testing.assert_allclose(lifted, on.w_role * (index.roles == side), atol=1e-5)
    # Without it the assistant's ramen-heavy turn wins a question about the user's own meal.
    query = "Where did I have the best ramen?"
    q = embedder.embed([query])[0]
    assert rank(index, query, q, params=off)[0] == "s1:1"
    assert rank(index, query, q, params=on)[0] == "s1:2"
    # Where speakers have names, step 3 matches those and no turn has a side.
    assert build_index(_cube(), embedder.embed).roles is None
