"""The whole service (`memos-ray serve`: its own Ray cluster, Serve, embedded stores) stopped
with async adds still queued, then started again on the same data dir: every task completes
after the restart, once, in the order it was accepted.

`mem_read` is a slow logging stand-in (tests/fixtures/task_handlers.py:slow_read), so no
LLM is needed; the chat backend points at an endpoint nobody calls.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from memos_ray.config import MemosConfig
from memos_ray.stores.local import free_port
from memos_ray.stores.sql.tasks import SQLTaskStore
from memos_ray.wiring import build_tenancy_store

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def _service(config_file: Path, data_dir: Path, port: int, log: Path) -> Iterator[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)  # its own cluster, not the test session's
    args = ["serve", "--config", str(config_file), "--data-dir", str(data_dir)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "memos_ray.cli", *args, "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while "memos-ray is up" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the service did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"SIGTERM did not stop it:\n{log.read_text()[-3000:]}") from exc
        assert "memos-ray: stopping" in log.read_text(), log.read_text()[-3000:]


def test_tasks_queued_when_the_service_stops_complete_after_it_starts_again(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    config_file = tmp_path / "serve.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "applications": [
                    {
                        "name": "memos",
                        "args": {
                            "config": {
                                "llm": {
                                    "backend": "openai",
                                    "base_url": "http://127.0.0.1:9/v1",
                                    "model": "nobody-calls-it",
                                },
                                "preference": {"backend": "none"},
                                "scheduler": {
                                    "handlers": {
                                        "mem_read": "tests.fixtures.task_handlers:slow_read"
                                    }
                                },
                            }
                        },
                    }
                ]
            }
        )
    )
    port = free_port("127.0.0.1")
    accepted: list[str] = []
    first = _service(config_file, data_dir, port, tmp_path / "first.log")
    with first as url, httpx.Client(base_url=url) as http:
        for n in range(12):
            response = http.post(
                "/product/add",
                json={"user_id": "restart", "messages": f"note {n} before the restart"},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            accepted.append(response.json()["data"][0]["task_id"])
    # Stopped (Ray and every actor with it) while the 1 s tasks were still queued.
    config = MemosConfig(data_dir=data_dir).resolved()
    tasks = SQLTaskStore(build_tenancy_store(config).engine)
    assert tasks.pending("restart") > 0, "every task finished before the stop"
    second = _service(config_file, data_dir, port, tmp_path / "second.log")
    with second as url, httpx.Client(base_url=url) as http:
        waited = http.post(
            "/product/scheduler/wait",
            json={"user_name": "restart", "user_id": "restart", "timeout_seconds": 120},
            timeout=180,
        ).json()["data"]
        assert waited["pending"] == 0 and not waited["timed_out"], waited
    done = tasks.find(cube_id="restart")
    assert [t.task_id for t in done] == accepted and {t.state for t in done} == {"completed"}
    applied = (data_dir / "applied-restart.log").read_text().split("\n")
    assert [line.split()[0] for line in applied if line] == accepted  # in order, once each


pytestmark = pytest.mark.ray
