"""Compile the filter DSL into a Cypher WHERE fragment whose values all travel as parameters."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from memos_ray.errors import FilterError
from memos_ray.memory.filters import LIST_FIELDS, TOP_LEVEL_FIELDS, And, Condition, FilterExpr

INFO_PREFIX = "info__"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COMPARISONS = {"gt": ">", "lt": "<", "gte": ">=", "lte": "<="}


def is_identifier(name: str) -> bool:
    return _IDENTIFIER.fullmatch(name) is not None


def property_name(field_name: str) -> str:
    """The node property holding a filter field; `info.x` and unknown fields live under info__.

    Property names are spliced into the query text, so only plain identifiers pass.
    """
    if field_name.startswith("info."):
        key, is_info = field_name[len("info.") :], True
    else:
        key, is_info = field_name, field_name not in TOP_LEVEL_FIELDS
    if not is_identifier(key):
        raise FilterError(f"filter field {field_name!r} is not a plain identifier")
    return f"{INFO_PREFIX}{key}" if is_info else key


@dataclass
class _Params:
    prefix: str
    values: dict[str, Any] = field(default_factory=dict)

    def add(self, value: Any) -> str:
        name = f"{self.prefix}{len(self.values)}"
        self.values[name] = value
        return f"${name}"


def compile_filter(
    expr: FilterExpr, var: str = "n", prefix: str = "f"
) -> tuple[str, dict[str, Any]]:
    """A parenthesised WHERE fragment over node variable `var`, and its parameters.

    Parameter names are `prefix` + a counter, so callers keep their own names apart by prefix.
    """
    if not is_identifier(var) or not is_identifier(prefix):
        raise ValueError("var and prefix must be plain identifiers")
    params = _Params(prefix)
    return _compile(expr, var, params), params.values


def _compile(expr: FilterExpr, var: str, params: _Params) -> str:
    if isinstance(expr, Condition):
        return f"({_condition(expr, var, params)})"
    joiner = " AND " if isinstance(expr, And) else " OR "
    if not expr.items:
        raise FilterError("empty and/or group")
    return "(" + joiner.join(_compile(item, var, params) for item in expr.items) + ")"


def _condition(cond: Condition, var: str, params: _Params) -> str:
    prop = f"{var}.{property_name(cond.field)}"
    op = cond.op
    if cond.field in LIST_FIELDS:
        # List properties match per element: eq/contains = membership, in = any overlap.
        if op in ("eq", "contains"):
            return f"{params.add(cond.value)} IN {prop}"
        if op == "in":
            return f"any(_v IN {prop} WHERE _v IN {params.add(cond.value)})"
        if op == "like":
            return f"any(_v IN {prop} WHERE _v CONTAINS {params.add(cond.value)})"
        raise FilterError(f"operator {op!r} does not apply to list field {cond.field!r}")
    if op == "eq":
        return f"{prop} = {params.add(cond.value)}"
    if op in _COMPARISONS:
        return f"{prop} {_COMPARISONS[op]} {params.add(cond.value)}"
    if op == "in":
        return f"{prop} IN {params.add(cond.value)}"
    if op == "like":
        return f"{prop} CONTAINS {params.add(cond.value)}"
    if op == "contains":
        # Known scalar fields are strings: substring. Info values may be lists: membership.
        if cond.field in TOP_LEVEL_FIELDS:
            return f"{prop} CONTAINS {params.add(cond.value)}"
        return f"{params.add(cond.value)} IN {prop}"
    raise FilterError(f"unknown operator {op!r}")
