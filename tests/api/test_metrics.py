"""The metrics the dashboard queries exist, as Prometheus scrapes them from Ray, with bounded
labels; the dashboard is a well-formed Grafana dashboard.

The memos_* metrics are recorded by the real code paths in this (driver) process, which the
session's Ray cluster exports like any worker's, and read back from the node's metrics
endpoint. The ray_serve_* ones need a Serve app: here they are checked against the names
Ray 2.60 defines (ray/serve/_private/request_ingress_metrics.py, replica.py,
deployment_state.py); tests/api/test_serve_app.py scrapes them from a running app.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from memos_ray import metrics
from memos_ray.config import MemosConfig
from memos_ray.embedded.supervisor import Supervisor
from memos_ray.errors import StoreError
from memos_ray.scheduler.actor import CubeScheduler, SchedulerMetrics
from memos_ray.scheduler.context import HandlerContext
from memos_ray.stores.sql.sqlalchemy import SQLTenancyStore
from memos_ray.stores.sql.tasks import SQLTaskStore
from tests.fixtures.api import RunningApi
from tests.fixtures.metrics import (
    DASHBOARD,
    Series,
    dashboard_metrics,
    metric_names,
    scrape_until,
)

pytestmark = pytest.mark.ray

# Ray Serve 2.60's metric names as Prometheus sees them (counters end in _total).
SERVE_METRICS = {
    "ray_serve_num_http_requests_total",
    "ray_serve_num_http_error_requests_total",
    "ray_serve_http_request_latency_ms_bucket",
    "ray_serve_num_ongoing_http_requests",
    "ray_serve_deployment_replica_healthy",
    "ray_serve_deployment_request_counter_total",
    "ray_serve_deployment_processing_latency_ms_bucket",
}
# Labels Ray puts on every application metric.
RAY_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "le"}
WATCHED = "watched-cube"
SECRET_CUBE = "cube-0f3a9c-secret"


def test_dashboard_is_a_grafana_dashboard() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] and board["uid"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in board["panels"] if p["type"] != "row"]
    assert len(graphs) >= 10
    for panel in graphs:
        assert panel["title"] and set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert metric_names(target["expr"]), target["expr"]
    assert metric_names(
        'histogram_quantile(0.95, sum by (le, route) (rate(ray_x_bucket{a="b"}[5m])))'
    ) == {"ray_x_bucket"}
    # Every name is one we define or one Ray Serve exports, under its exported spelling.
    ours = set().union(*(m.spec.exported() for m in metrics.ALL))
    names = dashboard_metrics()
    assert names <= ours | SERVE_METRICS, names - ours - SERVE_METRICS
    assert {m.spec.name for m in metrics.ALL} <= {
        n.removeprefix("ray_").removesuffix(s)
        for n in names
        for s in ("_total", "_bucket", "_sum", "_count", "")
    }, "every metric has a panel"


def test_metrics_are_no_ops_outside_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    metric = metrics.Metric(metrics.Spec("memos_test_unused", "counter", "", ("a",)))
    metric.inc(a="x")
    assert metric._impl is None
    assert metrics.bounded("Milvus Lite") == "milvus_lite"
    assert metrics.bounded("prepare collection 'c1'") == "other"
    assert metrics.bounded("/product/cubes/abc") == "other"
    assert metrics.bounded("chat", metrics.PURPOSES) == "chat"
    assert metrics.bounded("user-42", metrics.PURPOSES) == "other"


class _Flaky:
    """A server that dies once after starting: the supervisor brings it back."""

    def __init__(self) -> None:
        self.starts = 0
        self.up = False

    def start(self) -> None:
        self.starts += 1
        self.up = True
        if self.starts == 1:
            threading.Timer(0.05, lambda: setattr(self, "up", False)).start()

    def stop(self) -> None:
        self.up = False

    def is_running(self) -> bool:
        return self.up


def _exercise_scheduler_and_stores(tmp_path: Path) -> None:
    """The scheduler core, a store failure and a server restart, as the actors run them."""
    engine = create_engine(f"sqlite:///{tmp_path / 'tasks.db'}")
    tasks = SQLTaskStore(engine)
    handlers: dict[str, Any] = {"metrics_probe": lambda task, context: {"ok": True}}
    config = MemosConfig(data_dir=tmp_path, metrics={"watch_cubes": [WATCHED]})
    watch = SchedulerMetrics(config.metrics.watch_cubes)
    for cube in (WATCHED, SECRET_CUBE):
        tasks.enqueue(cube, "metrics-user", "metrics_probe", {})
        core = CubeScheduler(cube, tasks, handlers, HandlerContext(config, tasks), metrics=watch)
        assert core.drain() == 1
        watch.queue(cube, tasks.pending(cube))
    metrics.llm_tokens("chat", 12, 3)
    tenancy = SQLTenancyStore(f"sqlite:///{tmp_path / 'tenancy.db'}")
    with tenancy.engine.begin() as conn:
        conn.execute(text("DROP TABLE llm_usage"))
    with pytest.raises(StoreError):
        tenancy.llm_usage(WATCHED)
    server = _Flaky()
    supervisor = Supervisor(server, "Test Store", poll_s=0.02, min_delay_s=0.01)
    deadline = time.monotonic() + 10
    while supervisor.restarts < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    supervisor.stop()
    assert supervisor.restarts == 1
    metrics.EMBEDDER_BATCH.observe(4, call="batched")  # the deployment's: see test_serve_app


def test_dashboard_metrics_are_exported_with_bounded_labels(
    ray_cluster: None, open_api: RunningApi, tmp_path: Path
) -> None:
    user = "metrics-user-7d1e"
    added = open_api.post(
        "/product/add",
        {"user_id": user, "messages": [{"role": "user", "content": "I keep bees."}]},
    )
    assert added.status_code == 200, added.text
    found = open_api.post("/product/search", {"user_id": user, "query": "bees", "mode": "fine"})
    assert found.status_code == 200, found.text
    # Another's cube (refused): its id must not reach any label, only the route template.
    usage = open_api.http.get(f"/product/cubes/{SECRET_CUBE}/llm_usage?user_id={user}")
    assert usage.status_code < 500, usage.text
    _exercise_scheduler_and_stores(tmp_path)

    wanted = {n for n in dashboard_metrics() if n.startswith("ray_memos_")}
    failed_sql = {"store": "sql", "backend": "sqlite", "operation": "transaction"}

    def caused_here(series: Series) -> bool:
        """This test's own series (earlier tests may have exported the same names)."""
        return any(
            n == "ray_memos_store_restarts_total" and labels.get("store") == "test_store"
            for n, labels in series
        ) and any(
            n == "ray_memos_store_errors_total" and failed_sql.items() <= labels.items()
            for n, labels in series
        )

    series = scrape_until(wanted, also=caused_here)

    keys = {m.spec.name: set(m.spec.tag_keys) for m in metrics.ALL}
    ours = [(n, labels) for n, labels in series if n.startswith("ray_memos_")]
    for name, labels in ours:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name).removeprefix("ray_")
        extra = set(labels) - RAY_LABELS - keys[base] - {"otel_scope_name"}
        extra = {k for k in extra if not k.startswith("otel_scope_")}
        assert not extra, (name, extra)
        if "cube" in labels:
            assert labels["cube"] == WATCHED, (name, labels)
        for key, value in labels.items():
            if key not in RAY_LABELS and not key.startswith("otel_"):
                assert SECRET_CUBE not in value and user not in value, (name, labels)
    routes = {labels["route"] for n, labels in ours if "route" in labels}
    assert {"/product/add", "/product/search", "/product/cubes/{cube_id}/llm_usage"} <= routes
    modes = {labels.get("mode") for n, labels in ours if n.startswith("ray_memos_search_")}
    assert "fine" in modes
    written = [labels for n, labels in ours if n == "ray_memos_memories_written_total"]
    assert written and all(labels["memory_type"].endswith("Memory") for labels in written)
    errors = [labels for n, labels in ours if n == "ray_memos_store_errors_total"]
    assert any(failed_sql.items() <= labels.items() for labels in errors), errors
    restarts = [labels for n, labels in ours if n == "ray_memos_store_restarts_total"]
    assert any(r["store"] == "test_store" and r["how"] == "server" for r in restarts)
