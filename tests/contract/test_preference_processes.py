"""Several processes on one preference store: `milvus-lite server` shares, a `.db` refuses.

And the Ray actor that owns the server brings it back, data intact, after it is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from memos_ray.embedded.milvus_server import MilvusLiteServer, milvus_lite_actor
from memos_ray.errors import StoreError
from memos_ray.stores.preference import Preference
from memos_ray.stores.preference.milvus import MilvusPreferenceStore

ROOT = Path(__file__).resolve().parents[2]
DIM = 8


def _python(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _pref(cube: str, item_id: str, text: str) -> Preference:
    return Preference(id=item_id, cube_id=cube, user_id="u", kind="explicit", preference=text)


def test_two_processes_share_a_server(tmp_path: Path) -> None:
    collection = f"prefs_{uuid.uuid4().hex[:8]}"  # new: both processes race to create it
    cube = 'shared "cube"'
    with MilvusLiteServer(tmp_path / "milvus") as server:
        workers = [
            _python("-m", "tests.contract.preference_worker", server.uri, collection, cube, a, b)
            for a, b in (("alpha", "beta"), ("beta", "alpha"))
        ]
        results = []
        for worker in workers:
            out, err = worker.communicate(timeout=90)
            assert worker.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        for result, other in zip(results, ("beta", "alpha"), strict=True):
            assert result["found"] == [f"{other}-{i}" for i in range(5)], result
        # This process sees everything both wrote.
        store = MilvusPreferenceStore(DIM, uri=server.uri, collection=collection)
        assert store.list(cube)[1] == 10
        store.close()


def test_lite_file_refuses_a_second_process(tmp_path: Path) -> None:
    uri = str(tmp_path / "prefs.db")
    store = MilvusPreferenceStore(DIM, uri=uri)
    try:
        code = (
            "import sys\n"
            "from memos_ray.errors import StoreError\n"
            "from memos_ray.stores.preference.milvus import MilvusPreferenceStore\n"
            "try:\n"
            f"    MilvusPreferenceStore({DIM}, uri=sys.argv[1])\n"
            "except StoreError as exc:\n"
            "    print(exc.message)\n"
            "    sys.exit(3)\n"
        )
        proc = _python("-c", code, uri)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, err
        assert "another process" in out and "server mode" in out
    finally:
        store.close()


def test_server_refuses_a_taken_port(tmp_path: Path) -> None:
    with MilvusLiteServer(tmp_path / "a") as first, pytest.raises(StoreError, match="in use"):
        MilvusLiteServer(tmp_path / "b", port=first.port).start()


def test_server_listens_on_loopback_only(tmp_path: Path) -> None:
    """The embedded server (default host) answers on 127.0.0.1 and on no other address."""
    import psutil

    from tests.fixtures.listeners import Listener, answers, external_addresses

    with MilvusLiteServer(tmp_path / "milvus") as server:
        assert server.pid is not None
        bound = [
            Listener(server.pid, "milvus", "", c.laddr.ip, c.laddr.port)
            for c in psutil.Process(server.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        ]
        assert [lsn.port for lsn in bound] == [server.port], bound
        assert all(lsn.loopback for lsn in bound), bound  # 127.0.0.1, or ::ffff:127.0.0.1
        assert answers("127.0.0.1", server.port)
        assert [ip for ip in external_addresses() if answers(ip, server.port)] == []


@pytest.mark.ray
def test_actor_restarts_a_killed_server_with_its_data(ray_cluster: None, tmp_path: Path) -> None:
    import ray

    name = f"milvus-{uuid.uuid4().hex[:8]}"
    actor = milvus_lite_actor(name, "memos-tests", tmp_path / "milvus")
    try:
        # Same actor again by name.
        assert ray.get(milvus_lite_actor(name, "memos-tests", tmp_path / "other").pid.remote()) == (
            ray.get(actor.pid.remote())
        )
        uri = ray.get(actor.uri.remote())
        store = MilvusPreferenceStore(DIM, uri=uri)
        cube = "cube-1"
        store.upsert(
            cube, [_pref(cube, "p1", "Prefers rooibos tea")], np.ones((1, DIM), dtype=np.float32)
        )
        pid = ray.get(actor.pid.remote())
        os.kill(pid, signal.SIGKILL)
        # At once, while the server is down: the same client waits for the restart, and the
        # write from before the kill is there.
        assert [p.id for p in store.get(cube, ["p1"])] == ["p1"]
        hits = store.search(cube, "rooibos", np.ones(DIM, dtype=np.float32), 3)
        assert [h.id for h in hits] == ["p1"]
        # uri() waits for the supervisor to finish the restart it is in.
        assert ray.get(actor.uri.remote()) == uri  # same port: clients keep their URI
        assert ray.get(actor.restart_count.remote()) == 1
        assert ray.get(actor.pid.remote()) != pid
        store.close()
    finally:
        ray.get(actor.stop.remote())
        ray.kill(actor, no_restart=True)
