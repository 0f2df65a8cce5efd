"""Step 7 of the turn-ranking recipe: counting questions spread the list over sessions."""

from __future__ import annotations

import numpy as np

from memos_ray.core.turn_ranking import (
    RankingParams,
    RankUnit,
    index_units,
    is_aggregate,
    spread_sessions,
)


def _index():
    units = [RankUnit(f"a{i}", "s-a", f"turn {i} of a") for i in range(3)]
    units += [RankUnit(f"b{i}", "s-b", f"turn {i} of b") for i in range(2)]
    return index_units(units, np.eye(5, 4, dtype=np.float32))


def test_a_counting_question_spreads_the_list_over_sessions() -> None:
    index = _index()
    order = np.arange(5)  # a0 a1 a2 b0 b1: session a fills the top

    def spread(query: str, by: float) -> list[str]:
        out = spread_sessions(index, query, order, RankingParams(session_spread=by))
        return [index.ids[i] for i in out]

    # Keys: a1 1+2 = 3 ties b0 3 (the earlier place first), a2 2+2*2 = 6, b1 4+2 = 6.
    assert spread("How many plants did I buy?", 2) == ["a0", "a1", "b0", "a2", "b1"]
    assert spread("How many plants did I buy?", 4)[:3] == ["a0", "b0", "a1"]
    # Other questions, and a spread of 0, keep the order.
    unchanged = ["a0", "a1", "a2", "b0", "b1"]
    assert spread("Which plant did I buy?", 4) == unchanged
    assert spread("How many plants did I buy?", 0) == unchanged


def test_what_counts_as_a_counting_question() -> None:
    assert is_aggregate("How many weddings have I attended this year?")
    assert is_aggregate("What is the total amount I spent on luxury items?")
    assert is_aggregate("how much did the bike repairs cost in total")
    assert not is_aggregate("What did Caroline paint for the art show?")
    assert not is_aggregate("Which city has John visited most?")
