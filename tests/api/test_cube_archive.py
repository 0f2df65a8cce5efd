"""A cube dumped to a directory and loaded back (under another name, or in another data dir)
is the same cube: texts, metadata, edges, vectors, preferences, adapter, and search ranking.

The LLM that makes facts, a feedback update and a preference is the scripted TEST DOUBLE
(tests/fixtures/scripted_model.py); the stores and the embedder are real.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import save as save_tensors

from memos_ray import __version__
from memos_ray.api.app import create_app
from memos_ray.api.context import ApiContext
from memos_ray.config import MemosConfig
from memos_ray.core.reader import text_memory
from memos_ray.models.adapters import AdapterStore
from memos_ray.models.chat import ChatRequest
from memos_ray.models.embedder import SentenceTransformerEmbedder
from memos_ray.runtime.compose import LocalStack
from memos_ray.services import cube_archive
from memos_ray.services.cube_archive import ArchivedSpace, ArchiveError
from memos_ray.services.memory import SearchOptions
from tests.fixtures.api import ADMIN_KEY, RunningApi
from tests.fixtures.scripted_model import ScriptedChatModel
from tests.fixtures.servers import serve_in_thread
from tests.fixtures.traces import weather_trace

CUBE = "orig"
SPACE = ArchivedSpace(model="", dim=384)


def _scripted(request: ChatRequest) -> str:
    system = request.messages[0].content
    if system.startswith("You turn a conversation"):
        return json.dumps(
            {
                "memories": [
                    {"key": "", "memory_type": "UserMemory", "value": "Ines lives in Lisbon."}
                ],
                "preferences": [{"preference": "Ines prefers night trains", "kind": "explicit"}],
            }
        )
    if system.startswith("You compare"):
        return json.dumps({"decision": "keep", "operations": []})
    if system.startswith("The user corrects"):
        update = {"op": "update", "index": 0, "text": "Ines lives in Porto."}
        return json.dumps({"operations": [update], "answer": "Noted."})
    return "ok"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder
) -> Iterator[LocalStack]:
    config = MemosConfig(data_dir=tmp_path_factory.mktemp("archive")).resolved()
    with LocalStack(config, embedder=embedder, chat=ScriptedChatModel(_scripted)) as stack:
        context = ApiContext.of(stack.services, __version__)
        with (
            serve_in_thread(create_app(lambda: context)) as url,
            httpx.Client(base_url=url, timeout=60) as http,
        ):
            _fill(http)
        yield stack


def _post(http: httpx.Client, path: str, body: dict[str, Any]) -> Any:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _fill(http: httpx.Client) -> None:
    """Memories of every kind: turns, a fact with its history and MERGED_TO, a preference, a
    tool trajectory, document chunks with their edges."""
    sync = {"user_id": CUBE, "async_mode": "sync"}
    turns = [
        {"role": "user", "content": "I moved to Lisbon last spring.", "chat_time": "2026-03-01"},
        {"role": "assistant", "content": "How do you like it?", "chat_time": "2026-03-01"},
    ]
    _post(http, "/product/add", {**sync, "mode": "fast", "messages": turns})
    _post(http, "/product/add", {**sync, "mode": "fine", "messages": turns[:1]})
    _post(
        http,
        "/product/feedback",
        {"user_id": CUBE, "feedback_content": "I live in Porto now, not Lisbon."},
    )
    tools = weather_trace("Weather in Oslo?", "Oslo", "Snow")
    _post(http, "/product/add", {**sync, "mode": "fast", "messages": tools})
    text = "\n\n".join(f"Chapter {n}. The lighthouse keeper logs storm {n}." for n in range(40))
    data = base64.b64encode(text.encode()).decode()
    doc = {"type": "file", "file": {"file_data": data, "filename": "log.txt"}}
    _post(
        http,
        "/product/add",
        {**sync, "mode": "fast", "messages": [{"role": "user", "content": [doc]}]},
    )


def _adapter(store: AdapterStore, cube: str) -> None:
    r, width = 2, 8
    weights = save_tensors(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.ones(
                (r, width), dtype=np.float32
            ),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.ones(
                (width, r), dtype=np.float32
            ),
        }
    )
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 4, "target_modules": ["q_proj"]}
    store.put(cube, config, weights)


def _snapshot(stack: LocalStack, cube: str) -> dict[str, Any]:
    memory = stack.services.memory
    nodes, _ = memory.graph.list_nodes(cube)
    ids = [n.id for n in nodes]
    points = memory.vectors_of(cube).retrieve(cube, ids, with_tokens=True)
    assert stack.services.preferences is not None
    prefs, _ = stack.services.preferences.store.list(cube)
    return {
        "nodes": {n.id: n for n in nodes},
        "edges": {(e.source, e.target, e.type) for e in memory.graph.get_edges(cube)},
        "points": {p.id: p for p in points},
        "prefs": prefs,
    }


def _ranking(stack: LocalStack, cube: str, query: str) -> list[str]:
    found = stack.services.memory.search(query, {cube: None}, SearchOptions(top_k=10))
    return [m.id for m in found[cube]]


def test_dump_then_load_under_another_name_is_the_same_cube(
    stack: LocalStack, tmp_path: Path
) -> None:
    adapters = AdapterStore(tmp_path / "adapters")
    _adapter(adapters, CUBE)
    memory, prefs = stack.services.memory, stack.services.preferences
    before = _snapshot(stack, CUBE)
    kinds = {str(n.metadata.memory_type) for n in before["nodes"].values()}
    assert {"LongTermMemory", "UserMemory", "ToolTrajectoryMemory", "RawFileMemory"} <= kinds
    assert any(e[2] == "MERGED_TO" for e in before["edges"]) and before["prefs"]
    assert any(p.tokens is not None for p in before["points"].values())

    seen: list[tuple[str, int, int]] = []
    manifest = cube_archive.dump(
        memory,
        CUBE,
        tmp_path / "dump",
        space=SPACE,
        preferences=prefs,
        adapters=adapters,
        batch=7,
        progress=lambda *step: seen.append(step),
    )
    assert manifest.counts["memories"] == len(before["nodes"]) and seen
    assert manifest.counts["edges"] == len(before["edges"]) and manifest.counts["adapter"] == 1

    report = cube_archive.load(
        memory,
        tmp_path / "dump",
        as_cube="copy",
        space=SPACE,
        preferences=prefs,
        adapters=adapters,
        batch=5,
        keep_map=True,
    )
    assert not report.reembedded and report.memories == len(before["nodes"])
    after = _snapshot(stack, "copy")
    id_map = report.id_map
    assert set(after["nodes"]) == {id_map[i] for i in before["nodes"]}
    for old_id, old in before["nodes"].items():
        new = after["nodes"][id_map[old_id]]
        assert new.memory == old.memory and new.cube_id == "copy"
        assert new.metadata.model_dump() == old.metadata.model_dump()
    assert after["edges"] == {(id_map[s], id_map[t], k) for s, t, k in before["edges"]}
    for old_id, point in before["points"].items():
        copy = after["points"][id_map[old_id]]
        np.testing.assert_allclose(copy.dense, point.dense, atol=1e-6)
        if point.tokens is None:
            assert copy.tokens is None
        else:
            assert copy.tokens is not None
            np.testing.assert_array_equal(copy.tokens, point.tokens)
        assert copy.sparse == point.sparse
    assert sorted(p.preference for p in after["prefs"]) == sorted(
        p.preference for p in before["prefs"]
    )
    assert adapters.info("copy") is not None and report.adapter
    for query in ("Where does Ines live?", "storm 7 lighthouse", "weather in Oslo"):
        assert _ranking(stack, "copy", query) == [id_map[i] for i in _ranking(stack, CUBE, query)]


def test_a_load_into_another_data_dir_keeps_the_ids(
    stack: LocalStack, tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    memory = stack.services.memory
    cube_archive.dump(memory, CUBE, tmp_path / "dump", space=SPACE)
    config = MemosConfig(data_dir=tmp_path / "elsewhere").resolved()
    with LocalStack(config, embedder=embedder) as other:
        report = cube_archive.load(
            other.services.memory, tmp_path / "dump", space=SPACE, keep_map=True
        )
        assert report.cube_id == CUBE and all(k == v for k, v in report.id_map.items())
        query = "Where does Ines live?"
        theirs = other.services.memory.search(query, {CUBE: None}, SearchOptions(top_k=10))
        assert [m.id for m in theirs[CUBE]] == _ranking(stack, CUBE, query)


def test_another_space_re_embeds(stack: LocalStack, tmp_path: Path) -> None:
    memory = stack.services.memory
    dumped = ArchivedSpace(model="some/other-model", dim=384)
    cube_archive.dump(memory, CUBE, tmp_path / "dump", space=dumped)
    report = cube_archive.load(
        memory, tmp_path / "dump", as_cube="reembedded", space=SPACE, keep_map=True
    )
    assert report.reembedded and report.vectors > 0
    query = "Where does Ines live?"
    assert _ranking(stack, "reembedded", query)[0] == report.id_map[_ranking(stack, CUBE, query)[0]]


def test_bad_dumps_are_refused_and_write_nothing(stack: LocalStack, tmp_path: Path) -> None:
    memory = stack.services.memory
    good = tmp_path / "dump"
    cube_archive.dump(memory, CUBE, good, space=SPACE)

    def broken(name: str, change: Any) -> Path:
        target = tmp_path / name
        shutil.copytree(good, target)
        change(target)
        return target

    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    def version(target: Path) -> None:
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["version"] = 99
        (target / "manifest.json").write_text(json.dumps(manifest))

    cases = {
        "corrupt": (lambda t: flip(t / "memories.jsonl"), "checksum"),
        "truncated": (
            lambda t: (t / "dense.f32").write_bytes((t / "dense.f32").read_bytes()[:-100]),
            "truncated",
        ),
        "version": (version, "version 99"),
        "no manifest": (lambda t: (t / "manifest.json").unlink(), "no manifest"),
    }
    for name, (change, words) in cases.items():
        target = broken(name.replace(" ", "-"), change)
        with pytest.raises(ArchiveError, match=words):
            cube_archive.load(memory, target, as_cube=f"bad-{name.replace(' ', '-')}", space=SPACE)
        assert memory.graph.count(f"bad-{name.replace(' ', '-')}") == 0, name


def test_a_dump_killed_midway_leaves_nothing_that_loads(stack: LocalStack, tmp_path: Path) -> None:
    memory = stack.services.memory

    def die(stage: str, done: int, total: int) -> None:
        raise KeyboardInterrupt  # what a kill looks like to the writer

    with pytest.raises(KeyboardInterrupt):
        cube_archive.dump(memory, CUBE, tmp_path / "dump", space=SPACE, batch=3, progress=die)
    assert list(tmp_path.iterdir()) == []


def test_the_cli_dumps_and_loads_a_data_dirs_cube(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, capsys: pytest.CaptureFixture[str]
) -> None:
    """`memos-ray cube dump` / `cube load --as` on stopped data dirs (the portable case)."""
    from memos_ray.cli import main

    source, target = tmp_path / "source", tmp_path / "target"
    with LocalStack(MemosConfig(data_dir=source).resolved(), embedder=embedder) as stack:
        stack.services.access.tenancy.create_user("kim")
        stack.services.access.tenancy.create_cube("kims-notes", "Kim's notes", "kim")
        memory = stack.services.memory
        memory.add_windows("kims-notes", "kim", [text_memory("Kim's locker is number 12.")])
    assert (
        main(["cube", "dump", "kims-notes", str(tmp_path / "dump"), "--data-dir", str(source)]) == 0
    )
    dumped = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert dumped["memories"] == 1 and dumped["vectors"] == 1
    assert (
        main(["cube", "load", str(tmp_path / "dump"), "--as", "kim2", "--data-dir", str(target)])
        == 0
    )
    loaded = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert loaded["cube_id"] == "kim2" and loaded["memories"] == 1 and not loaded["reembedded"]
    with LocalStack(MemosConfig(data_dir=target).resolved(), embedder=embedder) as other:
        cube = other.services.tenancy.get_cube("kim2")
        assert cube is not None and cube.owner_id == "kim"
        found = other.services.memory.search("locker", {"kim2": None}, SearchOptions(top_k=3))
        assert found["kim2"][0].memory == "Kim's locker is number 12."
    # A second load into the same, now non-empty cube is refused; nothing changes.
    assert (
        main(["cube", "load", str(tmp_path / "dump"), "--as", "kim2", "--data-dir", str(target)])
        == 1
    )


def test_a_dump_process_killed_midway_leaves_nothing_that_loads(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    """SIGKILL of `memos-ray cube dump` while it writes: no directory under the target's name,
    and the half-written one beside it is refused by load."""
    data = tmp_path / "data"
    # No Milvus Lite here: its file lock stays with this process after close, and the dump
    # runs in another one.
    config = MemosConfig(data_dir=data, preference={"backend": "none"}).resolved()
    with LocalStack(config, embedder=embedder) as stack:
        windows = [text_memory(f"Entry {n}: shelf {n % 97}, box {n}.") for n in range(1500)]
        stack.services.memory.add_windows("big", "big", windows)
    target = tmp_path / "big.cube"
    command = [sys.executable, "-m", "memos_ray.cli", "cube", "dump", "big", str(target)]
    command += ["--data-dir", str(data), "--batch", "4"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    env["MEMOS_PREFERENCE__BACKEND"] = "none"
    log = tmp_path / "dump.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
    partial: list[Path] = []
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            partial = list(tmp_path.glob(".big.cube.partial-*"))
            written = partial[0] / "memories.jsonl" if partial else None
            if written is not None and written.exists() and written.stat().st_size > 20_000:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the dump ended first: {log.read_text()[-2000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Its embedded graph server was in the same process group: let it go before reopening.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    assert not target.exists()
    assert partial
    with LocalStack(config, embedder=embedder) as stack:
        with pytest.raises(ArchiveError, match="no manifest"):
            cube_archive.load(stack.services.memory, partial[0], as_cube="half", space=SPACE)
        assert stack.services.memory.graph.count("half") == 0


def test_a_status_change_keeps_the_vectors_without_re_embedding(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What record deletes and recovers rely on: `update_items` re-encodes only changed text."""
    from memos_ray.domain.memory import MemoryStatus
    from memos_ray.services.feedback import set_status

    memory = stack.services.memory
    at = memory.spaces.of(CUBE)
    nodes, _ = memory.graph.list_nodes(CUBE, statuses=["activated"], limit=3)
    before = {r.id: r for r in at.vectors.retrieve(CUBE, [n.id for n in nodes], True)}
    calls: list[int] = []
    encode = at.embedder.encode
    monkeypatch.setattr(
        at.embedder, "encode", lambda texts: calls.append(len(texts)) or encode(texts)
    )
    for node in nodes:
        set_status(memory, CUBE, node, MemoryStatus.ARCHIVED, "test")
    assert calls == []
    after = {r.id: r for r in at.vectors.retrieve(CUBE, [n.id for n in nodes], True)}
    for node in nodes:
        np.testing.assert_array_equal(after[node.id].dense, before[node.id].dense)
        assert after[node.id].payload["status"] == "archived"
        set_status(memory, CUBE, node, MemoryStatus.ACTIVATED, "back")
    changed = nodes[0].model_copy(update={"memory": nodes[0].memory + " (edited)"})
    memory.update_items(CUBE, [changed])
    assert calls == [1]  # a changed text is embedded again
    memory.update_items(CUBE, [nodes[0]])  # as it was


def test_dumps_over_rest_stay_in_each_users_folder(auth_api: RunningApi) -> None:
    """The routes behind `dump_cube` / `load_cube`: names, not paths; one folder per user;
    a corrupt dump is refused before any cube is made."""
    keys = {}
    for user in ("dumper", "other"):
        made = auth_api.post("/admin/users", {"user_id": user}, key=ADMIN_KEY)
        keys[user] = made.json()["data"]["api_key"]
    body = {"user_id": "dumper", "memory_content": "The boiler is serviced every October."}
    added = auth_api.post("/product/add", {**body, "async_mode": "sync"}, key=keys["dumper"])
    memory_id = added.json()["data"][0]["memory_id"]

    dumped = auth_api.post("/product/cubes/dumper/dump", {"name": "d1"}, key=keys["dumper"])
    assert dumped.status_code == 200, dumped.text
    assert dumped.json()["data"]["counts"]["memories"] == 1
    again = auth_api.post("/product/cubes/dumper/dump", {"name": "d1"}, key=keys["dumper"])
    assert again.status_code == 409
    for name in ("../d2", "/tmp/d2", ".hidden"):
        bad = auth_api.post("/product/cubes/dumper/dump", {"name": name}, key=keys["dumper"])
        assert bad.status_code == 422, name
    stolen = auth_api.post("/product/cubes/dumper/dump", {"name": "x"}, key=keys["other"])
    assert stolen.status_code == 403

    # Another user neither sees nor loads it; the admin loads it for that user on purpose.
    listed = auth_api.http.get("/product/cubes/dumps", headers=_bearer(keys["other"]))
    assert listed.json()["data"]["dumps"] == []
    assert (
        auth_api.post("/product/cubes/load", {"name": "d1"}, key=keys["other"]).status_code == 404
    )
    handed = {"name": "d1", "from_user_id": "dumper", "user_id": "other", "cube_id": "other-copy"}
    loaded = auth_api.post("/product/cubes/load", handed, key=ADMIN_KEY)
    assert loaded.status_code == 200, loaded.text
    query = {"user_id": "other", "query": "boiler", "readable_cube_ids": ["other-copy"]}
    found = auth_api.post("/product/search", query, key=keys["other"]).json()["data"]
    assert found["text_mem"][0]["memories"][0]["memory"] == body["memory_content"]

    # A truncated dump: 400, and the cube it names is never made.
    folder = auth_api.stack.config.data_dir / "exports" / "dumper"
    shutil.copytree(folder / "d1", folder / "d2")
    memories = folder / "d2" / "memories.jsonl"
    memories.write_bytes(memories.read_bytes()[:-20])
    broken = {"name": "d2", "cube_id": "never-made"}
    refused = auth_api.post("/product/cubes/load", broken, key=keys["dumper"])
    assert refused.status_code == 400 and "truncated" in refused.json()["message"]
    exists = auth_api.post(
        "/product/exist_mem_cube_id", {"mem_cube_id": "never-made"}, key=ADMIN_KEY
    )
    assert exists.json()["data"] == {"never-made": False}

    # update_memory and get_user_info keep tenancy too.
    update = {"mem_cube_id": "dumper", "memory_id": memory_id, "memory": "Serviced in May."}
    assert auth_api.post("/product/update_memory", update, key=keys["other"]).status_code == 403
    ghost = {**update, "memory_id": "0" * 36}
    assert auth_api.post("/product/update_memory", ghost, key=keys["dumper"]).status_code == 404
    info = auth_api.post("/product/get_user_info", {"user_id": "dumper"}, key=keys["other"])
    assert info.status_code == 403


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
