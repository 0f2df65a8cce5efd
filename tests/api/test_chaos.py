"""The short chaos run: `memos-ray bench chaos` in its own process (its own Ray cluster and
embedded stores), every component killed once under a mixed load, then the stores checked.

`mem_read` is a recording stand-in (tests/fixtures/task_handlers.py:counted_record), so the
run needs no LLM and every run of a task is counted; the full bench uses the real model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from memos_ray.bench.chaos import COMPONENTS, failures
from memos_ray.config import MemosConfig
from memos_ray.runtime.compose import build_tenancy_store
from memos_ray.stores.sql.tasks import SQLTaskStore

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.ray


def test_every_component_killed_once_under_load_loses_nothing(tmp_path: Path) -> None:
    overrides = tmp_path / "chaos.yaml"
    overrides.write_text(
        yaml.safe_dump(
            {
                # Fine reads are queued (a chat backend is configured) but the recording
                # stand-in runs them, so nobody calls this endpoint.
                "llm": {
                    "backend": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "model": "nobody-calls-it",
                },
                "scheduler": {
                    "handlers": {"mem_read": "tests.fixtures.task_handlers:counted_record"}
                },
            }
        )
    )
    data_dir = tmp_path / "data"
    out = tmp_path / "chaos.json"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)  # its own cluster: it kills parts of it
    args = ["bench", "chaos", "--config", str(overrides), "--data-dir", str(data_dir)]
    args += ["--workers", "3", "--warmup", "2", "--between", "1", "--tail", "2", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "memos_ray.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert not failures(figures), (failures(figures), run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-3000:]
    assert [k["component"] for k in figures["kills"]] == list(COMPONENTS)
    assert figures["acknowledged_adds"] > 20 and figures["acknowledged_deletes"] > 0
    assert figures["tasks_acknowledged"] > 0 and figures["tasks_failed"] == 0
    # Every task ran to the end; one that ran more than once was in progress when a kill
    # took its actor (its attempts say so), and its effect was applied once.
    config = MemosConfig(data_dir=data_dir).resolved()
    tasks = {
        t.task_id: t for t in SQLTaskStore(build_tenancy_store(config).engine).find(limit=100_000)
    }
    runs = Counter((data_dir / "runs.log").read_text().split())
    for task_id, count in runs.items():
        assert count <= tasks[task_id].attempts, (task_id, count, tasks[task_id])
    applied = [
        line.split()[0]
        for log in data_dir.glob("applied-*.log")
        for line in log.read_text().splitlines()
    ]
    assert Counter(applied) == Counter({t: 1 for t in runs}), "a task applied twice or never"
