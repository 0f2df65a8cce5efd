"""The embedded FalkorDB server is locked down, durable and bounded in time (real servers)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import threading
import time
import uuid
from pathlib import Path

import pytest

from memos_ray.core.filters import parse_filter
from memos_ray.domain.memory import MemoryItem, MemoryMetadata
from memos_ray.embedded.falkordb_server import (
    AOF_DIR,
    PASSWORD_FILE,
    RDB_FILE,
    FalkorDBServer,
    RespError,
    resp_command,
)
from memos_ray.embedded.supervisor import Supervisor
from memos_ray.errors import (
    FilterError,
    QueryTimeoutError,
    ServiceUnavailableError,
    StoreUnavailableError,
)
from memos_ray.stores.graph.falkordb import FalkorDBGraphStore, falkordb_graph_store


def _item(cube: str, text: str, **meta: object) -> MemoryItem:
    meta.setdefault("user_id", "u")
    return MemoryItem(
        id=str(uuid.uuid4()), memory=text, cube_id=cube, metadata=MemoryMetadata(**meta)
    )


def _listeners(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table, v6 in (("tcp", False), ("tcp6", True)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            raw = bytes.fromhex(hex_addr)
            if v6:
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                addr = socket.inet_ntop(socket.AF_INET6, words)
            else:
                addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
            found.add((addr, int(hex_port, 16)))
    return found


def _wait_dead(server: FalkorDBServer) -> None:
    while server.is_running():  # the signal lands asynchronously
        time.sleep(0.01)


def test_listens_on_loopback_only_and_never_bolt(tmp_path: Path) -> None:
    with FalkorDBServer(tmp_path / "graph") as server:
        assert server.pid is not None
        listeners = _listeners(server.pid)
        assert listeners, "no listening socket found"
        assert {addr for addr, _ in listeners} <= {"127.0.0.1", "::1"}
        assert {port for _, port in listeners} == {server.redis_port}  # no Bolt port
        assert "BOLT" not in " ".join(Path(f"/proc/{server.pid}/cmdline").read_text().split())
        assert "Bolt" not in server.log_path.read_text()


def test_a_password_is_required_and_kept_per_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "graph"
    with FalkorDBServer(data) as server:
        port, password = server.redis_port, server.password
        with pytest.raises(RespError, match="NOAUTH"):
            resp_command("127.0.0.1", port, "GRAPH.LIST")
        with pytest.raises(RespError, match=r"WRONGPASS|invalid"):
            resp_command("127.0.0.1", port, "PING", password="wrong")
        assert resp_command("127.0.0.1", port, "PING", password=password) == "PONG"
        # Never on the command line, where any local user could read it.
        assert password not in Path(f"/proc/{server.pid}/cmdline").read_text()
        wrong = FalkorDBGraphStore("127.0.0.1", port, "wrong")
        with pytest.raises(StoreUnavailableError, match="password") as refused:
            wrong.count("cube")
        assert str(port) not in str(refused.value)
        wrong.close()
    assert stat.S_IMODE((data / PASSWORD_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "falkordb.conf").stat().st_mode) == 0o600
    with FalkorDBServer(data) as again:
        assert again.password == password


@pytest.mark.parametrize("appendfsync", ["everysec", "always"])
def test_an_acknowledged_write_survives_sigkill(tmp_path: Path, appendfsync: str) -> None:
    server = FalkorDBServer(tmp_path / "graph", appendfsync=appendfsync)  # type: ignore[arg-type]
    server.start()
    store = falkordb_graph_store(server.address)
    try:
        written = [_item("cube", f"acknowledged {i}") for i in range(50)]
        store.upsert_nodes("cube", written)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)  # right after the reply: no snapshot in between
        _wait_dead(server)
        server.start()
        ids = [it.id for it in written]
        assert store.existing_ids("cube", ids) == set(ids)  # the same store reconnects
    finally:
        store.close()
        server.stop()


def test_an_rdb_only_data_dir_moves_to_aof_without_loss(tmp_path: Path) -> None:
    """Data dirs from before AOF hold an RDB only; AOF on alone would start them empty."""
    data = tmp_path / "graph"
    server = FalkorDBServer(data)
    server.start()
    store = falkordb_graph_store(server.address)
    try:
        old = _item("cube", "from the RDB era")
        store.upsert_nodes("cube", [old])
        server.save()
        server.stop()
        for path in (data / AOF_DIR).iterdir():
            path.unlink()
        (data / AOF_DIR).rmdir()
        assert (data / RDB_FILE).exists()
        server.start()
        assert (data / AOF_DIR).exists()
        assert store.existing_ids("cube", [old.id]) == {old.id}
        new = _item("cube", "after the switch")
        store.upsert_nodes("cube", [new])
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        _wait_dead(server)
        server.start()
        assert store.existing_ids("cube", [old.id, new.id]) == {old.id, new.id}
    finally:
        store.close()
        server.stop()


def test_persistence_across_a_clean_restart(tmp_path: Path) -> None:
    server = FalkorDBServer(tmp_path / "graph")
    server.start()
    store = falkordb_graph_store(server.address)
    try:
        first = _item("cube", "survives a clean stop")
        store.upsert_nodes("cube", [first])
        address = server.address
        server.stop()
        assert not server.is_running()
        with pytest.raises(StoreUnavailableError) as down:
            store.count("cube")
        assert str(address.port) not in str(down.value)  # no internal address in errors
        server.start()
        assert server.address == address  # clients keep working across a restart
        assert store.get_nodes(["cube"], [first.id])[0].memory == first.memory
    finally:
        store.close()
        server.stop()


def test_a_slow_query_times_out_and_others_still_answer(tmp_path: Path) -> None:
    with FalkorDBServer(tmp_path / "graph", query_timeout_ms=500) as server:
        store = FalkorDBGraphStore(
            server.host, server.redis_port, server.password, read_timeout_ms=500
        )
        try:
            store.upsert_nodes("cube", [_item("cube", f"m{i}") for i in range(1500)])
            outcome: list[BaseException | float] = []

            def slow() -> None:
                start = time.monotonic()
                try:
                    # A cartesian product: ~3.4e9 rows, hours without a limit.
                    store._query(
                        "MATCH (a:Memory), (b:Memory), (c:Memory) RETURN count(*) AS n",
                        {},
                        write=False,
                        what="slow",
                    )
                except BaseException as exc:
                    outcome.append(exc)
                outcome.append(time.monotonic() - start)

            thread = threading.Thread(target=slow)
            thread.start()
            time.sleep(0.1)
            start = time.monotonic()
            assert store.count("cube") == 1500
            assert time.monotonic() - start < 0.4  # not queued behind the slow one
            thread.join(timeout=10)
            error, took = outcome
            assert isinstance(error, QueryTimeoutError)
            assert isinstance(error, ServiceUnavailableError) and error.status_code == 503
            assert str(server.redis_port) not in str(error)
            assert isinstance(took, float) and took < 3.0
        finally:
            store.close()


def test_a_deeply_nested_filter_is_refused_at_once(graph_store: FalkorDBGraphStore) -> None:
    """This shape took 100 s at 10 levels (the parser, outside any timeout) before the limit."""
    cube = f"cube-{uuid.uuid4()}"
    graph_store.upsert_nodes(cube, [_item(cube, "a", user_id="u1", tags=["t"])])

    def chain(depth: int) -> dict[str, object]:
        spec: dict[str, object] = {"user_id": "u1"}
        for i in range(depth):
            spec = {"or": [{"user_id": f"x{i}"}, {"and": [{"tags": {"like": "t"}}, spec]}]}
        return spec

    start = time.monotonic()
    with pytest.raises(FilterError):
        graph_store.find_ids(cube, parse_filter(chain(20)))
    # The deepest the DSL accepts (7 and/or levels) still parses fast and matches correctly.
    assert len(graph_store.find_ids(cube, parse_filter(chain(3)))) == 1
    assert time.monotonic() - start < 2.0


def test_supervisor_backs_off_and_reports_the_server_down(tmp_path: Path) -> None:
    """A server that cannot come back (its port taken) is retried ever more slowly."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = FalkorDBServer(tmp_path / "graph", redis_port=port, startup_timeout_s=5)
    supervisor = Supervisor(server, "FalkorDB", 0.02, min_delay_s=0.05, max_delay_s=0.4)
    squatter = socket.socket()
    try:
        assert supervisor.status().up and supervisor.is_up()
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        _wait_dead(server)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))  # the restart now fails: port in use
        squatter.listen()
        deadline = time.monotonic() + 30
        while supervisor.status().failed_starts < 4:
            assert time.monotonic() < deadline, supervisor.status()
            assert not supervisor.is_up()
            time.sleep(0.02)
        status = supervisor.status()
        assert status.state == "restarting" and status.last_error
        delays = list(supervisor.recent_delays)
        assert delays[:4] == [0.05, 0.1, 0.2, 0.4]  # doubling, capped
        squatter.close()  # the port is free again: the next attempt brings it back
        while not supervisor.is_up():
            assert time.monotonic() < deadline, supervisor.status()
            time.sleep(0.02)
        assert supervisor.status().restarts == 1
    finally:
        squatter.close()
        supervisor.stop()
    assert supervisor.status().state == "stopped"


def test_a_first_start_waits_for_the_port_a_dying_server_still_holds(tmp_path: Path) -> None:
    """A job re-run right after its predecessor was killed: the old server still holds the
    configured port for a moment (it dies with its parent, not at once); the new one waits
    for it instead of failing."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    threading.Timer(1.0, holder.close).start()
    server = FalkorDBServer(tmp_path / "graph", redis_port=port, startup_timeout_s=10)
    began = time.monotonic()
    try:
        server.start()
        assert server.redis_port == port and server.is_running()
        assert time.monotonic() - began >= 0.9
    finally:
        holder.close()
        server.stop()
