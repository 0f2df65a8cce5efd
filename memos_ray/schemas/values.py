"""Bounds on free-form JSON values in requests (`info`, `filter`, tool definitions).

Why: the stores take what the API lets through. Python's json accepts `NaN` and `Infinity`,
integers have no size, and nesting has no depth, but the graph driver packs 64-bit integers
and finite floats only, and deep or large structures cost time in every layer. One check,
applied where a request model holds a free-form value, refuses such values with a 422 that
names the offending path, before anything is written.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, model_validator

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class JsonBounds:
    max_depth: int
    max_nodes: int
    max_bytes: int
    max_string_chars: int


# `info` is kept on every memory it tags, and its list values become node properties: small
# and shallow.
INFO_BOUNDS = JsonBounds(max_depth=8, max_nodes=256, max_bytes=2_048, max_string_chars=2_000)
# A filter is compiled into one store query, whose parse and plan cost grows with its size and
# (for FalkorDB, exponentially) its nesting. Its and/or depth and condition count are bounded
# again, by meaning, in `memory.filters`.
FILTER_BOUNDS = JsonBounds(max_depth=20, max_nodes=512, max_bytes=4_096, max_string_chars=1_000)
# Tool definitions (JSON schemas) nest deeper than metadata.
TOOL_BOUNDS = JsonBounds(max_depth=32, max_nodes=5_000, max_bytes=256_000, max_string_chars=64_000)


def check_json(value: Any, bounds: JsonBounds, where: str = "value") -> None:
    """Raise ValueError naming the first part of `value` that is out of `bounds`."""
    nodes = 0
    stack: list[tuple[Any, str, int]] = [(value, where, 1)]
    while stack:
        item, path, depth = stack.pop()
        nodes += 1
        if nodes > bounds.max_nodes:
            raise ValueError(f"{where} has more than {bounds.max_nodes} values")
        if depth > bounds.max_depth:
            raise ValueError(f"{path} nests deeper than {bounds.max_depth} levels")
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise ValueError(f"{path}: integer {_short(item)} is outside the 64-bit range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{path}: {item} is not a finite number")
            if not INT64_MIN <= item <= INT64_MAX:
                raise ValueError(f"{path}: {item:.3g} is outside the 64-bit range")
        elif isinstance(item, str):
            if len(item) > bounds.max_string_chars:
                raise ValueError(
                    f"{path}: string of {len(item)} characters; the limit is "
                    f"{bounds.max_string_chars}"
                )
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ValueError(f"{path}: keys must be strings")
                if len(key) > bounds.max_string_chars:
                    raise ValueError(f"{path}: a key is longer than {bounds.max_string_chars}")
                stack.append((child, f"{path}.{key[:40]}", depth + 1))
        elif isinstance(item, list | tuple):
            stack += [(child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item)]
        else:
            raise ValueError(f"{path}: {type(item).__name__} is not a JSON value")
    size = len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    if size > bounds.max_bytes:
        raise ValueError(f"{where} is {size} bytes as JSON; the limit is {bounds.max_bytes}")


def _short(number: int) -> str:
    try:
        text = str(number)
    except ValueError:  # more digits than Python prints
        return "(too many digits)"
    return text if len(text) <= 24 else f"{text[:10]}...({len(text)} digits)"


def _bounded(bounds: JsonBounds, where: str) -> AfterValidator:
    def check(value: Any) -> Any:
        if value is not None:
            check_json(value, bounds, where)
        return value

    return AfterValidator(check)


# Info's numbers and booleans become graph node properties, copied onto every memory the add
# stores: their printed size is bounded (floats as "%f": 9.2e18 takes 26 bytes).
MAX_INFO_PROPERTY_BYTES = 1_536


def printed_size(value: Any) -> int:
    """Bytes a graph server prints for the non-text values in `value` (floats as %f)."""
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return len(str(value))
    if isinstance(value, float):
        return len(f"{value:f}")
    if isinstance(value, dict):
        return sum(printed_size(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(printed_size(v) + 1 for v in value)
    return 0


def _check_info(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    check_json(value, INFO_BOUNDS, "info")
    size = printed_size(value)
    if size > MAX_INFO_PROPERTY_BYTES:
        raise ValueError(
            f"info's numbers take {size} bytes as stored; the limit is {MAX_INFO_PROPERTY_BYTES}"
        )
    return value


InfoDict = Annotated[dict[str, Any], AfterValidator(_check_info)]
FilterDict = Annotated[dict[str, Any], _bounded(FILTER_BOUNDS, "filter")]
ToolList = Annotated[list[dict[str, Any]], _bounded(TOOL_BOUNDS, "tools")]


# Lone UTF-16 surrogates (JSON can escape one, but nothing can encode it) and NUL (the graph
# store reads its parameters as C strings): no store can keep them.
_SURROGATE = re.compile("[\x00\ud800-\udfff]")
_UNSTORABLE = "text holds a NUL character or a lone UTF-16 surrogate, which no store can keep"


def find_lone_surrogate(value: Any, where: str = "body") -> str | None:
    """The path of the first string holding a lone UTF-16 surrogate (JSON can escape one,
    `"\\ud800"`, but no store or model can encode it), or None."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and _SURROGATE.search(key):
                    return path
                stack.append((child, f"{path}.{key}" if isinstance(key, str) else path))
        elif isinstance(item, list | tuple):
            stack += [(child, f"{path}[{i}]") for i, child in enumerate(item)]
    return None


class ValidText(BaseModel):
    """Base of request models: refuses lone surrogates anywhere in the body (422)."""

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        where = find_lone_surrogate(data)
        if where is not None:
            raise ValueError(f"{where}: {_UNSTORABLE}")
        return data


def _valid_text(value: str) -> str:
    if _SURROGATE.search(value):
        raise ValueError(_UNSTORABLE)
    return value


# A memory id sent outside a request model (a bare JSON list body).
MemoryIdText = Annotated[str, Field(max_length=256), AfterValidator(_valid_text)]
