"""JSON out of model text: small local models wrap it in prose or fences and break it.

Tries, in order: the text as is; the first balanced `{...}` / `[...]` block; that block with
common slips repaired (code fences, trailing commas, Python literals, single quotes, bare
keys, unclosed brackets at the end of a truncated answer); then the `json-repair` package on
the block and on the whole text (missing commas between items, unescaped quotes, comments
and the other slips it knows), keeping only an object or a list. Raises `JSONRepairError`
when nothing parses, so the caller can retry or keep the raw memory.
"""

from __future__ import annotations

import json
import re
from typing import Any

import json_repair


class JSONRepairError(ValueError):
    pass


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_BARE_KEY = re.compile(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_]*)(\s*:)")
_PY_LITERALS = {"True": "true", "False": "false", "None": "null"}


def parse_json(text: str) -> Any:
    """The JSON value the text holds, repaired if needed."""
    candidates = [text.strip()]
    fenced = _FENCE.findall(text)
    candidates.extend(f.strip() for f in fenced)
    block = _first_block(text)
    if block is not None:
        candidates.append(block)
    for candidate in candidates:
        if not candidate:
            continue
        for attempt in (candidate, _repair(candidate)):
            try:
                return json.loads(attempt)
            except ValueError:
                continue
    for whole in (block, text):
        if whole and (repaired := _library_repair(whole)) is not None:
            return repaired
    raise JSONRepairError(f"no JSON object could be read from: {_preview(text)}")


def _library_repair(text: str) -> Any:
    """`json-repair`'s reading, when it is an object or a list (it turns prose into "")."""
    try:
        value = json_repair.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict | list) and value else None


def _first_block(text: str) -> str | None:
    """From the first `{` or `[` to its matching bracket (or the end, if never closed)."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return None
    start = min(starts)
    depth = 0
    in_string: str | None = None
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == in_string:
                in_string = None
            continue
        if char in "\"'":
            in_string = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return text[start : index + 1]
    return text[start:]


def _repair(text: str) -> str:
    fixed = text.strip()
    if fixed.startswith("```"):
        fixed = fixed.strip("`")
        fixed = fixed.removeprefix("json").removeprefix("JSON")
    fixed = _quote_single(fixed)
    fixed = _BARE_KEY.sub(r'\1"\2"\3', fixed)
    fixed = re.sub(
        r"(?<![\"\w])(True|False|None)(?![\"\w])", lambda m: _PY_LITERALS[m.group(1)], fixed
    )
    fixed = _close(fixed)
    return _TRAILING_COMMA.sub(r"\1", fixed)


def _quote_single(text: str) -> str:
    """'single-quoted' strings to "double-quoted" ones, leaving apostrophes inside "..."."""
    out: list[str] = []
    in_string: str | None = None
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
                if in_string == "'" and char == "'":
                    out.pop()  # \' needs no escape inside "..."
                out.append(char)
                continue
            if char == "\\":
                escaped = True
                out.append(char)
                continue
            if char == in_string:
                in_string = None
                out.append('"')
                continue
            if in_string == "'" and char == '"':
                out.append('\\"')
                continue
            out.append(char)
            continue
        if char in "\"'":
            in_string = char
            out.append('"')
            continue
        out.append(char)
    if in_string:
        out.append('"')
    return "".join(out)


def _close(text: str) -> str:
    """Close brackets a truncated answer left open (strings were closed by _quote_single)."""
    stack: list[str] = []
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
        elif char in "}]" and stack:
            stack.pop()
    text = text.rstrip().rstrip(",")
    if text.endswith(":"):
        text += " null"
    return text + "".join(reversed(stack))


def _preview(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."
