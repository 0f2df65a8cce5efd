"""The whole service (`memos-ray serve`: its own Ray cluster, Serve, embedded stores) stopped
with Ctrl-C (SIGINT to its process group, as a terminal sends it) while async adds are still
queued, then started again at once on the same data dir and port: it starts (no
NoAvailablePortError), its API replica, killed, comes back on the same port, and every task
completes after the restart, once, in the order it was accepted. While the first one runs,
nothing of it answers on the machine's other addresses: every TCP listener of its process
tree is bound to loopback.

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
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from memos_ray.config import MemosConfig
from memos_ray.embedded.falkordb_server import free_port
from memos_ray.runtime.compose import build_tenancy_store
from memos_ray.stores.sql.tasks import SQLTaskStore
from tests.fixtures.listeners import Listener, answers, external_addresses, session_listeners

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Running:
    url: str
    proc: subprocess.Popen[bytes]


@contextmanager
def _service(
    config_file: Path, data_dir: Path, port: int, log: Path, *, ctrl_c: bool = False
) -> Iterator[Running]:
    """`memos-ray serve` in its own session; stopped with SIGTERM, or with `ctrl_c` the way a
    terminal does it: SIGINT to its whole process group."""
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
        yield Running(url, proc)
    finally:
        if ctrl_c:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"it did not stop:\n{log.read_text()[-3000:]}") from exc
        assert "memos-ray: stopping" in log.read_text(), log.read_text()[-3000:]


def _config_file(path: Path) -> Path:
    config = {
        "llm": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "nobody"},
        "preference": {"backend": "none"},
        "scheduler": {"handlers": {"mem_read": "tests.fixtures.task_handlers:slow_read"}},
    }
    path.write_text(
        yaml.safe_dump({"applications": [{"name": "memos", "args": {"config": config}}]})
    )
    return path


@dataclass
class FirstRun:
    config_file: Path
    data_dir: Path
    port: int
    accepted: list[str]
    listeners: list[Listener]
    external: list[str]
    # (address, port) pairs that accepted a connection on a non-loopback address.
    answered: list[tuple[str, int]]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    """The first service: 12 async adds queued, its listeners taken, then Ctrl-C."""
    tmp_path = tmp_path_factory.mktemp("restart")
    data_dir = tmp_path / "data"
    config_file = _config_file(tmp_path / "serve.yaml")
    port = free_port("127.0.0.1")
    accepted: list[str] = []
    first = _service(config_file, data_dir, port, tmp_path / "first.log", ctrl_c=True)
    with first as running, httpx.Client(base_url=running.url) as http:
        for n in range(12):
            response = http.post(
                "/product/add",
                json={"user_id": "restart", "messages": f"note {n} before the restart"},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            accepted.append(response.json()["data"][0]["task_id"])
        # Everything is up by now: Ray, Serve's proxy and replicas, the scheduler, the stores.
        listeners = session_listeners(running.proc.pid)
        external = external_addresses()
        answered = [(ip, lsn.port) for lsn in listeners for ip in external if answers(ip, lsn.port)]
    return FirstRun(config_file, data_dir, port, accepted, listeners, external, answered)


def test_nothing_of_the_service_answers_beyond_loopback(first_run: FirstRun) -> None:
    """Ray (GCS, raylet, object manager, workers, dashboard and its agent), Serve and the
    embedded stores (FalkorDB, Milvus Lite) of a default `memos-ray serve` listen on
    loopback only, and nothing answers on the machine's other addresses."""
    listeners = first_run.listeners
    assert len(listeners) >= 5, listeners  # GCS, raylet, workers, agents, the API ...
    assert first_run.port in {lsn.port for lsn in listeners}
    assert any("falkordb" in lsn.cmdline.lower() for lsn in listeners), listeners
    assert [lsn for lsn in listeners if not lsn.loopback] == []
    assert first_run.answered == [], (first_run.answered, first_run.external)


def _kill_api_replica(sid: int) -> None:
    replicas = [
        proc
        for proc in psutil.process_iter(["name"])
        if "ServeReplica:memos:MemosIngress" in (proc.info["name"] or "")
        and _session(proc.pid) == sid
    ]
    assert len(replicas) == 1, replicas
    replicas[0].kill()
    replicas[0].wait(timeout=30)


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


def _wait_healthy(http: httpx.Client, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    time.sleep(1)
    while True:
        try:
            if http.get("/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the API replica did not come back"
        time.sleep(0.5)


def test_tasks_queued_when_the_service_stops_complete_after_it_starts_again(
    first_run: FirstRun, tmp_path: Path
) -> None:
    # Stopped (Ray and every actor with it) while the 1 s tasks were still queued.
    config = MemosConfig(data_dir=first_run.data_dir).resolved()
    tasks = SQLTaskStore(build_tenancy_store(config).engine)
    assert tasks.pending("restart") > 0, "every task finished before the stop"
    # At once, on the port the first one held.
    second = _service(first_run.config_file, first_run.data_dir, first_run.port, tmp_path / "log")
    with second as running, httpx.Client(base_url=running.url) as http:
        # A crashed API replica comes back on the same port at once (a released port used to
        # wait out a 150 s quarantine: NoAvailablePortError until then).
        _kill_api_replica(running.proc.pid)
        _wait_healthy(http, timeout_s=90)
        waited = http.post(
            "/product/scheduler/wait",
            json={"user_name": "restart", "user_id": "restart", "timeout_seconds": 120},
            timeout=180,
        ).json()["data"]
        assert waited["pending"] == 0 and not waited["timed_out"], waited
    done = tasks.find(cube_id="restart")
    assert [t.task_id for t in done] == first_run.accepted
    assert {t.state for t in done} == {"completed"}
    applied = (first_run.data_dir / "applied-restart.log").read_text().split("\n")
    assert [line.split()[0] for line in applied if line] == first_run.accepted  # once each


pytestmark = pytest.mark.ray
