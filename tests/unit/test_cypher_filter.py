"""The filter compiler: parameters only, never values in the query text."""

from __future__ import annotations

import pytest

from memos_ray.core.filters import And, Condition, Or, parse_filter
from memos_ray.errors import FilterError
from memos_ray.stores.graph.cypher import (
    MAX_CONDITIONS,
    MAX_NESTING,
    compile_filter,
    nesting,
    property_name,
)


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
    # AND binds tighter than OR: no parentheses needed inside.
    assert where == (
        "(m.user_id = $q0 AND m.created_at >= $q1 OR m.user_id = $q2 AND $q3 IN m.tags)"
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


def test_parentheses_only_where_precedence_needs_them() -> None:
    a, b, c = (Condition("user_id", "eq", v) for v in "abc")
    # An OR inside an AND keeps its parentheses; groups of one kind are spliced in flat.
    assert (
        compile_filter(And((a, Or((b, c)))))[0]
        == "(n.user_id = $f0 AND (n.user_id = $f1 OR n.user_id = $f2))"
    )
    assert (
        compile_filter(Or((a, Or((b, c)))))[0]
        == "(n.user_id = $f0 OR n.user_id = $f1 OR n.user_id = $f2)"
    )
    assert (
        compile_filter(And((a, And((b, c)))))[0]
        == "(n.user_id = $f0 AND n.user_id = $f1 AND n.user_id = $f2)"
    )
    assert compile_filter(And((a, Or((b,)))))[0] == "(n.user_id = $f0 AND n.user_id = $f1)"


def test_deep_nesting_and_huge_filters_are_refused() -> None:
    """FalkorDB's parser is exponential in parenthesis depth: refuse before it hangs."""
    expr: And | Or | Condition = Condition("user_id", "eq", "u")
    for i in range(MAX_NESTING + 2):
        expr = And((Condition("key", "eq", str(i)), Or((Condition("key", "eq", "x"), expr))))
    with pytest.raises(FilterError, match="deeply"):
        compile_filter(expr)
    many = Or(tuple(Condition("user_id", "eq", str(i)) for i in range(MAX_CONDITIONS + 1)))
    with pytest.raises(FilterError, match="conditions"):
        compile_filter(many)
    # A flat group of any length within the count limit is one level.
    assert nesting(compile_filter(Or(many.items[:MAX_CONDITIONS]))[0]) == 1
