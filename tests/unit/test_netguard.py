"""Closed-by-default checks that need no running service: loopback hosts, and Ray refused on
a reachable address without token auth (before anything starts)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memos_ray.errors import ConfigError
from memos_ray.runtime.netguard import is_loopback, start_local_ray


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.2", False),
        ("memos.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposed_ray_without_token_auth_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    before = ray.is_initialized()  # the session's cluster may be up already
    with pytest.raises(ConfigError, match="needs token authentication"):
        start_local_ray("0.0.0.0", include_dashboard=False)
    assert ray.is_initialized() == before  # refused before anything started


@pytest.mark.ray
def test_a_job_driver_joins_a_loopback_cluster(ray_cluster: None) -> None:
    """A job started from a shell (`--address 127.0.0.1:<port>`, without the variable the
    cluster's own processes inherit) joins the loopback-bound cluster and runs a task."""
    import ray

    gcs = ray.get_runtime_context().gcs_address
    assert is_loopback(gcs.rsplit(":", 1)[0]), gcs
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    code = (
        "import ray\n"
        "from memos_ray.runtime.netguard import connect_or_start_ray\n"
        f"assert not connect_or_start_ray({gcs!r}, log_to_driver=False)\n"
        "print(ray.get(ray.remote(lambda: 'joined').remote()), ray.util.get_node_ip_address())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["joined", "127.0.0.1"], done.stdout
