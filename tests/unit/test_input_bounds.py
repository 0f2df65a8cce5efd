"""Pure validators of request values: JSON bounds, filter bounds, far dates."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from memos_ray.core import filters
from memos_ray.core.dates import resolve_relative_dates
from memos_ray.core.filters import parse_filter
from memos_ray.core.turn_ranking import query_date_windows
from memos_ray.errors import FilterError
from memos_ray.schemas.values import (
    FILTER_BOUNDS,
    INT64_MAX,
    INT64_MIN,
    FilterDict,
    InfoDict,
    check_json,
)


class _Body(BaseModel):
    info: InfoDict | None = None
    filter: FilterDict | None = None


def _nested(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"key": "x"}
    for _ in range(levels):
        node = {"or": [node, {"key": "y"}]}
    return node


@pytest.mark.parametrize(
    "value",
    [
        {"n": INT64_MAX + 1},
        {"n": INT64_MIN - 1},
        {"n": [1, math.nan]},
        {"n": {"deep": math.inf}},
        {"n": -math.inf},
        {"n": 1e19},
        {"s": "x" * 2_001},
        {"d": _nested(10)},
        {"l": list(range(300))},
    ],
)
def test_info_out_of_bounds_is_a_validation_error(value: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="info"):
        _Body(info=value)


def test_info_in_bounds_passes_unchanged() -> None:
    info = {"n": INT64_MAX, "m": INT64_MIN, "f": 1.5, "t": True, "u": "ünïcode ✓", "z": None}
    assert _Body(info=info).info == info


def test_json_bounds_name_the_path_and_measure_bytes() -> None:
    with pytest.raises(ValueError, match=r"filter\.a\[1\]: nan is not a finite number"):
        check_json({"a": [1, math.nan]}, FILTER_BOUNDS, "filter")
    with pytest.raises(ValueError, match="bytes as JSON"):
        check_json({"or": [{"k": "v" * 900} for _ in range(5)]}, FILTER_BOUNDS, "filter")
    with pytest.raises(ValueError, match="outside the 64-bit range"):
        check_json({"k": 10**5000}, FILTER_BOUNDS, "filter")


def test_filter_depth_and_size_bounds() -> None:
    assert parse_filter(_nested(filters.MAX_DEPTH - 1)) is not None
    with pytest.raises(FilterError, match="deeper than 8"):
        parse_filter(_nested(filters.MAX_DEPTH))
    with pytest.raises(FilterError, match="more than 128"):
        parse_filter({"or": [{"key": f"k{i}"} for i in range(129)]})
    with pytest.raises(FilterError, match="more than 128 conditions"):
        parse_filter({"and": [{"or": [{"key": f"k{i}"} for i in range(100)]}] * 2})
    with pytest.raises(FilterError, match="more than 100 values"):
        parse_filter({"tags": {"in": list(range(101))}})
    with pytest.raises(FilterError, match="longer than 1000"):
        parse_filter({"memory": {"like": "x" * 1001}})
    assert parse_filter({"memory": {"like": "日本語" * 300}}) is not None


@pytest.mark.parametrize(
    "raw",
    [
        {"n": INT64_MAX + 1},
        {"n": {"gt": -(2**64)}},
        {"n": math.nan},
        {"n": {"in": [1, math.inf]}},
        {"created_at": {"gt": 1e20}},
        {"created_at": {"gt": -1e20}},
        {"created_at": {"gt": 2**70}},
        {"created_at": {"lt": "9999-12-31T23:59:59-10:00"}},
        {"updated_at": {"gt": "0001-01-01T00:00:00+10:00"}},
        {"created_at": "not a date"},
    ],
)
def test_filter_values_out_of_range_are_filter_errors(raw: dict[str, Any]) -> None:
    with pytest.raises(FilterError):
        parse_filter(raw)


def test_filter_dates_in_range_normalise() -> None:
    assert parse_filter({"created_at": {"gt": 0}}).value == "1970-01-01T00:00:00.000000Z"  # type: ignore[union-attr]
    far = parse_filter({"created_at": {"lt": "9999-12-31T23:59:59Z"}})
    assert far.value == "9999-12-31T23:59:59.000000Z"  # type: ignore[union-attr]


def test_far_dates_resolve_to_nothing_instead_of_failing() -> None:
    end = dt.date(9999, 12, 31)
    start = dt.date(1, 1, 1)
    assert query_date_windows("what happened next year and 3 years ago?", start) == []
    assert query_date_windows("May 0000 or 99999999999 days ago", end) == []
    assert query_date_windows("yesterday", start) == []
    assert resolve_relative_dates("See you tomorrow.", "9999-12-31") == "See you tomorrow."
    assert "2 May 2026" in resolve_relative_dates("I left yesterday.", "2026-05-03")


def test_file_data_is_base64_only_where_it_decodes_to_what_the_file_must_be() -> None:
    import base64

    from memos_ray.core.documents import decode_file_data, parse_document
    from memos_ray.errors import BadRequestError, PayloadTooLargeError

    # Words that happen to be valid base64 stay the words they are.
    for word in ("abcd", "Test", "heronnes"):
        assert decode_file_data(word, "n.txt") == (word.encode(), "text/plain")
    text = "The heron sleeps."
    encoded = base64.b64encode(text.encode()).decode()
    assert decode_file_data(encoded, "n.md") == (text.encode(), None)
    pdf_bytes = b"%PDF-1.4 whatever"
    assert decode_file_data(base64.b64encode(pdf_bytes).decode(), "x")[1] == "application/pdf"
    assert decode_file_data("data:text/plain,caf%C3%A9", "n.txt") == ("café".encode(), "text/plain")
    data, mime = decode_file_data(
        "data:text/plain;base64," + base64.b64encode(b"\xe9t\xe9").decode()
    )
    with pytest.raises(BadRequestError, match="must be UTF-8"):
        parse_document("latin.txt", data, mime)
    with pytest.raises(BadRequestError, match="not valid Unicode"):
        decode_file_data("a \ud800 b", "s.txt")
    with pytest.raises(PayloadTooLargeError, match="max_document_chars"):
        parse_document("long.txt", b"x" * 101, "text/plain", max_chars=100)
    assert parse_document("ok.txt", b"x" * 100, "text/plain", max_chars=100) == "x" * 100
    with pytest.raises(BadRequestError, match="not a readable PDF"):
        parse_document("bad.pdf", b"%PDF-1.4\n" + b"[" * 5_000)
