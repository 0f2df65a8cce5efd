"""Closed by default: what this project starts listens on loopback, and what it says to clients
names no internal address.

* `start_local_ray` starts a new Ray cluster whose own services (GCS, raylet, object manager,
  workers, dashboard and its agent) bind to loopback. Ray binds every gRPC server to the node
  IP, and on Linux picks the machine's routable address for it: an open Ray cluster runs any
  code a remote driver sends and hands out every worker's environment (the admin key). Making
  Ray reachable from other machines is a separate, explicit choice, and then Ray's token
  authentication is on. `keep_serve_grpc_on_loopback` does the same for the one server Serve
  binds to every interface regardless (a replica's inter-deployment gRPC server).
* `require_admin_key` refuses a non-loopback HTTP host for an API without an admin key.
* `redact` strips URIs, host:port pairs, IPs and file paths from a message for clients.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import ray
from ray._private import ray_constants
from ray._private.services import canonicalize_bootstrap_address
from ray.serve._private import http_util, replica

from memos_ray.errors import ConfigError, MemosError, ServiceUnavailableError, StoreError

if TYPE_CHECKING:
    from memos_ray.config import MemosConfig

LOOPBACK = "127.0.0.1"
# Read by Ray when it is imported (ray_constants.ENABLE_RAY_CLUSTER): off, Ray's node IP is
# loopback and no other node can join, as Ray does on macOS and Windows. Every Ray process
# this cluster starts inherits it, so they agree on the node IP.
_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_AUTH_ENV = "RAY_AUTH_MODE"


class OpenNetworkError(ConfigError):
    """An API without an admin key on a host other machines reach."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def port_free(host: str, port: int) -> bool:
    """Bindable as a listener (SO_REUSEADDR: a previous run's TIME_WAIT connections are fine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def require_admin_key(host: str | None, config: MemosConfig, where: str) -> None:
    """Refuse to serve the API on a non-loopback `host` with authentication off.

    `serving.allow_open_network` is the one way round it (an API behind an authenticating
    proxy that must bind a routable address).
    """
    if host is None or is_loopback(host) or config.auth_enabled:
        return
    if config.serving.allow_open_network:
        return
    raise OpenNetworkError(
        f"{where}: refusing to serve on {host} without MEMOS_ADMIN_KEY: the API would be open "
        "to the network. Set MEMOS_ADMIN_KEY or MEMOS_ADMIN_KEY_SHA256 (every route but "
        "/health then needs a Bearer key), or use a loopback host."
    )


@contextmanager
def _ray_node_ip_mode(loopback: bool) -> Iterator[None]:
    """While Ray starts or joins: node IP on loopback (or not), for this process and children.

    Ray read the variable when it was imported; the constant decides what "127.0.0.1"
    resolves to during `ray.init`. After it, Ray asks the connected node instead.
    """

    if loopback:
        os.environ[_SINGLE_NODE_ENV] = "0"
    else:
        os.environ.pop(_SINGLE_NODE_ENV, None)
    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = not loopback
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


def start_local_ray(ray_host: str = LOOPBACK, **init_kwargs: Any) -> None:
    """`ray.init` of a new local cluster whose services listen on `ray_host` only.

    Loopback (the default): no other machine can reach any Ray port. Anything else (an IP of
    this machine, or 0.0.0.0 for Ray's own choice) exposes Ray: its token authentication is
    then required (`RAY_AUTH_MODE=token`, the token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH
    or ~/.ray/auth_token, made there if missing); `RAY_AUTH_MODE=disabled` is refused.
    """

    init_kwargs["address"] = "local"
    init_kwargs.setdefault("dashboard_host", LOOPBACK)
    loopback = is_loopback(ray_host)
    if loopback:
        os.environ.setdefault(_AUTH_ENV, "disabled")
        init_kwargs["_node_ip_address"] = LOOPBACK
    else:
        if os.environ.get(_AUTH_ENV, "token").lower() != "token":
            raise ConfigError(
                f"Ray on {ray_host} is reachable from other machines: it needs token "
                f"authentication, but {_AUTH_ENV}={os.environ[_AUTH_ENV]}. Unset it (or set "
                "it to token), or keep Ray on loopback."
            )
        # Unset, Ray itself turns token auth on for a new cluster and makes a token if none.
        os.environ.pop(_AUTH_ENV, None)
        if ray_host not in ("0.0.0.0", "::"):
            init_kwargs["_node_ip_address"] = ray_host
    with _ray_node_ip_mode(loopback):
        ray.init(**init_kwargs)
    node_ip = ray.util.get_node_ip_address()
    if loopback and not is_loopback(node_ip):
        ray.shutdown()
        raise ConfigError(f"Ray started on {node_ip}, not on loopback; stopped it")


def keep_serve_grpc_on_loopback() -> None:
    """Serve replicas bind their inter-deployment gRPC server to [::]:0, every interface,
    whatever Ray's node IP is (ray/serve/_private/replica.py, Ray 2.60). On a loopback node
    this binds it to 127.0.0.1 instead, where the replica's callers (same node) reach it.

    Call it in a deployment's constructor: Serve starts that server right after it. A loopback
    node is one whose cluster was started single-node (the variable), or a node of a
    several-node cluster on one machine whose node IP is loopback (`ray start
    --node-ip-address=127.0.0.1`): its callers are on this machine too.
    """
    if os.environ.get(_SINGLE_NODE_ENV) != "0" and not _on_loopback_node():
        return

    original = replica.add_port_to_grpc_server
    if getattr(original, "loopback_only", False):
        return

    def bind_loopback(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = f"{LOOPBACK}:{address.removeprefix('[::]:')}"
        return int(original(server, address))

    bind_loopback.loopback_only = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind_loopback


def _on_loopback_node() -> bool:
    return ray.is_initialized() and is_loopback(ray.util.get_node_ip_address())


class _ReuseAddrSockets:
    """The `socket` module as Serve's HTTP helper sees it, with SO_REUSEADDR on new sockets."""

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    @staticmethod
    def socket(*args: Any, **kwargs: Any) -> socket.socket:
        sock = socket.socket(*args, **kwargs)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock


def let_ingress_rebind_its_port() -> None:
    """A direct-ingress replica binds its HTTP port without SO_REUSEADDR (Ray 2.60,
    `http_util.start_asgi_http_server` with `enable_so_reuseport=False`). When a replica that
    was serving clients dies, its closed connections keep the port in TIME_WAIT for a minute;
    the replacement's bind then fails, Serve blocks the port for good and, with the one port
    a local service has, the API never comes back (measured under load). SO_REUSEADDR lets
    the replacement listen at once; it does not let two live listeners share the port.

    Call it in the ingress deployment's constructor: Serve starts that server right after it.
    """

    if isinstance(http_util.socket, _ReuseAddrSockets):
        return
    http_util.socket = _ReuseAddrSockets()  # type: ignore[assignment]


def connect_or_start_ray(address: str | None, ray_host: str = LOOPBACK, **kwargs: Any) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a loopback-bound local one.

    A cluster on loopback (`memos-ray serve`'s) is joined the way it was started: this
    driver's node IP is loopback too, or Ray waits for a raylet on the routable address.
    Returns True when this process started the cluster.
    """

    external = address or os.environ.get("RAY_ADDRESS")
    if not external or external == "local":
        start_local_ray(ray_host, **kwargs)
        return True
    if _gcs_on_loopback(external):
        with _ray_node_ip_mode(True):
            ray.init(address=external, **kwargs)
    else:
        ray.init(address=external, **kwargs)
    return False


def _gcs_on_loopback(address: str) -> bool:
    """Whether `address` ("auto" or host:port of a GCS) is a cluster bound to loopback."""
    if "://" in address:  # Ray Client (ray://) or a dashboard URL: no local node joins
        return False
    if address == "auto":
        try:
            address = canonicalize_bootstrap_address(address) or ""
        except (ConnectionError, ValueError):
            return False
    return is_loopback(address.rsplit(":", 1)[0])


# URIs of any scheme (bolt://, redis://, http://, file://, postgresql://user:pw@...).
_URI = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>)\]]*")
# [v6]:port, v4[:port], name:port (a name starts with a letter, so 12:30 is no address).
# (A v6 literal has a colon inside the brackets: list indexes such as "or[1]" are kept.)
_V6_PORT = re.compile(r"\[[0-9a-fA-F.]*:[0-9a-fA-F:.]*\](?::\d{1,5})?")
_V4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b")
_HOST_PORT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9-]*(?:\.[a-zA-Z0-9-]+)*:\d{2,5}\b")
# Absolute file paths of two or more parts (a data dir, a socket, a log file).
_PATH = re.compile(r"(?<![\w.:/-])/(?:[\w.@+~-]+/)+[\w.@+~-]*")
REDACTED = "<redacted>"


def redact(message: str, *, paths: bool = True) -> str:
    """The message with every internal address (and, with `paths`, file path) replaced."""
    text = _URI.sub(REDACTED, message)
    text = _V6_PORT.sub(REDACTED, text)
    text = _V4.sub(REDACTED, text)
    text = _HOST_PORT.sub(REDACTED, text)
    if paths:
        text = _PATH.sub(REDACTED, text)
    return text


def public_message(exc: MemosError) -> str:
    """What a client may read of `exc`: a store failure is a generic message (its detail
    names servers, ports and the data dir; the server log has it), anything else redacted."""
    if isinstance(exc, StoreError):
        return "internal error: a backing store failed (details are in the server log)"
    if exc.status_code >= 500 and not isinstance(exc, ServiceUnavailableError):
        return f"internal error: {type(exc).__name__} (details are in the server log)"
    return redact(exc.message, paths=exc.status_code >= 500)
