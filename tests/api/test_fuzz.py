"""Schema fuzzing: generated and malformed requests against the real app over HTTP.

The referee is schemathesis (requests generated from the app's own OpenAPI schema, both
inside it and deliberately outside it) plus a list of hand-made hostile values the schema
cannot express (non-finite and huge numbers as raw JSON, binary and huge strings, deep
filters, mutated PDFs). Two properties: no request is answered 5xx, and afterwards every
store holds only memories that some add answered 200 for (nothing half-written by a
refused request).

`MEMOS_FUZZ_EXAMPLES` sets the generated examples per operation and mode (default 12 for
the default test run; 200 or more for a long run).
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.fixtures.api import RunningApi

EXAMPLES = int(os.environ.get("MEMOS_FUZZ_EXAMPLES", "12"))
# Routes whose generated requests would only wait (long polls, streams): fuzzed with their
# bounds clamped by the app, but a generated timeout could still hold the run; they get
# hand-made cases below instead.
SKIPPED_OPERATIONS = {"GET /product/scheduler/stream"}


@dataclass
class Ledger:
    """What the app acknowledged: memory ids from adds answered 200, and every 5xx seen."""

    acknowledged: set[str] = field(default_factory=set)
    server_errors: list[str] = field(default_factory=list)
    # 503s saying the part a route needs is switched off (this app runs without an LLM).
    not_configured: int = 0
    requests: int = 0

    def record(self, method: str, path: str, body: Any, response: httpx.Response) -> None:
        self.requests += 1
        if response.status_code == 503 and any(m in response.text for m in _NOT_CONFIGURED):
            self.not_configured += 1
        elif response.status_code >= 500:
            self.server_errors.append(
                f"{method} {path} -> {response.status_code}: {response.text[:300]}\n"
                f"  body: {_short(body)}"
            )
        if path.endswith("/product/add") and response.status_code == 200:
            data = response.json().get("data") or []
            self.acknowledged.update(e["memory_id"] for e in data if "memory_id" in e)
        # The MemOS SDK dialect's adds: messages, and knowledge-base files.
        if path.endswith("/add/message") and response.status_code == 200:
            self.acknowledged.update(response.json()["data"]["memory_ids"])
        if path.endswith("/add/knowledgebase-file") and response.status_code == 200:
            for entry in response.json()["data"]:
                self.acknowledged.update(entry["memory_ids"])


# This app runs without an LLM and outside Ray: routes that need one answer 503 saying so.
_NOT_CONFIGURED = ("(llm.backend is 'none')", "no scheduler runs here")


def _short(body: Any, limit: int = 400) -> str:
    text = body if isinstance(body, str) else repr(body)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture(scope="module")
def api(open_api: RunningApi) -> Iterator[RunningApi]:
    yield open_api


def _send(api: RunningApi, ledger: Ledger, method: str, path: str, **kw: Any) -> None:
    body = kw.get("content", kw.get("json", kw.get("params")))
    try:
        response = api.http.request(method, path, timeout=120, **kw)
    except httpx.TransportError as exc:
        # The server dropped the connection: as bad as a 500, and worth seeing.
        ledger.requests += 1
        ledger.server_errors.append(
            f"{method} {path} -> no answer ({exc!r})\n  body: {_short(body)}"
        )
        return
    ledger.record(method, path, body, response)


def _errors_since(ledger: Ledger, start: int) -> str:
    return "\n".join(ledger.server_errors[start:][:20])


# -- generated from the schema --------------------------------------------------------------


def _operations(api: RunningApi) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if f"{operation.method.upper()} {operation.path}" not in SKIPPED_OPERATIONS:
            operations.append(operation)
    return operations


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_never_get_a_5xx(
    api: RunningApi, ledger: Ledger, mode: GenerationMode
) -> None:
    start = len(ledger.server_errors)
    operations = _operations(api)
    assert len(operations) > 15, [o.path for o in operations]
    for operation in operations:
        strategy = operation.as_strategy(generation_mode=mode)

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            kwargs = case.as_transport_kwargs(base_url=api.url)
            response = api.http.request(
                kwargs["method"],
                kwargs["url"],
                params=kwargs.get("params"),
                headers={k: str(v) for k, v in (kwargs.get("headers") or {}).items()},
                content=_body_bytes(kwargs),
                timeout=120,
            )
            ledger.record(kwargs["method"], case.operation.path, kwargs.get("json"), response)

        try:
            run()
        except Unsatisfiable:
            # Nothing outside the schema to generate (e.g. no parameters at all).
            assert mode is GenerationMode.NEGATIVE, operation.path
    assert len(ledger.server_errors) == start, _errors_since(ledger, start)


def _body_bytes(kwargs: dict[str, Any]) -> bytes | None:
    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data")
    if isinstance(data, str):
        return data.encode()
    return data


# -- hand-made hostile values ----------------------------------------------------------------

BIG = "1" + "0" * 40  # far beyond 64 bits
RAW_NUMBERS = ["NaN", "Infinity", "-Infinity", BIG, f"-{BIG}", "1e400", "9223372036854775808"]


def _deep_filter(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"memory_type": "WorkingMemory"}
    for _ in range(depth):
        node = {"or": [node, {"memory_type": "LongTermMemory"}]}
    return node


def _hostile_bodies() -> list[tuple[str, str]]:
    """(path, raw JSON text) pairs: values JSON can carry but the schema cannot exclude."""
    cases: list[tuple[str, str]] = []
    for number in RAW_NUMBERS:
        filt = f'{{"created_at": {{"gt": {number}}}}}'
        for path, head in (
            ("/product/search", '"query": "cats", "top_k": 5'),
            ("/product/get_memory", '"page": 1'),
            ("/product/delete_memory", '"memory_ids": []'),
        ):
            cases.append((path, f'{{"user_id": "fuzz-a", {head}, "filter": {filt}}}'))
        cases.append(
            (
                "/product/add",
                '{"user_id": "fuzz-a", "async_mode": "sync", "messages": '
                f'[{{"role": "user", "content": "numbers {number}"}}], "info": {{"n": {number}}}}}',
            )
        )
        cases.append(
            ("/product/search", f'{{"user_id": "fuzz-a", "query": "x", "top_k": {number}}}')
        )
    for stamp in ("0001-01-01T00:00:00", "9999-12-31T23:59:59", "-99999-01-01", "2026-13-45"):
        cases.append(
            (
                "/product/get_memory",
                json.dumps({"user_id": "fuzz-a", "filter": {"created_at": {"gt": stamp}}}),
            )
        )
    for depth in (9, 20, 60):
        for path in ("/product/search", "/product/get_memory", "/product/delete_memory"):
            body: dict[str, Any] = {"user_id": "fuzz-a", "filter": _deep_filter(depth)}
            if path == "/product/search":
                body["query"] = "cats"
            if path == "/product/delete_memory":
                body["memory_ids"] = []
            cases.append((path, json.dumps(body)))
    wide = {"or": [{"key": f"k{i}"} for i in range(2000)]}
    cases.append(
        ("/product/search", json.dumps({"user_id": "fuzz-a", "query": "x", "filter": wide}))
    )
    return cases


def test_hostile_values_get_a_4xx_or_a_bounded_answer(api: RunningApi, ledger: Ledger) -> None:
    start = len(ledger.server_errors)
    for path, text in _hostile_bodies():
        _send(api, ledger, "POST", path, content=text, headers={"content-type": "application/json"})
    assert len(ledger.server_errors) == start, _errors_since(ledger, start)


UNICODE_IDS = ["ü-ser", "用户", "a b", "../etc/passwd", "x" * 300, "\u202eevil", "nul\u0000id", ""]


def test_unicode_and_odd_ids(api: RunningApi, ledger: Ledger) -> None:
    start = len(ledger.server_errors)
    for user_id in UNICODE_IDS:
        add = {
            "user_id": user_id,
            "async_mode": "sync",
            "messages": [{"role": "user", "content": f"I am {user_id!r}"}],
        }
        _send(api, ledger, "POST", "/product/add", json=add)
        _send(api, ledger, "POST", "/product/search", json={"user_id": user_id, "query": "who"})
        _send(api, ledger, "POST", "/product/create_cube", json={"user_id": user_id})
        _send(api, ledger, "GET", f"/product/get_memory/{quote(user_id, safe='')}")
    assert len(ledger.server_errors) == start, _errors_since(ledger, start)


def test_huge_and_binary_strings(api: RunningApi, ledger: Ledger) -> None:
    start = len(ledger.server_errors)
    rng = random.Random(7)
    binary = bytes(rng.randrange(256) for _ in range(4096)).decode("latin-1")
    for text in (
        "q" * 5_000_000,
        binary,
        "\ud800".encode("utf-8", "surrogatepass").decode("latin-1"),
    ):
        _send(api, ledger, "POST", "/product/search", json={"user_id": "fuzz-b", "query": text})
        _send(
            api,
            ledger,
            "POST",
            "/product/add",
            json={
                "user_id": "fuzz-b",
                "async_mode": "sync",
                "messages": [{"role": "user", "content": text}],
            },
        )
    # Bytes that are not UTF-8 at all, as a body.
    _send(
        api,
        ledger,
        "POST",
        "/product/add",
        content=b'{"user_id": "fuzz-b", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        headers={"content-type": "application/json"},
    )
    assert len(ledger.server_errors) == start, _errors_since(ledger, start)


def _pdf(text: str) -> bytes:
    """A small valid PDF made with pypdf (a blank page carrying `text` as its content)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(width=300, height=300)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
    )
    stream = DecodedStreamObject()
    stream.set_data(f"BT /F1 12 Tf 20 200 Td ({text}) Tj ET".encode())
    page[NameObject("/Contents")] = writer._add_object(stream)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _mutations(data: bytes, count: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(count):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 12)):
            kind = rng.random()
            pos = rng.randrange(len(buf))
            if kind < 0.5:
                buf[pos] = rng.randrange(256)
            elif kind < 0.75:
                del buf[pos : pos + rng.randint(1, 64)]
            else:
                buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        yield bytes(buf)


def test_mutated_pdfs(api: RunningApi, ledger: Ledger) -> None:
    start = len(ledger.server_errors)
    base = _pdf("Miso the grey cat likes tuna")
    count = max(EXAMPLES * 5, 40)
    for n, data in enumerate(_mutations(base, count, seed=11)):
        part = {
            "type": "file",
            "file": {
                "filename": f"m{n}.pdf",
                "file_data": "data:application/pdf;base64," + base64.b64encode(data).decode(),
            },
        }
        add = {
            "user_id": "fuzz-pdf",
            "async_mode": "sync",
            "messages": [{"role": "user", "content": [part]}],
        }
        _send(api, ledger, "POST", "/product/add", json=add)
    assert len(ledger.server_errors) == start, _errors_since(ledger, start)


def test_stores_hold_only_acknowledged_memories(api: RunningApi, ledger: Ledger) -> None:
    """Runs last in this module: nothing refused left a trace, and the stores agree."""
    assert ledger.requests > 0
    service = api.stack.service
    stray: dict[str, list[str]] = {}
    for cube_id in service.graph.cube_ids():
        graph_ids = set(service.graph.find_ids(cube_id))
        vector_ids = set(service.vectors.scan(cube_id).ids)
        unacknowledged = sorted((graph_ids | vector_ids) - ledger.acknowledged)
        if unacknowledged:
            stray[cube_id] = unacknowledged[:5]
        assert vector_ids <= graph_ids, (cube_id, sorted(vector_ids - graph_ids)[:5])
    assert not stray, stray
