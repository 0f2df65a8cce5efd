"""A cube dumped in MemOS's own layout loads into memos-ray: `config.json` plus the textual
memory file, written here with MemOS's own item models (TextualMemoryItem, its tree-node
metadata and SourceMessage; VecDBItem for preferences) as `GeneralMemCube.dump` writes them.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.memos_wheel import MemosWheelMissing, load_memory_items
from tests.fixtures.api import RunningApi

CUBE = "alice-memos-cube"


@pytest.fixture(scope="module")
def item_models() -> Any:
    try:
        return load_memory_items()
    except MemosWheelMissing as exc:
        if os.environ.get("MEMOS_REQUIRE_CONFORMANCE") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _memos_dump(target: Path, item_models: Any) -> dict[str, str]:
    """A tree_text cube with a preference collection, as MemOS dumps one."""
    items, vec_items = item_models
    meta = items.TreeNodeTextualMemoryMetadata
    source = items.SourceMessage(
        type="chat", role="user", content="My cat Miso is grey.", chat_time="2026-05-02T10:00"
    )
    nodes = {
        "cat": items.TextualMemoryItem(
            memory="The user's cat is called Miso and is grey.",
            metadata=meta(
                user_id="alice",
                session_id="s-1",
                memory_type="UserMemory",
                key="Cat",
                tags=["pet"],
                sources=[source],
                background="Talked about pets.",
                confidence=0.9,
                status="activated",
                embedding=[0.1, 0.2, 0.3],
                entities=["Miso"],
            ),
        ),
        "old": items.TextualMemoryItem(
            memory="The user's cat is called Misu.",
            metadata=meta(user_id="alice", memory_type="LongTermMemory", status="archived"),
        ),
        "garden": items.TextualMemoryItem(
            memory="The user grows tomatoes on the balcony.",
            metadata=meta(user_id="alice", memory_type="LongTermMemory", key="Garden"),
        ),
    }
    # A second node with the same text as "garden": one memory in memos-ray.
    twin = items.TextualMemoryItem(
        memory="The user grows tomatoes on the balcony.",
        metadata=meta(user_id="alice", memory_type="LongTermMemory"),
    )
    edges = [
        {"source": nodes["old"].id, "target": nodes["cat"].id, "type": "MERGED_TO"},
        {"source": twin.id, "target": nodes["cat"].id, "type": "RELATE_TO"},
        {"source": nodes["garden"].id, "target": str(uuid.uuid4()), "type": "PARENT"},
    ]
    graph = {
        "nodes": [i.model_dump(mode="json") for i in [*nodes.values(), twin]],
        "edges": edges,
        "total_nodes": 4,
        "total_edges": 3,
    }
    preference = vec_items.VecDBItem(
        id=str(uuid.uuid4()),
        vector=[0.5, 0.5],
        payload={
            "preference": "Prefers window seats on flights",
            "preference_type": "explicit_preference",
            "user_id": "alice",
        },
    )
    config = {
        "model_schema": "memos.configs.mem_cube.GeneralMemCubeConfig",
        "user_id": "alice",
        "cube_id": CUBE,
        "config_filename": "config.json",
        "text_mem": {"backend": "tree_text", "config": {"memory_filename": "textual_memory.json"}},
        "act_mem": {"backend": "uninitialized", "config": {}},
        "para_mem": {"backend": "uninitialized", "config": {}},
        "pref_mem": {"backend": "pref_text", "config": {"memory_filename": "preferences.json"}},
    }
    target.mkdir(parents=True)
    (target / "config.json").write_text(json.dumps(config, indent=4))
    (target / "textual_memory.json").write_text(json.dumps(graph, indent=4))
    prefs = {"explicit_preference": [preference.to_dict()]}
    (target / "preferences.json").write_text(json.dumps(prefs, indent=4))
    return {name: item.id for name, item in nodes.items()}


def test_a_memos_dump_loads_with_its_metadata_and_edges(
    open_api: RunningApi, item_models: Any
) -> None:
    exports = open_api.stack.config.data_dir / "exports" / "alice"
    _memos_dump(exports / "from-memos", item_models)
    loaded = open_api.post("/product/cubes/load", {"user_id": "alice", "name": "from-memos"})
    assert loaded.status_code == 200, loaded.text
    data = loaded.json()["data"]
    assert data["cube_id"] == CUBE and data["reembedded"] is True
    assert (data["memories"], data["edges"], data["preferences"]) == (3, 1, 1)

    query = {"user_id": "alice", "query": "What is my cat called?", "readable_cube_ids": [CUBE]}
    found = open_api.post("/product/search", query).json()["data"]
    top = found["text_mem"][0]["memories"][0]
    assert top["memory"] == "The user's cat is called Miso and is grey."
    meta = top["metadata"]
    assert (meta["memory_type"], meta["key"], meta["tags"]) == ("UserMemory", "Cat", ["pet"])
    assert meta["sources"][0]["content"] == "My cat Miso is grey."
    assert meta["info"]["memos"]["entities"] == ["Miso"]
    assert "embedding" not in meta
    assert [p["memory"] for p in found["pref_mem"][0]["memories"]] == [
        "Prefers window seats on flights"
    ]

    graph = open_api.stack.services.memory.get_graph(CUBE)
    by_text = {i.memory: i for i in graph[0]}
    assert by_text["The user's cat is called Misu."].metadata.status == "archived"
    [edge] = graph[1]
    assert (edge.source, edge.target, edge.type) == (
        by_text["The user's cat is called Misu."].id,
        by_text["The user's cat is called Miso and is grey."].id,
        "MERGED_TO",
    )
    # Loading again into the now full cube is refused; a broken config writes nothing.
    again = open_api.post("/product/cubes/load", {"user_id": "alice", "name": "from-memos"})
    assert again.status_code in (400, 409) and "already holds" in again.json()["message"]
    broken = exports / "broken-memos"
    _memos_dump(broken, item_models)
    (broken / "textual_memory.json").write_text('{"nodes": [{"id": "x"}]}')
    body = {"user_id": "alice", "name": "broken-memos", "cube_id": "never-made-memos"}
    refused = open_api.post("/product/cubes/load", body)
    assert refused.status_code == 400 and "has no text" in refused.json()["message"]
    probe = {"mem_cube_id": "never-made-memos"}
    assert open_api.post("/product/exist_mem_cube_id", probe).json()["data"] == {
        "never-made-memos": False
    }
