"""Hostile inputs over real HTTP: each is a 4xx with a message, never a 500, and stores nothing.

One app (admin key set, small document limits) serves the whole module.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from memos_ray.config import LimitsConfig, MemosConfig
from memos_ray.models.embedder import SentenceTransformerEmbedder
from tests.api.conftest import ADMIN_KEY, RunningApi, _run

MAX_DOCUMENT_CHARS = 20_000
MAX_DOCUMENT_CHUNKS = 12
MAX_QUERY_CHARS = 2_000


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder
) -> Iterator[RunningApi]:
    data_dir: Path = tmp_path_factory.mktemp("hardening-api")
    limits = LimitsConfig(
        max_document_chars=MAX_DOCUMENT_CHARS,
        max_document_chunks=MAX_DOCUMENT_CHUNKS,
        max_query_chars=MAX_QUERY_CHARS,
        max_wait_s=2.0,
        max_stream_s=2.0,
    )
    config = MemosConfig(data_dir=data_dir, admin_key=ADMIN_KEY, limits=limits).resolved()
    yield from _run(config, embedder)


def post(api: RunningApi, path: str, body: Any, key: str = ADMIN_KEY) -> httpx.Response:
    return api.post(path, body, key=key)


def post_raw(api: RunningApi, path: str, raw: str) -> httpx.Response:
    """A body with literals httpx would not write (NaN, Infinity, 10**30)."""
    headers = {"content-type": "application/json", "Authorization": f"Bearer {ADMIN_KEY}"}
    return api.http.post(path, content=raw.encode(), headers=headers)


def snapshot(api: RunningApi, user: str) -> list[str]:
    """Every memory id in the user's default cube: what 'unchanged' is checked against."""
    response = post(api, "/product/get_memory", {"user_id": user, "page_size": 1000, "page": 1})
    assert response.status_code == 200, response.text
    return sorted(m["id"] for m in response.json()["data"]["text_mem"][0]["memories"])


def seeded_user(api: RunningApi) -> str:
    user = f"u-{uuid.uuid4().hex[:8]}"
    body = {"user_id": user, "messages": "Baseline: the heron nests by the pond.", "mode": "fast"}
    response = post(api, "/product/add", body)
    assert response.status_code == 200, response.text
    return user


def assert_refused(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert response.status_code in statuses, response.text
    body = response.json()
    assert body["code"] == response.status_code and body["message"], body
    return body


def nested_or(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"key": "x"}
    for _ in range(levels):
        node = {"or": [node, {"key": "y"}]}
    return node


BAD_FILTERS: list[tuple[str, str]] = [
    ("deep or", json.dumps(nested_or(60))),
    ("nine levels", json.dumps(nested_or(9))),
    ("3 KB string", json.dumps({"memory": {"like": "x" * 3_100}})),
    ("150 ors", json.dumps({"or": [{"key": f"k{i}"} for i in range(150)]})),
    ("400 in-values", json.dumps({"tags": {"in": [f"t{i}" for i in range(400)]}})),
    ("filter over 4 KB", json.dumps({"and": [{f"f{i}": "v" * 90} for i in range(60)]})),
    ("2**70", '{"info.n": 1180591620717411303424}'),
    ("-2**64", '{"info.n": {"gt": -18446744073709551616}}'),
    ("NaN", '{"info.n": NaN}'),
    ("Infinity", '{"info.n": {"lt": Infinity}}'),
    ("-Infinity", '{"confidence": {"gt": -Infinity}}'),
    ("in with NaN", '{"info.n": {"in": [1, NaN]}}'),
    ("created_at 1e20", '{"created_at": {"gt": 1e20}}'),
    ("created_at -1e20", '{"created_at": {"lt": -1e20}}'),
    ("created_at 2**70", '{"created_at": {"gt": 1180591620717411303424}}'),
    ("created_at year 9999 west", '{"created_at": {"gt": "9999-12-31T23:59:59-10:00"}}'),
    ("created_at year 1 east", '{"updated_at": {"lt": "0001-01-01T00:00:00+10:00"}}'),
]


@pytest.mark.parametrize(("label", "raw_filter"), BAD_FILTERS, ids=[b[0] for b in BAD_FILTERS])
def test_bad_filters_are_4xx_on_every_route(api: RunningApi, label: str, raw_filter: str) -> None:
    user = seeded_user(api)
    before = snapshot(api, user)
    bodies = {
        "/product/search": f'{{"user_id": "{user}", "query": "heron", "filter": {raw_filter}}}',
        "/product/get_memory": f'{{"user_id": "{user}", "filter": {raw_filter}}}',
        "/product/delete_memory": f'{{"user_id": "{user}", "filter": {raw_filter}}}',
    }
    for path, raw in bodies.items():
        assert_refused(post_raw(api, path, raw), 400, 413, 422)
    assert snapshot(api, user) == before


BAD_VALUES: list[tuple[str, str, str]] = [
    ("info 2**70", "/product/add", '"messages": "m1", "info": {"n": 1180591620717411303424}'),
    ("info NaN", "/product/add", '"messages": "m2", "info": {"n": NaN}'),
    ("info Infinity", "/product/add", '"messages": "m3", "info": {"n": [1, -Infinity]}'),
    ("info deep", "/product/add", '"messages": "m4", "info": ' + json.dumps(nested_or(30))),
    ("info huge", "/product/add", '"messages": "m5", "info": {"s": "' + "x" * 70_000 + '"}'),
    ("tools NaN", "/product/add", '"tools": [{"name": "t", "parameters": {"max": NaN}}]'),
    (
        "chat_time year 9999",
        "/product/add",
        '"mode": "fast", "messages": [{"role": "user", "content": "see you tomorrow", '
        '"chat_time": "9999-12-31T23:00:00", "tool_calls": [{"id": 1e400}]}]',
    ),
    ("top_k 2**70", "/product/search", '"query": "q", "top_k": 1180591620717411303424'),
    (
        "tool top_k 2**70",
        "/product/search",
        '"query": "q", "tool_mem_top_k": 1180591620717411303424',
    ),
    ("pref top_k 2**70", "/product/search", '"query": "q", "pref_top_k": 1180591620717411303424'),
    ("relativity NaN", "/product/search", '"query": "q", "relativity": NaN'),
    ("page 2**70", "/product/get_memory", '"page": 1180591620717411303424, "page_size": 10'),
    ("page 2**62", "/product/get_memory", '"page": 4611686018427387904, "page_size": 1000'),
    ("page_size 2**70", "/product/get_memory", '"page": 1, "page_size": 1180591620717411303424'),
]


@pytest.mark.parametrize(("label", "path", "fields"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_values_are_4xx(api: RunningApi, label: str, path: str, fields: str) -> None:
    user = seeded_user(api)
    before = snapshot(api, user)
    assert_refused(post_raw(api, path, f'{{"user_id": "{user}", {fields}}}'), 400, 413, 422)
    assert snapshot(api, user) == before


def test_far_dates_in_messages_and_reference_time_are_not_500(api: RunningApi) -> None:
    user = seeded_user(api)
    message = {
        "role": "user",
        "content": "See you tomorrow, in 3 years.",
        "chat_time": "9999-12-31",
    }
    added = post(api, "/product/add", {"user_id": user, "messages": [message], "mode": "fast"})
    assert added.status_code == 200, added.text
    for when in ("9999-12-31", "0001-01-01", "10000-01-01", "-5-01-01"):
        body = {"user_id": user, "query": "what next year, 3 years ago?", "reference_time": when}
        response = post(api, "/product/search", body)
        assert response.status_code in (200, 400, 422), response.text


def test_a_filter_within_the_dsl_bounds_but_over_the_store_request_limit_is_413(
    api: RunningApi,
) -> None:
    """The embedded FalkorDB takes 3,000 bytes per request: a filter that passes the DSL's
    bounds may still not fit; that is the caller's to narrow (413), not a server error."""
    user = seeded_user(api)
    before = snapshot(api, user)
    wide = {"or": [{"key": f"k{i}"} for i in range(100)]}
    for path in ("/product/search", "/product/get_memory"):
        body = {"user_id": user, "query": "heron", "filter": wide}
        assert "narrow the filter" in assert_refused(post(api, path, body), 413)["message"]
    deleted = post(api, "/product/delete_memory", {"user_id": user, "filter": wide})
    assert deleted.status_code in (200, 413), deleted.text
    assert snapshot(api, user) == before


def test_a_bounded_filter_still_works(api: RunningApi) -> None:
    user = seeded_user(api)
    fine = {"and": [{"memory": {"like": "heron"}}, {"created_at": {"gt": 0}}]}
    response = post(api, "/product/search", {"user_id": user, "query": "heron", "filter": fine})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["text_mem"][0]["memories"]


def test_info_within_its_limits_is_stored_and_over_them_refused(api: RunningApi) -> None:
    user = seeded_user(api)
    fits = [
        {"f": [9.2e18 - i for i in range(55)]},
        {"s": "é" * 1_000, "n": 1},
        {"i": [2**63 - 1] * 70},
        {"nested": {"a": [1, 2], "b": {"c": "d"}}},
    ]
    for n, info in enumerate(fits):
        body = {"user_id": user, "messages": f"info case {n}", "info": info, "mode": "fast"}
        response = post(api, "/product/add", body)
        assert response.status_code == 200, response.text
    before = snapshot(api, user)
    too_big = [{"f": [9.2e18 - i for i in range(90)]}, {"s": "x" * 3_000}]
    for info in too_big:
        body = {"user_id": user, "messages": "too big", "info": info, "mode": "fast"}
        assert_refused(post(api, "/product/add", body), 422)
    assert snapshot(api, user) == before
