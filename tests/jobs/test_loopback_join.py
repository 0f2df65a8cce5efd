"""A job driver started from a shell joins the loopback-bound cluster (needs Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memos_ray.runtime.netguard import is_loopback


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
