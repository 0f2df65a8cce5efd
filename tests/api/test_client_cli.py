"""The Python clients (sync and async, the same checks) and the `memos-ray` command against
the real API over HTTP; the client's retries against a real server that answers 503 / 429
first; and the client importing nothing of the server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Response

from memos_ray.cli import main
from memos_ray.client import (
    AsyncMemosClient,
    Backoff,
    BadRequestError,
    MemosClient,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)
from memos_ray.client.calls import parse_retry_after
from tests.fixtures.api import RunningApi
from tests.fixtures.servers import serve_in_thread

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sync", "async"])
def client(request: pytest.FixtureRequest, open_api: RunningApi) -> Any:
    if request.param == "sync":
        with MemosClient(open_api.url) as sync_client:
            yield sync_client
    else:
        # One event loop per call (asyncio.run): a fresh client per call keeps its
        # connections on that loop.
        yield _PerCall(open_api.url)


class _PerCall:
    def __init__(self, url: str) -> None:
        self.url = url

    def __getattr__(self, name: str) -> Callable[..., Any]:
        async def call(*a: Any, **kw: Any) -> Any:
            async with AsyncMemosClient(self.url) as async_client:
                return await getattr(async_client, name)(*a, **kw)

        return lambda *a, **kw: asyncio.run(call(*a, **kw))


def test_client_round_trip(client: Any) -> None:
    user = f"client-{uuid.uuid4().hex[:6]}"
    assert client.health().status == "healthy"
    added = client.add(
        user, [{"role": "user", "content": "My locker number is 418.", "message_id": "c-1"}]
    )
    memory_id = added[0].memory_id
    found = client.search(user, "what is my locker number")
    assert found.text_mem[0].memories[0]["id"] == memory_id
    assert found.texts() == ["user: My locker number is 418."]
    assert client.get_memory_by_id(memory_id).id == memory_id
    assert [m.id for m in client.get_memory_by_ids([memory_id])] == [memory_id]
    assert client.get_memory(user).text_mem[0].total_nodes == 1
    updated = client.update_memory(user, memory_id, "user: My locker number is 419.")
    assert updated.metadata["history"][-1]["memory"] == "user: My locker number is 418."
    assert client.delete_memory(user, memory_ids=[memory_id]).deleted_count == 1
    with pytest.raises(NotFoundError):
        client.get_memory_by_id(memory_id)
    with pytest.raises(NotFoundError, match="unknown cube"):
        client.search(user, "x", cube_ids=["missing-cube"])
    with pytest.raises(BadRequestError):
        client.add(user, [])
    with pytest.raises(PayloadTooLargeError):
        client.add(user, "y" * 1_000_001)


class Flaky:
    """A real server whose /health answers `status` (with Retry-After) the next `failures`
    times it is asked, then 200; `seen` keeps when each request came."""

    def __init__(self, status: int, retry_after: str) -> None:
        self.failures = 0
        self.seen: list[float] = []
        self.app = FastAPI()

        @self.app.get("/health")
        def health() -> Response:
            self.seen.append(time.monotonic())
            if self.failures > 0:
                self.failures -= 1
                body = json.dumps({"code": status, "message": "busy", "data": None})
                headers = {"Retry-After": retry_after}
                return Response(body, status, headers, media_type="application/json")
            return Response(json.dumps({"status": "healthy"}), media_type="application/json")

    def arm(self, failures: int) -> None:
        self.failures, self.seen[:] = failures, []


@pytest.mark.parametrize("status", [503, 429])
def test_retries_honour_retry_after(status: int) -> None:
    flaky = Flaky(status, retry_after="1")
    with serve_in_thread(flaky.app) as url:
        flaky.arm(2)
        with MemosClient(url, backoff=Backoff(retries=3, base_s=0.01)) as sync_client:
            assert sync_client.health().status == "healthy"
        gaps = [b - a for a, b in zip(flaky.seen, flaky.seen[1:], strict=False)]
        assert len(flaky.seen) == 3 and min(gaps) >= 0.9, gaps
        flaky.arm(2)

        async def run() -> str:
            async with AsyncMemosClient(url, backoff=Backoff(retries=3, base_s=0.01)) as c:
                return str((await c.health()).status)

        assert asyncio.run(run()) == "healthy" and len(flaky.seen) == 3


def test_retries_give_up_with_the_services_error() -> None:
    flaky = Flaky(503, retry_after="0")
    with serve_in_thread(flaky.app) as url:
        flaky.arm(100)
        with (
            MemosClient(url, backoff=Backoff(retries=2, base_s=0.01)) as sync_client,
            pytest.raises(ServiceUnavailableError, match="busy"),
        ):
            sync_client.health()
        assert len(flaky.seen) == 3


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def _closure(*roots: str) -> set[str]:
    """The distributions `roots` need, by their declared requirements (no extras)."""
    wanted, todo = set(), list(roots)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in wanted:
            continue
        wanted.add(name)
        for requirement in metadata.requires(name) or []:
            if "extra ==" in requirement:
                continue
            base = requirement.split(";")[0].strip()
            for stop in "<>=!~[ (":
                base = base.split(stop)[0]
            if base and not ("python_version" in requirement and sys.version_info >= (3, 11)):
                todo.append(base)
    return wanted


def test_the_client_imports_in_a_virtualenv_with_only_its_dependencies(tmp_path: Path) -> None:
    """A virtualenv holding only httpx, pydantic and what they need (their files copied from
    this one), and memos_ray's source: `import memos_ray.client` works and loads nothing of
    the server."""
    venv = tmp_path / "client-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    for name in sorted(_closure("httpx", "pydantic")):
        dist = metadata.distribution(name)
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            if source.is_file() and ".." not in file.parts:
                target = site / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    probe = (
        "import sys, memos_ray.client as c; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'ray', 'fastapi', 'starlette', 'numpy', 'sqlalchemy', 'mcp') "
        "or (m.startswith('memos_ray.') and not m.startswith('memos_ray.client'))); "
        "print(c.MemosClient.__name__, c.AsyncMemosClient.__name__, bad)"
    )
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["MemosClient", "AsyncMemosClient", "[]"]


def test_cli_add_search_get_list_delete(
    open_api: RunningApi, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    user, url = f"cli-{uuid.uuid4().hex[:6]}", open_api.url
    assert main(["add", "--url", url, "--user", user, "I", "collect", "stamps"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert main(["search", "--url", url, "--user", user, "what", "do", "I", "collect"]) == 0
    found = json.loads(capsys.readouterr().out)
    memory_id = added[0]["memory_id"]
    assert found["text_mem"][0]["memories"][0]["id"] == memory_id
    assert main(["search", "--url", url, "--user", user, "--cube", "nope", "x"]) == 1
    assert "unknown cube" in capsys.readouterr().err

    assert main(["get", "--url", url, memory_id]) == 0
    assert json.loads(capsys.readouterr().out)["memory"] == "user: I collect stamps"
    lines = tmp_path / "messages.jsonl"
    lines.write_text(
        "\n".join(json.dumps({"role": "user", "content": f"Fact number {i}."}) for i in range(7))
    )
    bulk = ["add", "--url", url, "--user", user, "--from-file", str(lines), "--batch", "3"]
    assert main(bulk) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == {"messages": 7, "memories": 7}
    assert "7/7 messages" in out.err and "3/7 messages" in out.err
    assert main(["list", "--url", url, "--user", user, "--page-size", "100"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 8 and any(line.startswith(memory_id) for line in listed)
    assert main(["delete", "--url", url, "--user", user, memory_id]) == 0
    assert json.loads(capsys.readouterr().out)["deleted_count"] == 1
    assert main(["get", "--url", url, memory_id]) == 1
    assert "not found" in capsys.readouterr().err
    lines.write_text('{"role": "user", "content": "ok"}\nnot json\n')
    with pytest.raises(SystemExit, match="line 2: not JSON"):
        main(bulk)


def test_cli_serve_refuses_an_open_non_loopback_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MEMOS_ADMIN_KEY", raising=False)
    monkeypatch.setenv("MEMOS_DATA_DIR", str(tmp_path))  # restored after; serve sets it
    assert main(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)]) == 2
    assert "refusing to serve" in capsys.readouterr().err
