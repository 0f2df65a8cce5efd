"""The MemOS filter DSL, parsed into a small typed tree that stores compile.

Bounded: a filter becomes one store query, and its cost grows with nesting and size (a
60-level `or` ran for minutes), so depth, condition count, list and string sizes are capped
and every number must be finite and fit 64 bits (what the graph stores can hold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from memos_ray.domain.memory import iso
from memos_ray.errors import FilterError

Op = Literal["eq", "gt", "lt", "gte", "lte", "contains", "in", "like"]
OPERATORS: frozenset[str] = frozenset({"gt", "lt", "gte", "lte", "contains", "in", "like"})

# Metadata fields stored as first-class properties; any other field is an `info` key.
TOP_LEVEL_FIELDS: frozenset[str] = frozenset(
    {
        "id",
        "memory",
        "user_id",
        "session_id",
        "status",
        "memory_type",
        "key",
        "tags",
        "created_at",
        "updated_at",
        "version",
        "confidence",
    }
)
LIST_FIELDS: frozenset[str] = frozenset({"tags"})


@dataclass(frozen=True)
class Condition:
    field: str
    op: Op
    value: Any

    @property
    def is_info(self) -> bool:
        return self.field not in TOP_LEVEL_FIELDS


@dataclass(frozen=True)
class And:
    items: tuple[FilterExpr, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[FilterExpr, ...]


FilterExpr = Condition | And | Or

_SCALARS = (str, int, float, bool)

MAX_DEPTH = 8  # and/or levels
MAX_CONDITIONS = 128
MAX_IN_VALUES = 100
MAX_STRING_CHARS = 1_000
_INT64 = (-(2**63), 2**63 - 1)
# Datetimes as numbers are Unix seconds within years 1..9999 (what ISO strings can say).
_EPOCH_RANGE = (-62_135_596_800, 253_402_300_799)


def parse_filter(raw: Any) -> FilterExpr | None:
    """Validate a filter dict; raises FilterError with the offending part named."""
    if raw is None or raw == {}:
        return None
    return _parse(raw, "filter", 1, [0])


def _parse(raw: Any, where: str, depth: int, conditions: list[int]) -> FilterExpr:
    if not isinstance(raw, dict) or not raw:
        raise FilterError(f"{where}: expected a non-empty object, got {type(raw).__name__}")
    if depth > MAX_DEPTH:
        raise FilterError(f"{where}: and/or nest deeper than {MAX_DEPTH} levels")
    parts: list[FilterExpr] = []
    for field, value in raw.items():
        if field in ("and", "or"):
            if not isinstance(value, list) or not value:
                raise FilterError(f"{where}.{field}: expected a non-empty list")
            if len(value) > MAX_CONDITIONS:
                raise FilterError(f"{where}.{field}: more than {MAX_CONDITIONS} items")
            children = tuple(
                _parse(v, f"{where}.{field}[{i}]", depth + 1, conditions)
                for i, v in enumerate(value)
            )
            parts.append(And(children) if field == "and" else Or(children))
            continue
        if not isinstance(field, str) or not field.replace("_", "").replace(".", "").isalnum():
            raise FilterError(f"{where}: invalid field name {field[:80]!r}")
        if len(field) > 128:
            raise FilterError(f"{where}: field name longer than 128 characters")
        if isinstance(value, dict):
            if not value:
                raise FilterError(f"{where}.{field}: empty operator object")
            for op, operand in value.items():
                if op not in OPERATORS:
                    raise FilterError(
                        f"{where}.{field}: unknown operator {op!r}; "
                        f"expected one of {sorted(OPERATORS)}"
                    )
                parts.append(_condition(field, op, operand, where, conditions))
        else:
            parts.append(_condition(field, "eq", value, where, conditions))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _condition(field: str, op: str, value: Any, where: str, conditions: list[int]) -> Condition:
    label = f"{where}.{field}.{op}"
    conditions[0] += 1
    if conditions[0] > MAX_CONDITIONS:
        raise FilterError(f"filter: more than {MAX_CONDITIONS} conditions")
    if op == "in":
        if not isinstance(value, list) or not all(isinstance(v, _SCALARS) for v in value):
            raise FilterError(f"{label}: expected a list of scalars")
        if len(value) > MAX_IN_VALUES:
            raise FilterError(f"{label}: more than {MAX_IN_VALUES} values")
        value = [_normalise(field, _scalar(v, label), label) for v in value]
    elif op == "like":
        if not isinstance(value, str):
            raise FilterError(f"{label}: expected a string")
        value = _scalar(value, label)
    elif not isinstance(value, _SCALARS):
        raise FilterError(f"{label}: expected a scalar, got {type(value).__name__}")
    else:
        value = _normalise(field, _scalar(value, label), label)
    return Condition(field=field, op=op, value=value)  # type: ignore[arg-type]


def _scalar(value: Any, label: str) -> Any:
    """A value the stores can hold: finite, 64-bit, a bounded string."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        raise FilterError(f"{label}: integer outside the 64-bit range")
    if isinstance(value, float) and not math.isfinite(value):
        raise FilterError(f"{label}: {value} is not a finite number")
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        raise FilterError(f"{label}: string longer than {MAX_STRING_CHARS} characters")
    return value


def _normalise(field: str, value: Any, label: str) -> Any:
    """`*_at` fields compare as fixed-width UTC ISO strings, whatever the caller sent."""
    if not field.endswith("_at") or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if not _EPOCH_RANGE[0] <= value <= _EPOCH_RANGE[1]:
            raise FilterError(f"{label}: {value} is not a Unix time within years 1..9999")
        try:
            return iso(datetime.fromtimestamp(value, UTC))
        except (OverflowError, OSError, ValueError) as exc:
            raise FilterError(f"{label}: {value} is not a representable time") from exc
    try:
        text = str(value).replace("Z", "+00:00")
        dt = datetime.fromisoformat(text)
        return iso(dt)
    except (ValueError, OverflowError) as exc:
        raise FilterError(f"{label}: {value!r} is not an ISO date or datetime in range") from exc
