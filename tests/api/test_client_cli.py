"""The Python client and the `memos-ray` command against the real API over HTTP."""

from __future__ import annotations

import json
import uuid

import pytest

from memos_ray.cli import main
from memos_ray.client import MemosClient
from memos_ray.errors import BadRequestError, NotFoundError, PayloadTooLargeError
from tests.fixtures.api import RunningApi


def test_client_round_trip(open_api: RunningApi) -> None:
    user = f"client-{uuid.uuid4().hex[:6]}"
    with MemosClient(open_api.url) as client:
        assert client.health()["status"] == "healthy"
        added = client.add(
            user,
            [{"role": "user", "content": "My locker number is 418.", "message_id": "c-1"}],
        )
        memory_id = added[0]["memory_id"]
        found = client.search(user, "what is my locker number")
        assert found["text_mem"][0]["memories"][0]["id"] == memory_id
        assert client.get_memory_by_id(memory_id)["id"] == memory_id
        assert client.get_memory(user)["text_mem"][0]["total_nodes"] == 1
        assert client.delete_memory(user, memory_ids=[memory_id])["deleted_count"] == 1
        with pytest.raises(NotFoundError):
            client.get_memory_by_id(memory_id)
        with pytest.raises(NotFoundError, match="unknown cube"):
            client.search(user, "x", cube_ids=["missing-cube"])
        with pytest.raises(BadRequestError):
            client.add(user, [])
        with pytest.raises(PayloadTooLargeError):
            client.add(user, "y" * 1_000_001)


def test_cli_add_and_search(open_api: RunningApi, capsys: pytest.CaptureFixture[str]) -> None:
    user = f"cli-{uuid.uuid4().hex[:6]}"
    assert main(["add", "--url", open_api.url, "--user", user, "I", "collect", "stamps"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert (
        main(["search", "--url", open_api.url, "--user", user, "what", "do", "I", "collect"]) == 0
    )
    found = json.loads(capsys.readouterr().out)
    assert found["text_mem"][0]["memories"][0]["id"] == added[0]["memory_id"]
    assert main(["search", "--url", open_api.url, "--user", user, "--cube", "nope", "x"]) == 1
    assert "unknown cube" in capsys.readouterr().err


def test_cli_serve_refuses_an_open_non_loopback_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MEMOS_ADMIN_KEY", raising=False)
    monkeypatch.setenv("MEMOS_DATA_DIR", str(tmp_path))  # restored after; serve sets it
    assert main(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)]) == 2
    assert "refusing to serve" in capsys.readouterr().err
