"""What every GraphStore backend must do; run against real servers (FalkorDB always).

Neo4j runs too when MEMOS_TEST_NEO4J_URI is set (MEMOS_TEST_NEO4J_USER / _PASSWORD for auth).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memos_ray.core.filters import parse_filter
from memos_ray.domain.memory import (
    Edge,
    EdgeType,
    HistoryEntry,
    MemoryItem,
    MemoryMetadata,
    MemoryStatus,
    MemoryType,
    SourceMessage,
)
from memos_ray.embedded.falkordb_server import FalkorDBServer
from memos_ray.errors import ConflictError, StoreError
from memos_ray.stores.graph.base import GraphStore
from memos_ray.stores.graph.neo4j import Neo4jGraphStore

NEO4J_URI = os.environ.get("MEMOS_TEST_NEO4J_URI")


@pytest.fixture(params=["falkordb", "neo4j"])
def store(request: pytest.FixtureRequest) -> Iterator[GraphStore]:
    if request.param == "falkordb":
        yield request.getfixturevalue("graph_store")
        return
    if not NEO4J_URI:
        pytest.skip("MEMOS_TEST_NEO4J_URI is not set")
    user = os.environ.get("MEMOS_TEST_NEO4J_USER", "neo4j")
    password = os.environ.get("MEMOS_TEST_NEO4J_PASSWORD")
    neo4j = Neo4jGraphStore(NEO4J_URI, auth=(user, password) if password else None)
    yield neo4j
    neo4j.close()


def new_cube() -> str:
    return f"cube-{uuid.uuid4()}"


def item(cube: str, text: str, minute: int = 0, **meta: Any) -> MemoryItem:
    meta.setdefault("user_id", "alice")
    meta.setdefault("created_at", f"2024-05-01T10:{minute:02d}:00.000000Z")
    return MemoryItem(
        id=str(uuid.uuid4()), memory=text, cube_id=cube, metadata=MemoryMetadata(**meta)
    )


def stored_form(it: MemoryItem) -> dict[str, Any]:
    data = it.model_dump()
    data["metadata"]["embedding"] = None
    data["metadata"]["relativity"] = None
    return data


def test_roundtrip_keeps_everything_but_vectors(store: GraphStore) -> None:
    cube = new_cube()
    rich = item(
        cube,
        'Alice\'s cat is called "Tom" \\ 😀\nsecond line',
        tags=["pets", "it's"],
        sources=[SourceMessage(role="user", content="my cat's name is Tom", chat_time="t1")],
        history=[HistoryEntry(version=1, memory="old", updated_at="2024-01-01", reason="x")],
        info={"project": "p1", "score": 7, "ratio": 0.125, "files": ["f1", "f2"], "deep": {"a": 1}},
        key="cat",
        confidence=0.87,
        embedding=[0.1, 0.2],
        relativity=0.5,
    )
    plain = item(cube, "plain", minute=1)
    store.upsert_nodes(cube, [rich, plain])
    got = store.get_nodes([cube], [plain.id, rich.id, "missing"])
    assert [g.id for g in got] == [plain.id, rich.id]
    assert got[1].model_dump() == stored_form(rich)
    assert got[0].model_dump() == stored_form(plain)


def test_upsert_replaces(store: GraphStore) -> None:
    cube = new_cube()
    first = item(cube, "v1", tags=["old"], info={"project": "p1"})
    store.upsert_nodes(cube, [first])
    second = first.model_copy(
        update={"memory": "v2", "metadata": MemoryMetadata(user_id="bob", tags=["new"])}
    )
    store.upsert_nodes(cube, [second])
    [got] = store.get_nodes([cube], [first.id])
    assert got.model_dump() == stored_form(second)
    assert store.count(cube) == 1
    assert store.find_ids(cube, parse_filter({"project": "p1"})) == []
    assert store.find_ids(cube, parse_filter({"tags": {"contains": "new"}})) == [first.id]


def test_cube_isolation(store: GraphStore) -> None:
    mine, other = new_cube(), new_cube()
    a, b = item(mine, "a"), item(mine, "b", minute=1)
    store.upsert_nodes(mine, [a, b])
    store.add_edges(mine, [Edge(source=a.id, target=b.id, type=EdgeType.PARENT)])
    assert store.get_nodes([other], [a.id]) == []
    assert store.get_nodes([other, mine], [a.id])[0].id == a.id
    assert store.existing_ids(other, [a.id]) == set()
    assert store.find_ids(other) == []
    assert store.list_nodes(other) == ([], 0)
    assert store.count(other) == 0
    assert store.get_edges(other) == []
    assert store.delete_nodes(other, [a.id]) == 0
    # Edges across cubes are not created.
    c = item(other, "c")
    store.upsert_nodes(other, [c])
    store.add_edges(other, [Edge(source=c.id, target=a.id, type=EdgeType.PARENT)])
    assert store.get_edges(other) == []
    with pytest.raises(ConflictError):
        store.upsert_nodes(other, [a.model_copy(update={"cube_id": other})])
    assert store.count(mine) == 2
    assert store.locate([a.id, c.id, "missing"]) == {a.id: mine, c.id: other}


def test_existing_ids(store: GraphStore) -> None:
    cube = new_cube()
    a = item(cube, "a")
    store.upsert_nodes(cube, [a])
    assert store.existing_ids(cube, [a.id, "nope", a.id]) == {a.id}
    assert store.existing_ids(cube, []) == set()


@pytest.fixture
def population(store: GraphStore) -> tuple[str, dict[str, MemoryItem]]:
    cube = new_cube()
    items = {
        "a": item(cube, "the quick brown fox", 1, user_id="u1", tags=["x", "y"],
                  info={"score": 1, "files": ["f1"]}),
        "b": item(cube, "lazy dog", 2, user_id="u2", tags=["y"], info={"score": 5, "team": "t"},
                  memory_type=MemoryType.WORKING),
        "c": item(cube, "quick thinking", 3, user_id="u1", tags=[], info={"score": 9},
                  status=MemoryStatus.ARCHIVED),
        "d": item(cube, "unrelated", 4, user_id="u3", info={"files": ["f1", "f2"]}),
    }  # fmt: skip
    store.upsert_nodes(cube, list(items.values()))
    return cube, items


def _find(store: GraphStore, cube: str, raw: Any, **kwargs: Any) -> set[str]:
    return set(store.find_ids(cube, parse_filter(raw), **kwargs))


def test_find_ids_operators(
    store: GraphStore, population: tuple[str, dict[str, MemoryItem]]
) -> None:
    cube, items = population
    ids = {name: it.id for name, it in items.items()}

    def names(found: set[str]) -> set[str]:
        return {name for name, i in ids.items() if i in found}

    assert names(_find(store, cube, None)) == {"a", "b", "c", "d"}
    assert names(_find(store, cube, {"user_id": "u1"})) == {"a", "c"}
    assert names(_find(store, cube, {"score": {"gt": 1}})) == {"b", "c"}
    assert names(_find(store, cube, {"score": {"gte": 5}})) == {"b", "c"}
    assert names(_find(store, cube, {"score": {"lt": 5}})) == {"a"}
    assert names(_find(store, cube, {"score": {"lte": 5}})) == {"a", "b"}
    assert names(_find(store, cube, {"user_id": {"in": ["u2", "u3"]}})) == {"b", "d"}
    assert names(_find(store, cube, {"memory": {"like": "quick"}})) == {"a", "c"}
    assert names(_find(store, cube, {"tags": {"contains": "y"}})) == {"a", "b"}
    assert names(_find(store, cube, {"tags": {"in": ["x", "zz"]}})) == {"a"}
    assert names(_find(store, cube, {"files": {"contains": "f1"}})) == {"a", "d"}
    assert names(_find(store, cube, {"info.team": "t"})) == {"b"}
    assert names(_find(store, cube, {"created_at": {"gte": "2024-05-01T10:03:00"}})) == {"c", "d"}
    assert names(_find(store, cube, {"created_at": {"lt": "2024-05-01T10:02:00Z"}})) == {"a"}
    assert names(_find(store, cube, {"created_at": {"gt": "2024-05-01"}})) == {"a", "b", "c", "d"}
    nested = {
        "or": [
            {"and": [{"user_id": "u1"}, {"score": {"gt": 5}}]},
            {"and": [{"tags": {"contains": "y"}}, {"memory": {"like": "dog"}}]},
        ]
    }
    assert names(_find(store, cube, nested)) == {"b", "c"}
    assert names(_find(store, cube, None, memory_types=["WorkingMemory"])) == {"b"}
    assert names(_find(store, cube, None, statuses=["activated"])) == {"a", "b", "d"}
    assert names(
        _find(
            store, cube, {"user_id": "u1"}, memory_types=["LongTermMemory"], statuses=["archived"]
        )
    ) == {"c"}
    assert _find(store, cube, None, memory_types=[]) == set()
    assert _find(store, cube, {"nothing": "here"}) == set()


def test_list_nodes_pages_newest_first(
    store: GraphStore, population: tuple[str, dict[str, MemoryItem]]
) -> None:
    cube, items = population
    newest_first = [items[n].id for n in ("d", "c", "b", "a")]
    page, total = store.list_nodes(cube)
    assert [p.id for p in page] == newest_first and total == 4
    page, total = store.list_nodes(cube, offset=1, limit=2)
    assert [p.id for p in page] == newest_first[1:3] and total == 4
    page, total = store.list_nodes(cube, offset=10, limit=2)
    assert page == [] and total == 4
    page, total = store.list_nodes(cube, filter=parse_filter({"user_id": "u1"}), limit=1)
    assert [p.id for p in page] == [items["c"].id] and total == 2
    page, total = store.list_nodes(cube, statuses=["archived"])
    assert [p.model_dump() for p in page] == [stored_form(items["c"])] and total == 1
    # Same created_at: ties break by id.
    tie_cube = new_cube()
    ties = [item(tie_cube, f"t{i}", 7) for i in range(3)]
    store.upsert_nodes(tie_cube, ties)
    assert [p.id for p in store.list_nodes(tie_cube)[0]] == sorted(t.id for t in ties)


def test_nodes_after_visits_each_node_once_while_the_cube_changes(store: GraphStore) -> None:
    cube, other = new_cube(), new_cube()
    nodes = [item(cube, f"n{i}", i) for i in range(7)]
    store.upsert_nodes(cube, nodes)
    store.upsert_nodes(other, [item(other, "elsewhere")])
    seen: list[str] = []
    after: str | None = None
    added: list[MemoryItem] = []
    while page := store.nodes_after(cube, after, 3):
        assert [p.id for p in page] == sorted(p.id for p in page)
        assert all(p.cube_id == cube for p in page)
        seen += [p.id for p in page]
        after = page[-1].id
        if not added:
            # Writes between pages: new nodes land before or after the cursor, never twice.
            added = [item(cube, f"late{i}", 30 + i) for i in range(4)]
            store.upsert_nodes(cube, added)
    assert len(seen) == len(set(seen))
    assert {n.id for n in nodes} <= set(seen) <= {n.id for n in nodes + added}
    assert [p.model_dump() for p in store.nodes_after(cube, None, 100) if p.id == nodes[0].id] == [
        stored_form(nodes[0])
    ]
    with pytest.raises(StoreError):
        store.nodes_after(cube, None, 0)


def test_edges_idempotent_and_selectable(store: GraphStore) -> None:
    cube = new_cube()
    a, b, c = item(cube, "a"), item(cube, "b"), item(cube, "c")
    store.upsert_nodes(cube, [a, b, c])
    edges = [
        Edge(source=a.id, target=b.id, type=EdgeType.PARENT),
        Edge(source=b.id, target=c.id, type=EdgeType.FOLLOWING),
        Edge(source=a.id, target=b.id, type=EdgeType.SUMMARY),
    ]
    store.add_edges(cube, edges)
    store.add_edges(cube, [*edges, edges[0]])
    key = lambda e: (e.source, e.target, e.type)  # noqa: E731
    assert sorted(store.get_edges(cube), key=key) == sorted(edges, key=key)
    assert sorted(store.get_edges(cube, [c.id]), key=key) == [edges[1]]
    assert len(store.get_edges(cube, [a.id, c.id])) == 3
    assert store.get_edges(cube, []) == []


def test_delete_removes_nodes_and_their_edges(store: GraphStore) -> None:
    cube = new_cube()
    a, b, c = item(cube, "a"), item(cube, "b"), item(cube, "c")
    store.upsert_nodes(cube, [a, b, c])
    store.add_edges(
        cube,
        [
            Edge(source=a.id, target=b.id, type=EdgeType.PARENT),
            Edge(source=b.id, target=c.id, type=EdgeType.PARENT),
        ],
    )
    assert store.delete_nodes(cube, [b.id, "missing", b.id]) == 1
    assert store.get_edges(cube) == []
    assert store.existing_ids(cube, [a.id, b.id, c.id]) == {a.id, c.id}
    assert store.count(cube) == 2
    assert store.delete_nodes(cube, []) == 0


def test_large_items_and_many_ids(store: GraphStore) -> None:
    """Long strings, quotes, backslashes and newlines round-trip; long id lists in one call."""
    cube = new_cube()
    big = item(
        cube,
        "é'\\\"\n`$" * 30_000,
        info={"blob": "x" * 5000, "ratio": 0.1234567891234567},
        sources=[SourceMessage(role="user", content="quote ' " * 5000)],
    )
    many = [item(cube, f"m{i}", info={"n": i}) for i in range(3000)]
    store.upsert_nodes(cube, [big, *many])
    assert store.get_nodes([cube], [big.id])[0].model_dump() == stored_form(big)
    ids = [m.id for m in many]
    assert [g.id for g in store.get_nodes([cube], ids)] == ids
    assert store.existing_ids(cube, ids) == set(ids)
    assert store.count(cube) == 3001
    assert store.find_ids(cube, parse_filter({"info.ratio": 0.1234567891234567})) == [big.id]
    assert store.delete_nodes(cube, ids) == 3000


def test_a_large_filter_is_one_query(store: GraphStore) -> None:
    cube = new_cube()
    a = item(cube, "a", user_id="user-999")
    store.upsert_nodes(cube, [a])
    # As wide as the filter DSL allows: 100 values in one `in`, 100 conditions in one `or`.
    huge = parse_filter(
        {
            "user_id": {"in": [f"user-{i}" for i in range(901, 1001)]},
            "or": [{"user_id": f"user-{i}"} for i in range(900, 1000)],
        }
    )
    assert store.find_ids(cube, huge) == [a.id]


def test_upsert_with_a_foreign_id_writes_nothing(store: GraphStore) -> None:
    """The cube check and the writes of one call apply together or not at all."""
    cube, other = new_cube(), new_cube()
    taken = item(other, "taken")
    store.upsert_nodes(other, [taken])
    fresh = item(cube, "fresh")
    clash = taken.model_copy(update={"cube_id": cube})
    with pytest.raises(ConflictError):
        store.upsert_nodes(cube, [fresh, clash])
    assert store.existing_ids(cube, [fresh.id]) == set()
    assert store.count(other) == 1


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    with FalkorDBServer(tmp_path / "graph") as server:
        pid = server.pid
        assert pid is not None and server.is_running()
    assert not server.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
