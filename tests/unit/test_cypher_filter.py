"""The filter compiler: parameters only, never values in the query text."""

from __future__ import annotations

import pytest

from memos_ray.errors import FilterError
from memos_ray.memory.filters import And, Condition, Or, parse_filter
from memos_ray.stores.graph.cypher import compile_filter, property_name


def test_scalar_operators_use_parameters() -> None:
    cases = {
        "eq": "(n.user_id = $f0)",
        "gt": "(n.user_id > $f0)",
        "lt": "(n.user_id < $f0)",
        "gte": "(n.user_id >= $f0)",
        "lte": "(n.user_id <= $f0)",
        "like": "(n.user_id CONTAINS $f0)",
        "contains": "(n.user_id CONTAINS $f0)",
    }
    for op, expected in cases.items():
        where, params = compile_filter(Condition("user_id", op, "alice"))  # type: ignore[arg-type]
        assert where == expected
        assert params == {"f0": "alice"}


def test_in_takes_the_list_as_one_parameter() -> None:
    where, params = compile_filter(Condition("status", "in", ["activated", "archived"]))
    assert where == "(n.status IN $f0)"
    assert params == {"f0": ["activated", "archived"]}


def test_unknown_fields_are_info_properties() -> None:
    where, params = compile_filter(parse_filter({"project": {"gte": 3}}))  # type: ignore[arg-type]
    assert where == "(n.info__project >= $f0)"
    assert params == {"f0": 3}
    assert property_name("info.project") == "info__project"
    assert property_name("memory_type") == "memory_type"


def test_contains_on_info_is_list_membership() -> None:
    where, _ = compile_filter(Condition("file_ids", "contains", "f1"))
    assert where == "($f0 IN n.info__file_ids)"


def test_list_fields_match_per_element() -> None:
    assert compile_filter(Condition("tags", "eq", "x"))[0] == "($f0 IN n.tags)"
    assert compile_filter(Condition("tags", "contains", "x"))[0] == "($f0 IN n.tags)"
    assert (
        compile_filter(Condition("tags", "in", ["x"]))[0] == "(any(_v IN n.tags WHERE _v IN $f0))"
    )
    assert (
        compile_filter(Condition("tags", "like", "x"))[0]
        == "(any(_v IN n.tags WHERE _v CONTAINS $f0))"
    )
    with pytest.raises(FilterError):
        compile_filter(Condition("tags", "gt", "x"))


def test_and_or_nest_with_unique_parameter_names() -> None:
    expr = parse_filter(
        {
            "or": [
                {"and": [{"user_id": "a"}, {"created_at": {"gte": "2024-01-01"}}]},
                {"user_id": "b", "tags": {"contains": "t"}},
            ]
        }
    )
    assert expr is not None
    where, params = compile_filter(expr, var="m", prefix="q")
    assert where == (
        "(((m.user_id = $q0) AND (m.created_at >= $q1)) OR ((m.user_id = $q2) AND ($q3 IN m.tags)))"
    )
    assert params == {"q0": "a", "q1": "2024-01-01T00:00:00.000000Z", "q2": "b", "q3": "t"}


def test_values_never_reach_the_query_text() -> None:
    hostile = "x') OR 1=1 //"
    expr = Or((Condition("memory", "like", hostile), And((Condition("key", "eq", hostile),))))
    where, params = compile_filter(expr)
    assert hostile not in where
    assert list(params.values()) == [hostile, hostile]


def test_field_names_must_be_identifiers() -> None:
    for bad in ("a.b", "info.a-b", "1abc", "info."):
        with pytest.raises(FilterError):
            compile_filter(Condition(bad, "eq", 1))
    with pytest.raises(ValueError):
        compile_filter(Condition("user_id", "eq", 1), var="n) DETACH DELETE (n")
