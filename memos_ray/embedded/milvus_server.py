"""`milvus-lite server` run by the application, so several processes share Milvus Lite.

A Milvus Lite `.db` opened in-process locks its data dir against every other process; the
server mode holds that lock once and serves any number of clients over gRPC
(`MilvusClient(uri="http://host:port")`). Writes go to its write-ahead log before they are
acknowledged, so a killed server loses nothing that was acknowledged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import ray
from ray.actor import ActorHandle

from memos_ray import metrics
from memos_ray.embedded.falkordb_server import _die_with_parent, _port_free, free_port
from memos_ray.embedded.supervisor import Supervisor
from memos_ray.errors import StoreError

logger = logging.getLogger(__name__)

# `python -m milvus_lite server`, except that SIGTERM (stop(), or the owner's death) and
# SIGINT shut it down cleanly: it drains requests and closes its database. Plain SIGTERM
# would kill it at once, and SIGINT is ignored when the owner ignores it (Ray workers do).
_SERVE = """
import signal, sys
from milvus_lite.cmdline import main
def _stop(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, _stop)
signal.signal(signal.SIGINT, _stop)
sys.argv[0] = "milvus-lite"
sys.exit(main())
"""


class MilvusLiteServer:
    """`python -m milvus_lite server` on `host:port`, its data and log under `data_dir`.

    The child gets PR_SET_PDEATHSIG=SIGTERM, so it never outlives its owner; Linux ties that
    signal to the *thread* that called start(): start it from a long-lived thread. It runs in
    its own process group (a Ctrl-C meant for the owner does not stop it mid-write; stop()
    signals the whole group).
    """

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self._want_port = port
        self._port = port
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def log_path(self) -> Path:
        return self.data_dir / "milvus-lite.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise StoreError("Milvus Lite server has not been started")
        return self._port

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.is_running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # gRPC binds with SO_REUSEPORT, so a second server on a taken port starts "fine" and
        # splits the traffic: a port is checked free (bind without REUSEPORT) before use. An
        # auto-picked port is kept across restarts (clients hold the URI) unless taken.
        if self._port is None or not _port_free(self.host, self._port):
            if self._want_port is not None:
                raise StoreError(f"port {self._want_port} on {self.host} is already in use")
            self._port = free_port(self.host)
        self._launch()

    def _launch(self) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = [
            sys.executable, "-c", _SERVE, "server",
            "--data-dir", str(self.data_dir.resolve()),
            "--host", self.host,
            "--port", str(self.port),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=_die_with_parent,
                process_group=0,
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise StoreError(f"Milvus Lite server exited at start-up.\n{self._log_tail()}")
            if self._ready():
                return
            time.sleep(0.05)
        self._kill()
        raise StoreError(
            f"Milvus Lite server did not listen on {self.host}:{self.port} within "
            f"{self.startup_timeout_s:.0f} s.\n{self._log_tail()}"
        )

    def _ready(self) -> bool:
        """Our process said it listens (the log), and the port accepts connections."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            if f"listening on {self.host}:{self.port}".encode() not in log.read():
                return False
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM: the server drains requests and closes its database (segments flushed,
        so the next start replays no log). SIGKILL if it is still there after `timeout_s`."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._kill()
        self._proc = None

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def _kill(self) -> None:
        if self._proc is not None:
            self._signal(signal.SIGKILL)
            self._proc.wait()
            self._proc = None

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log at {self.log_path})"
        return f"Last lines of {self.log_path}:\n" + "\n".join(text[-lines:])

    def __enter__(self) -> MilvusLiteServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3)
class MilvusLiteServerActor:
    """Owns the Milvus Lite server: starts it, restarts it if it dies, stops it on `stop`.

    A supervisor thread polls the process; after a crash the server comes back on the same
    port with its data (the write-ahead log is replayed), and pymilvus clients reconnect.
    The supervisor is also the thread the server's parent-death signal is tied to, so it
    starts the server too (see MilvusLiteServer).
    """

    def __init__(
        self, data_dir: str, host: str = "127.0.0.1", port: int | None = None, poll_s: float = 0.5
    ) -> None:
        metrics.actor_started("milvus_lite")
        self._server = MilvusLiteServer(Path(data_dir), host=host, port=port)
        self._supervisor = Supervisor(self._server, "Milvus Lite", poll_s)

    def uri(self) -> str:
        """The server's http:// URI; waits for a restart in progress to finish."""
        with self._supervisor.lock:
            if self._supervisor.stopping:
                raise StoreError("Milvus Lite server was stopped")
            return self._server.uri

    def pid(self) -> int | None:
        return self._server.pid

    def restart_count(self) -> int:
        return self._supervisor.restarts

    def stop(self) -> None:
        self._supervisor.stop()


def milvus_lite_actor(name: str, namespace: str, data_dir: Path) -> ActorHandle:
    """The named server actor for this data dir, created on first call (detached, like the
    FalkorDB actor: the server outlives the driver that started it; stop it explicitly)."""
    return MilvusLiteServerActor.options(  # type: ignore[attr-defined]
        name=name,
        namespace=namespace,
        get_if_exists=True,
        lifetime="detached",
    ).remote(str(data_dir))
