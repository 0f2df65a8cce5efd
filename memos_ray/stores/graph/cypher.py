"""Cypher shared by the graph stores: filters compiled to WHERE, node properties, rows.

Filter values all travel as parameters; only checked identifiers are spliced into text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memos_ray.core.filters import LIST_FIELDS, TOP_LEVEL_FIELDS, And, Condition, FilterExpr, Or
from memos_ray.domain.memory import Edge, EdgeType, MemoryItem, MemoryMetadata, content_hash
from memos_ray.errors import ConflictError, FilterError, StoreError

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
    Parentheses appear only where precedence needs them (an OR inside an AND), and a filter
    nested deeper than `MAX_NESTING` or with over `MAX_CONDITIONS` conditions is refused:
    FalkorDB 4.16's Cypher parser takes time exponential in the parenthesis depth (measured:
    16 levels 0.35 s, each level about twice the last; a 20-level filter parsed for minutes,
    outside any query timeout, and held the server).
    """
    if not is_identifier(var) or not is_identifier(prefix):
        raise ValueError("var and prefix must be plain identifiers")
    params = _Params(prefix)
    fragment = f"({_compile(expr, var, params, None)})"
    if len(params.values) > MAX_CONDITIONS:
        raise FilterError(
            f"filter has {len(params.values)} conditions; at most {MAX_CONDITIONS} "
            "(use an `in` list for many values)"
        )
    if nesting(fragment) > MAX_NESTING:
        raise FilterError(
            f"filter nests and/or groups too deeply (over {MAX_NESTING} levels); flatten it"
        )
    return fragment, params.values


# Parenthesis depth of a compiled fragment (the outer pair and an any(...) count as levels).
MAX_NESTING = 12
MAX_CONDITIONS = 1000


def nesting(text: str) -> int:
    """Deepest parenthesis level of a compiled fragment (values never appear in it)."""
    depth = deepest = 0
    for char in text:
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    return deepest


def _compile(expr: FilterExpr, var: str, params: _Params, parent: type | None) -> str:
    """AND binds tighter than OR: only an OR group inside an AND needs parentheses, and a
    group inside one of its own kind is spliced in flat."""
    if isinstance(expr, Condition):
        return _condition(expr, var, params)
    if not expr.items:
        raise FilterError("empty and/or group")
    kind = type(expr)
    joiner = " AND " if kind is And else " OR "
    text = joiner.join(_compile(item, var, params, kind) for item in expr.items)
    if kind is Or and parent is And and len(expr.items) > 1:
        return f"({text})"
    return text


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


# -- rows shared by the Cypher stores (Neo4j over Bolt, FalkorDB natively) -----------------

LABEL = "Memory"
EDGE_TYPES = frozenset(t.value for t in EdgeType)
_SCALARS = (str, int, float, bool)
# Columns that rebuild an item (`item_from_row`); the other properties only serve filters.
NODE_COLUMNS = "n.id AS id, n.cube_id AS cube_id, n.memory AS memory, n.metadata_json AS meta"


def node_props(cube_id: str, item: MemoryItem) -> dict[str, Any]:
    """The node's properties: `metadata_json` is the item, the rest exist to filter and sort.

    Timestamps are fixed-width ISO strings, so they compare as strings.
    """
    meta = item.metadata
    props: dict[str, Any] = {
        "id": item.id,
        "cube_id": cube_id,
        "memory": item.memory,
        "memory_type": meta.memory_type,
        "status": meta.status,
        "user_id": meta.user_id,
        "session_id": meta.session_id,
        "key": meta.key,
        "tags": list(meta.tags),
        "created_at": meta.created_at,
        "updated_at": meta.updated_at,
        "version": meta.version,
        "confidence": meta.confidence,
        "hash": content_hash(item.memory),
        "metadata_json": meta.model_dump_json(exclude={"embedding", "relativity"}),
    }
    for key, value in meta.info.items():
        if is_identifier(key) and storable(value):
            props[f"{INFO_PREFIX}{key}"] = value
    # Absent, not null: a null in a property map is an error or a no-op depending on server.
    return {k: v for k, v in props.items() if v is not None}


def storable(value: Any) -> bool:
    """Scalars, or non-empty lists of one scalar type (what every Cypher server can store)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, list) and value:
        first = type(value[0])
        return first in _SCALARS and all(type(v) is first and storable(v) for v in value)
    return False


def item_from_row(row: Mapping[str, Any]) -> MemoryItem:
    """An item from the `NODE_COLUMNS` of one row."""
    return MemoryItem(
        id=row["id"],
        memory=row["memory"],
        cube_id=row["cube_id"],
        metadata=MemoryMetadata.model_validate_json(row["meta"]),
    )


def where_clause(
    cube_id: str,
    filter: FilterExpr | None,
    memory_types: Sequence[str] | None,
    statuses: Sequence[str] | None,
) -> tuple[str, dict[str, Any]] | None:
    """WHERE over node `n` and its parameters; None when nothing can match (an empty list)."""
    clauses = ["n.cube_id = $cube"]
    params: dict[str, Any] = {"cube": cube_id}
    for name, param, values in (
        ("memory_type", "memory_types", memory_types),
        ("status", "statuses", statuses),
    ):
        if values is not None:
            if not values:
                return None
            clauses.append(f"n.{name} IN ${param}")
            params[param] = [str(v) for v in dict.fromkeys(values)]
    if filter is not None:
        fragment, filter_params = compile_filter(filter, "n", "f")
        clauses.append(fragment)
        params.update(filter_params)
    return " AND ".join(clauses), params


def nodes_after_query(cube_id: str, after: str | None, limit: int) -> tuple[str, dict[str, Any]]:
    """The keyset page of `GraphStore.nodes_after`: ids above `after`, in id order."""
    if limit < 1:
        raise StoreError("nodes_after: limit must be >= 1")
    clause = "n.cube_id = $cube" + (" AND n.id > $after" if after is not None else "")
    query = (
        f"MATCH (n:{LABEL}) WHERE {clause} RETURN {NODE_COLUMNS} ORDER BY n.id LIMIT {int(limit)}"
    )
    return query, {"cube": cube_id, "after": after}


def edges_from_rows(rows: Sequence[Mapping[str, Any]]) -> list[Edge]:
    """Distinct, sorted edges from rows of `source`, `target`, `type` (unknown types dropped)."""
    seen = {(r["source"], r["target"], r["type"]) for r in rows if r["type"] in EDGE_TYPES}
    return [Edge(source=s, target=t, type=EdgeType(k)) for s, t, k in sorted(seen)]


def edge_pairs(edges: Sequence[Edge]) -> dict[str, list[dict[str, str]]]:
    """Distinct source/target pairs per validated edge type (types are spliced into queries)."""
    by_type: dict[str, list[dict[str, str]]] = {}
    for edge in edges:
        kind = EdgeType(edge.type).value
        pair = {"s": edge.source, "t": edge.target}
        if pair not in by_type.setdefault(kind, []):
            by_type[kind].append(pair)
    return by_type


def check_cube(cube_id: str, items: Sequence[MemoryItem]) -> None:
    for item in items:
        if item.cube_id != cube_id:
            raise ConflictError(f"item {item.id} belongs to cube {item.cube_id}, not {cube_id}")


# Queries both stores send as they are.
MATCH_EDGES = (
    f"MATCH (a:{LABEL})-[r]->(b:{LABEL}) "
    "WHERE a.cube_id = $cube AND b.cube_id = $cube AND r.cube_id = $cube"
)
# Endpoint ids come back as columns: some servers send relationships without them.
RETURN_EDGES = " RETURN a.id AS source, b.id AS target, type(r) AS type"
