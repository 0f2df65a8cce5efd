"""Request ids over real HTTP: each answer names its request, the caller's own id is kept
(a sane one), error envelopes carry it, and the log lines written for that request carry
it too; the JSON log format writes it as a field."""

from __future__ import annotations

import io
import json
import logging

import pytest

from memos_ray.logs import REQUEST_ID, configure
from tests.fixtures.api import ADMIN_KEY, RunningApi


def test_every_answer_names_its_request(auth_api: RunningApi) -> None:
    first = auth_api.http.get("/health")
    second = auth_api.http.get("/health")
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(len(i) == 32 for i in ids) and ids[0] != ids[1]
    mine = auth_api.http.get("/health", headers={"X-Request-Id": "trace-42.a:b"})
    assert mine.headers["x-request-id"] == "trace-42.a:b"
    hostile = auth_api.http.get("/health", headers={"X-Request-Id": "x" * 200})
    assert hostile.headers["x-request-id"] != "x" * 200


def test_errors_and_log_lines_carry_the_id(
    auth_api: RunningApi, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"X-Request-Id": "req-401-check"}
    refused = auth_api.http.post("/product/search", json={}, headers=headers)
    assert refused.status_code == 401
    assert refused.json()["request_id"] == "req-401-check"

    caplog.set_level(logging.INFO, logger="memos_ray.api")
    made = auth_api.http.post(
        "/admin/keys",
        json={"user_id": "logged-user"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "X-Request-Id": "req-key-made"},
    )
    assert made.status_code == 200, made.text
    lines = [r for r in caplog.records if "created for" in r.getMessage()]
    assert [getattr(r, "memos_request_id", None) for r in lines] == ["req-key-made"]


def test_json_log_lines() -> None:
    logger = logging.getLogger("memos_ray.test_logs")
    handler = configure("json", "INFO")
    stream = io.StringIO()
    handler.setStream(stream)
    try:
        token = REQUEST_ID.set("req-json")
        try:
            logger.info("stored %d memories", 3)
        finally:
            REQUEST_ID.reset(token)
        logger.warning("outside any request")
    finally:
        root = logging.getLogger("memos_ray")
        root.removeHandler(handler)
        root.propagate = True
        root.setLevel(logging.NOTSET)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "stored 3 memories" and first["request_id"] == "req-json"
    assert first["logger"] == "memos_ray.test_logs" and first["level"] == "INFO"
    assert second["request_id"] is None and second["level"] == "WARNING"
