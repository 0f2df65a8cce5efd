"""The MemOS filter DSL, parsed into a small typed tree that stores compile."""

from __future__ import annotations

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


def parse_filter(raw: Any) -> FilterExpr | None:
    """Validate a filter dict; raises FilterError with the offending part named."""
    if raw is None or raw == {}:
        return None
    return _parse(raw, "filter")


def _parse(raw: Any, where: str) -> FilterExpr:
    if not isinstance(raw, dict) or not raw:
        raise FilterError(f"{where}: expected a non-empty object, got {type(raw).__name__}")
    parts: list[FilterExpr] = []
    for field, value in raw.items():
        if field in ("and", "or"):
            if not isinstance(value, list) or not value:
                raise FilterError(f"{where}.{field}: expected a non-empty list")
            children = tuple(_parse(v, f"{where}.{field}[{i}]") for i, v in enumerate(value))
            parts.append(And(children) if field == "and" else Or(children))
            continue
        if not isinstance(field, str) or not field.replace("_", "").replace(".", "").isalnum():
            raise FilterError(f"{where}: invalid field name {field!r}")
        if isinstance(value, dict):
            if not value:
                raise FilterError(f"{where}.{field}: empty operator object")
            for op, operand in value.items():
                if op not in OPERATORS:
                    raise FilterError(
                        f"{where}.{field}: unknown operator {op!r}; "
                        f"expected one of {sorted(OPERATORS)}"
                    )
                parts.append(_condition(field, op, operand, where))
        else:
            parts.append(_condition(field, "eq", value, where))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _condition(field: str, op: str, value: Any, where: str) -> Condition:
    label = f"{where}.{field}.{op}"
    if op == "in":
        if not isinstance(value, list) or not all(isinstance(v, _SCALARS) for v in value):
            raise FilterError(f"{label}: expected a list of scalars")
        value = [_normalise(field, v, label) for v in value]
    elif op == "like":
        if not isinstance(value, str):
            raise FilterError(f"{label}: expected a string")
    elif not isinstance(value, _SCALARS):
        raise FilterError(f"{label}: expected a scalar, got {type(value).__name__}")
    else:
        value = _normalise(field, value, label)
    return Condition(field=field, op=op, value=value)  # type: ignore[arg-type]


def _normalise(field: str, value: Any, label: str) -> Any:
    """`*_at` fields compare as fixed-width UTC ISO strings, whatever the caller sent."""
    if not field.endswith("_at") or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return iso(datetime.fromtimestamp(value, UTC))
    try:
        text = str(value).replace("Z", "+00:00")
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise FilterError(f"{label}: {value!r} is not an ISO date or datetime") from exc
    return iso(dt)
