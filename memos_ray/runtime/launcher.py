"""Start the whole app (Ray, Serve, embedded stores) in this process and stop it cleanly."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import httpx
import ray
from ray import serve

from memos_ray.config import MemosConfig
from memos_ray.embedded.falkordb_server import free_port
from memos_ray.errors import ConfigError
from memos_ray.runtime.compose import stop_embedded
from memos_ray.runtime.netguard import LOOPBACK, port_free, require_admin_key, start_local_ray

# Ray Serve settings that trim per-request overhead (a subset of Serve's own
# RAY_SERVE_THROUGHPUT_OPTIMIZED). Left out on purpose: running the router in the caller's loop
# (breaks sync handles), gRPC between deployments (its 4 MiB client message limit refuses a
# bulk add's token vectors) and user code on the replica's event loop (a sync bulk embed then
# blocks the replica; bulk adds were slower). Read when Ray starts its processes, so they are
# set before `ray.init`; export them yourself before `serve run` or `ray start`.
SERVE_ENV: dict[str, str] = {
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}
# How long a start waits for its HTTP port, and a stop for its release.
PORT_WAIT_S = 30.0
# The Serve apps are assembled in the top-level `deployments` package, which builds on this
# library. As `serve run` does with a config's import_path, they are found by name here, so
# the library never imports the deployments (the import contracts check that).
APP_BUILDER = "deployments.app:build_from_config"
LLM_APP_BUILDER = "deployments.app:llm_deployment"


def load_builder(import_path: str) -> Callable[[MemosConfig], Any]:
    """The function at `module:attribute` that builds a Serve app from a config."""
    module, _, attribute = import_path.partition(":")
    builder = getattr(importlib.import_module(module), attribute, None)
    if not callable(builder):
        raise ConfigError(f"{import_path} is not an app builder")
    return cast("Callable[[MemosConfig], Any]", builder)


def wait_ready(url: str, timeout_s: float = 180.0) -> None:
    """Ready means a real request succeeds, not just /health (stores connect lazily)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/health", timeout=5)
            if response.status_code == 200:
                # Reads nothing and creates nothing, but needs the stores connected.
                probe = httpx.post(f"{url}/product/get_memory_by_ids", json=[], timeout=30)
                if probe.status_code in (200, 401):
                    return
                last = probe.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise TimeoutError(f"memos-ray did not become ready at {url}: {last}")


def wait_port_free(host: str, port: int, timeout_s: float) -> bool:
    """True once `port` on `host` can be bound (polls); False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not port_free(host, port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@contextmanager
def local_service(
    config: MemosConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    dashboard: bool = False,
    log_to_driver: bool = False,
    ray_host: str = LOOPBACK,
) -> Iterator[str]:
    """Yield the base URL of a running app; on exit stop Serve, the stores, then Ray.

    With `serving.direct_ingress` and one ingress replica, the replica listens on `port`
    itself and Serve's proxy moves to a spare port (it stays up, unused). Ray's own services
    listen on `ray_host`: loopback unless the caller exposes Ray on purpose (see
    `memos_ray.runtime.netguard.start_local_ray`); `host` is only the HTTP API's.
    """
    require_admin_key(host, config, "memos-ray")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)
    bind_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    # The port must be free now: a direct-ingress replica that cannot bind its one port gets
    # it blocked by Serve, which then fails with NoAvailablePortError instead of saying so.
    # A service stopped a moment ago may still be letting it go.
    if not wait_port_free(host, port, PORT_WAIT_S):
        raise ConfigError(f"port {port} on {host} is in use (another memos-ray still running?)")
    proxy_port = port
    serving = config.serving
    if serving.direct_ingress and serving.ingress_replicas == 1 and not serving.ingress_autoscaling:
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(port)
        os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(port + 1)
        # Serve keeps a stopping direct-ingress replica up for 30 s so that external load
        # balancers notice; a local service has none, and Ctrl-C then took over 30 s.
        # In-flight requests still finish (the deployment's graceful shutdown timeout).
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
        # A released port waits out a quarantine (for HAProxy, which a local service does not
        # run) before another replica may take it: with one port in the range, a replica
        # restarted after a crash would find none (NoAvailablePortError) for minutes.
        os.environ.setdefault("RAY_SERVE_PORT_QUARANTINE_S", "0")
        proxy_port = free_port(bind_host)

    start_local_ray(
        ray_host,
        namespace=config.serving.namespace,
        include_dashboard=dashboard,
        log_to_driver=log_to_driver,
    )

    try:
        serve.start(
            http_options={"host": host, "port": proxy_port},
            logging_config={"enable_access_log": False},
        )
        serve.run(load_builder(APP_BUILDER)(config), name=config.serving.app_name, route_prefix="/")
        url = f"http://{bind_host}:{port}"
        wait_ready(url)
        yield url
    finally:
        try:
            serve.shutdown()
            stop_embedded(config)
        finally:
            ray.shutdown()
            # Returns once the next start may bind the port again.
            wait_port_free(host, port, PORT_WAIT_S)
