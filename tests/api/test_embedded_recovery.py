"""The embedded graph server is supervised: a crash costs seconds, not the service."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from memos_ray.config import MemosConfig
from memos_ray.domain.memory import MemoryItem, MemoryMetadata
from memos_ray.embedded.falkordb_actor import falkordb_actor
from memos_ray.runtime.compose import stop_embedded
from memos_ray.stores.graph.falkordb import falkordb_graph_store


def _item(text: str) -> MemoryItem:
    return MemoryItem(
        id=str(uuid.uuid4()),
        memory=text,
        cube_id="cube",
        metadata=MemoryMetadata(user_id="u"),
    )


def test_falkordb_is_restarted_after_a_crash(ray_cluster: None, tmp_path: Path) -> None:
    import ray

    config = MemosConfig(data_dir=tmp_path / "data").resolved()
    actor = falkordb_actor(config)
    try:
        address = ray.get(actor.address.remote())
        assert ray.get(actor.is_up.remote())
        graph = falkordb_graph_store(address)
        before = _item("written before the crash")
        graph.upsert_nodes("cube", [before])  # acknowledged: in the AOF, no wait needed
        pid = ray.get(actor.pid.remote())
        os.kill(pid, signal.SIGKILL)

        deadline = time.monotonic() + 30
        while ray.get(actor.restart_count.remote()) < 1:
            if time.monotonic() > deadline:
                pytest.fail("the FalkorDB server was not restarted within 30 s")
            time.sleep(0.2)
        assert ray.get(actor.pid.remote()) != pid
        status = ray.get(actor.status.remote())
        assert status.up and status.restarts == 1
        # Same address and password, so the store the caller holds reconnects by itself.
        assert ray.get(actor.address.remote()) == address
        assert graph.existing_ids("cube", [before.id]) == {before.id}
        after = _item("written after the restart")
        graph.upsert_nodes("cube", [after])
        assert graph.existing_ids("cube", [before.id, after.id]) == {before.id, after.id}
        graph.close()
    finally:
        stop_embedded(config)
