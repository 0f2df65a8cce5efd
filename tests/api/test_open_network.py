"""`serve run configs/production.yaml` (HTTP host 0.0.0.0) without MEMOS_ADMIN_KEY: Serve's
controller builds the app from the config and the build fails, saying why; nothing is
deployed. The same config with the key set deploys past the check."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fixtures.servers import free_port

pytestmark = pytest.mark.ray


def _app_status(name: str, timeout_s: float = 120) -> tuple[str, str]:
    """The application's status once it has left DEPLOYING (or at the timeout), and message."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(name)
        status = str(getattr(app.status, "value", app.status)) if app else ""
        if status not in ("", "DEPLOYING", "NOT_STARTED") or time.monotonic() > deadline:
            return status, app.message if app else ""
        time.sleep(0.5)


def test_an_open_serve_config_without_admin_key_fails_at_build(
    ray_cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    monkeypatch.delenv("MEMOS_ADMIN_KEY", raising=False)
    config = {
        "http_options": {"host": "0.0.0.0", "port": free_port()},
        "applications": [
            {
                "name": "memos-open",
                "route_prefix": "/",
                "import_path": "deployments.app:build_memos_app",
                "args": {"config": {"data_dir": str(tmp_path), "llm": {"backend": "none"}}},
            }
        ],
    }
    schema = ServeDeploySchema.model_validate(config)
    # What `serve run <config>` does: start Serve with the file's HTTP options, then hand the
    # config to the controller, whose build task calls the builder.
    client = serve_start(http_options=schema.http_options.model_dump())
    try:
        client.deploy_apps(schema, _blocking=False)
        status, message = _app_status("memos-open")
        assert status == "DEPLOY_FAILED", (status, message)
        assert "refusing to serve on 0.0.0.0 without MEMOS_ADMIN_KEY" in message
        assert not serve.status().applications["memos-open"].deployments
    finally:
        serve.shutdown()
