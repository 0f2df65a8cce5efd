"""Start the whole app (Ray, Serve, embedded stores) in this process and stop it cleanly."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from memos_ray.config import MemosConfig
from memos_ray.stores.local import free_port

# Ray Serve settings that trim per-request overhead (a subset of Serve's own
# RAY_SERVE_THROUGHPUT_OPTIMIZED). Left out on purpose: running the router in the caller's loop
# (breaks sync handles), gRPC between deployments (its 4 MiB client message limit refuses a
# bulk add's token vectors) and user code on the replica's event loop (a sync bulk embed then
# blocks the replica; bulk adds were slower). Read when Ray starts its processes, so they are
# set before `ray.init`; export them yourself before `serve run` or `ray start`.
SERVE_ENV: dict[str, str] = {
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    # Serve holds a dead replica's direct-ingress port out of use for minutes (so that an
    # HAProxy in front can forget it); a local service has one port and no HAProxy, so its
    # replacement ingress replica could not listen until then (measured: 2 minutes down).
    "RAY_SERVE_PORT_QUARANTINE_S": "0",
}


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


@contextmanager
def local_service(
    config: MemosConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    dashboard: bool = False,
    log_to_driver: bool = False,
) -> Iterator[str]:
    """Yield the base URL of a running app; on exit stop Serve, the stores, then Ray.

    With `serving.direct_ingress` and one ingress replica, the replica listens on `port`
    itself and Serve's proxy moves to a spare port (it stays up, unused).
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)
    proxy_port = port
    if config.serving.direct_ingress and config.serving.ingress_replicas == 1:
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(port)
        os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(port + 1)
        # Serve keeps a stopping direct-ingress replica up for 30 s so that external load
        # balancers notice; a local service has none, and Ctrl-C then took over 30 s.
        # In-flight requests still finish (the deployment's graceful shutdown timeout).
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
        proxy_port = free_port(host if host not in ("0.0.0.0", "::") else "127.0.0.1")
    import ray
    from ray import serve

    from deployments.app import build_from_config
    from memos_ray.runtime import stop_embedded

    ray.init(
        namespace=config.serving.namespace,
        include_dashboard=dashboard,
        log_to_driver=log_to_driver,
    )
    try:
        serve.start(
            http_options={"host": host, "port": proxy_port},
            logging_config={"enable_access_log": False},
        )
        serve.run(build_from_config(config), name=config.serving.app_name, route_prefix="/")
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        wait_ready(url)
        yield url
    finally:
        try:
            serve.shutdown()
            stop_embedded(config)
        finally:
            ray.shutdown()
