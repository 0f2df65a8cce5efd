from __future__ import annotations

import pytest

from memos_ray.core.filters import And, Condition, Or, parse_filter
from memos_ray.errors import FilterError


def test_equality_operators_and_nesting() -> None:
    expr = parse_filter(
        {"and": [{"user_id": "u1"}, {"or": [{"tags": {"contains": "x"}}, {"prio": {"gt": 3}}]}]}
    )
    assert expr == And(
        (
            Condition("user_id", "eq", "u1"),
            Or((Condition("tags", "contains", "x"), Condition("prio", "gt", 3))),
        )
    )
    assert Condition("prio", "gt", 3).is_info and not Condition("tags", "eq", "a").is_info


def test_several_fields_mean_and() -> None:
    assert parse_filter({"a": 1, "b": {"in": [1, 2]}}) == And(
        (Condition("a", "eq", 1), Condition("b", "in", [1, 2]))
    )


def test_dates_are_normalised_for_string_comparison() -> None:
    expr = parse_filter({"created_at": {"gte": "2026-01-02"}})
    assert expr == Condition("created_at", "gte", "2026-01-02T00:00:00.000000Z")
    expr = parse_filter({"updated_at": {"lt": "2026-01-02T03:04:05+02:00"}})
    assert expr == Condition("updated_at", "lt", "2026-01-02T01:04:05.000000Z")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"memory": {"regex": "x"}}, "unknown operator 'regex'"),
        ({"and": {}}, "non-empty list"),
        ({"a": {}}, "empty operator"),
        ({"a": {"in": "x"}}, "list of scalars"),
        ({"a": {"gt": [1]}}, "scalar"),
        ({"created_at": {"gt": "yesterday"}}, "not an ISO date"),
        ({"bad field": 1}, "invalid field name"),
        ([1], "non-empty object"),
    ],
)
def test_bad_filters_name_the_problem(raw: object, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_filter(raw)


def test_empty_filter_is_none() -> None:
    assert parse_filter(None) is None and parse_filter({}) is None
