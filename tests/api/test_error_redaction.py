"""Error bodies never carry an internal address (a store's bolt:// URI, host:port, the data
dir): the real app's error handlers (in-process ASGI client), and the redaction itself."""

from __future__ import annotations

import logging
import re

import pytest
from fastapi.testclient import TestClient

from memos_ray.api.app import create_app
from memos_ray.api.context import ApiContext
from memos_ray.errors import MemosError, NotFoundError, ServiceUnavailableError, StoreError
from memos_ray.runtime.netguard import REDACTED, redact

# What leaked before: the Neo4j/FalkorDB store's message, word for word in its format.
STORE_FAILURE = (
    "graph store search failed (bolt://127.0.0.1:1234): Couldn't connect to 127.0.0.1:1234 "
    "(resolved to ('127.0.0.1:1234',)); data in /var/lib/memos-ray/falkordb/dump.rdb"
)
BODY = {"user_id": "u", "query": "q", "model": "m", "messages": [{"role": "user", "content": "q"}]}
ADDRESS = re.compile(r"://|\d+\.\d+\.\d+\.\d+|:\d{2,5}\b|/home/|redis|bolt")


def _failing(exc: MemosError):  # type: ignore[no-untyped-def]
    def get_context() -> ApiContext:
        raise exc

    return get_context


@pytest.mark.parametrize("path", ["/product/search", "/v1/chat/completions"])
def test_a_store_error_reaches_the_client_without_its_address(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(_failing(StoreError(STORE_FAILURE)))
    with (
        caplog.at_level(logging.ERROR, logger="memos_ray.api"),
        TestClient(app, raise_server_exceptions=False) as http,
    ):
        response = http.post(path, json=BODY)
    assert response.status_code == 500
    body = response.json()
    message = body["message"] if "message" in body else body["error"]["message"]
    assert not ADDRESS.search(message), message
    assert "127.0.0.1" not in response.text and "bolt" not in response.text
    assert "backing store failed" in message
    # The operator still sees what failed and where.
    assert "bolt://127.0.0.1:1234" in caplog.text


def test_a_503_keeps_its_reason_but_not_the_address() -> None:
    app = create_app(
        _failing(ServiceUnavailableError("chat model at http://10.0.0.7:8001/v1 is down"))
    )
    with TestClient(app, raise_server_exceptions=False) as http:
        response = http.post("/product/search", json=BODY)
    assert response.status_code == 503
    assert response.json()["message"] == f"chat model at {REDACTED} is down"


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        ("graph store failed (bolt://127.0.0.1:7687): refused", "graph store failed ("),
        ("redis://:secret@cache.internal:6379/0 timed out", "timed out"),
        ("connect to neo4j.memos.internal:7687 failed", "connect to"),
        ("Milvus at [::1]:19530 and 192.168.1.5 gone", "Milvus at"),
        ("postgresql://memos:pw@db:5432/memos refused", "refused"),
        ("cannot open /var/lib/memos/data/memos.db", "cannot open"),
    ],
)
def test_redact_strips_every_address(message: str, kept: str) -> None:
    cleaned = redact(message)
    assert kept in cleaned and REDACTED in cleaned
    assert not ADDRESS.search(cleaned.replace(REDACTED, "")), cleaned


def test_redact_leaves_ordinary_messages_alone() -> None:
    for message in (
        "invalid request: body.top_k: Input should be greater than 0",
        "cube team-1 not found",
        "request body over 67108864 bytes",
        "at 12:30 the task was cancelled",
    ):
        assert redact(message, paths=False) == message
    assert NotFoundError("cube x not found").message == "cube x not found"


def test_a_failed_tasks_error_is_shown_without_the_address() -> None:
    """/product/scheduler/status shows a failed task's error: the handler's exception text."""
    from memos_ray.api.scheduler_routes import _task_json
    from memos_ray.stores.sql.tasks import Task

    now = "2026-01-01T00:00:00.000000Z"
    task = Task(
        task_id="t1",
        cube_id="c",
        user_id="u",
        label="mem_read",
        payload={},
        state="failed",
        attempts=3,
        max_attempts=3,
        error=f"StoreError: {STORE_FAILURE}",
        seq=1,
        not_before=now,
        created_at=now,
        updated_at=now,
    )
    shown = _task_json(task)
    assert shown["error"].startswith("StoreError: graph store search failed (")
    assert not ADDRESS.search(shown["error"].replace(REDACTED, "")), shown["error"]
