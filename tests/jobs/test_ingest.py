"""jobs.ingest on the session's Ray cluster and real embedded stores.

In-process runs use `run_ingest`; the process boundary matters only for the kill test and
the JSON line on stdout, which run `python -m jobs.ingest`. LoCoMo / LongMemEval slices are
read from the shared data dir (MEMOS_BENCH_DATA, default ../shared/data beside the
repository) and skipped when it is absent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.ingest import IngestArgs, IngestSummary, run_ingest
from memos_ray.config import MemosConfig
from memos_ray.embedded.falkordb_server import PASSWORD_FILE, data_dir_password
from memos_ray.runtime.compose import LocalStack
from memos_ray.stores.graph.falkordb import FalkorDBAddress, falkordb_graph_store
from tests.fixtures.servers import quiet_port

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("MEMOS_BENCH_DATA", REPO.parent / "shared" / "data"))
LOCOMO = DATA / "locomo" / "locomo_dev.json"
LONGMEMEVAL = DATA / "longmemeval" / "longmemeval_oracle_dev.json"


def _run(data_dir: Path, fmt: str, path: Path, **options: Any) -> IngestSummary:
    args = IngestArgs(
        format=fmt,  # type: ignore[arg-type]
        input=[str(path)],
        data_dir=str(data_dir),
        ceiling_sample=0,
        progress=False,
        **options,
    )
    return run_ingest(args)


def _stored(data_dir: Path, cubes: list[str]) -> dict[str, Any]:
    """Every cube's graph nodes and vector points, read back with the job stopped."""
    config = MemosConfig(data_dir=data_dir, preference={"backend": "none"}).resolved()
    result: dict[str, Any] = {}
    with LocalStack(config) as stack:
        for cube in cubes:
            nodes, _ = stack.service.graph.list_nodes(cube)
            scan = stack.service.vectors.scan(cube)
            result[cube] = {
                "nodes": {n.id: n for n in nodes},
                "points": dict(zip(scan.ids, scan.payloads, strict=True)),
                "edges": stack.service.graph.get_edges(cube),
                "owner": getattr(stack.tenancy.get_cube(cube), "owner_id", None),
            }
    return result


def _pairs(stored: dict[str, Any]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    nodes = {(i, n.memory) for cube in stored.values() for i, n in cube["nodes"].items()}
    points = {(i, p["memory"]) for cube in stored.values() for i, p in cube["points"].items()}
    return nodes, points


def _seqs(stored: dict[str, Any]) -> dict[str, int]:
    return {i: p["seq"] for cube in stored.values() for i, p in cube["points"].items()}


def _conversations(cubes: int, sessions: int, turns: int) -> list[dict[str, Any]]:
    """Message records with repeats inside a session and across sessions."""
    rows = []
    for c in range(cubes):
        for s in range(sessions):
            for t in range(turns):
                content = f"cube {c} session {s}: fact number {t} about topic {t % 7}"
                if t == turns - 1:
                    content = "Thanks, see you!"  # the same words in every session
                role = "user" if t % 2 == 0 else "assistant"
                rows.append(
                    {
                        "cube_id": f"conv-{c}",
                        "user_id": f"user-{c}",
                        "session_id": f"s{s}",
                        "role": role,
                        "content": content,
                        "message_id": f"{c}:{s}:{t}",
                    }
                )
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]], extra: tuple[str, ...] = ()) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(extra))
    return path


# -- JSONL / Parquet ------------------------------------------------------------------------


def test_jsonl_then_parquet_of_the_same_records(tmp_path: Path, ray_cluster: None) -> None:
    """JSONL: memories, a document with its chunk edges, bad lines reported with their line
    numbers; the same records as Parquet then add nothing (same ids), and everything is
    stored in both stores, in cubes the API sees as owned by the records' user."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _conversations(cubes=2, sessions=2, turns=4)
    document = {
        "cube_id": "conv-0",
        "user_id": "user-0",
        "name": "guide.md",
        "text": "\n\n".join(f"Section {n}. " + "text " * 300 for n in range(3)),
    }
    rows.append(document)
    bad = ('{"role": "user", "content": 3}\n', "oops\n")
    jsonl = _write_jsonl(tmp_path / "in.jsonl", rows, bad)
    data_dir = tmp_path / "data"

    first = _run(data_dir, "jsonl", jsonl, write_batch=8, embed_batch_size=8)
    # 2 cubes x 2 sessions x 3 distinct turns + one "Thanks" per cube, + the document.
    chunks = first.memories_written - 2 * (2 * 3 + 1)
    assert chunks >= 3
    assert first.memories_skipped == 0
    assert (first.rows, first.bad_rows, first.cubes) == (len(rows) + 2, 2, 2)
    assert sorted(b["line"] for b in first.bad_examples) == [len(rows) + 1, len(rows) + 2]
    assert first.edges == 2 * (chunks - 1)

    columns = sorted({k for r in rows for k in r})
    table = pa.table({c: [r.get(c) for r in rows] for c in columns})
    pq.write_table(table, tmp_path / "in.parquet")
    second = _run(data_dir, "parquet", tmp_path / "in.parquet")
    assert (second.memories_written, second.memories_skipped) == (0, first.memories_written)
    assert second.bad_rows == 0

    stored = _stored(data_dir, ["conv-0", "conv-1"])
    nodes, points = _pairs(stored)
    assert nodes == points and len(nodes) == first.memories_written
    assert stored["conv-0"]["owner"] == "user-0" and stored["conv-1"]["owner"] == "user-1"
    assert len(stored["conv-0"]["edges"]) == 2 * (chunks - 1)
    thanks = [n for n in stored["conv-1"]["nodes"].values() if "Thanks" in n.memory]
    assert len(thanks) == 1 and thanks[0].metadata.session_id == "s0"  # the first add wins


def test_moved_cube_refused_and_a_running_apps_stores_reused(
    tmp_path: Path, ray_cluster: None
) -> None:
    """A cube jobs.reembed moved is refused (the configured model and store are not its own
    any more). The store owners of a running app (here: started by the test) are used and
    left running, as under `--address auto` beside `memos-ray serve`."""
    from memos_ray.runtime.compose import build_ray_stores, build_tenancy_store, stop_embedded
    from memos_ray.services.space_registry import SpaceRegistry
    from memos_ray.services.spaces import default_space, space_for_model

    data_dir = tmp_path / "data"
    config = MemosConfig(data_dir=data_dir).resolved()
    tenancy = build_tenancy_store(config)
    registry = SpaceRegistry(tenancy.engine)
    target = space_for_model(config, "another-model", 8)
    registry.begin("moved", default_space(config), target)
    registry.switch("moved", target)
    tenancy.close()
    graph, vectors = build_ray_stores(config)  # the "app" owns the engines
    try:
        rows = [
            {"cube_id": cube, "user_id": "u", "role": "user", "content": f"{cube} line {n}"}
            for cube in ("moved", "kept")
            for n in range(3)
        ]
        summary = _run(data_dir, "jsonl", _write_jsonl(tmp_path / "in.jsonl", rows))
        assert (summary.memories_written, summary.bad_rows, summary.rows) == (3, 3, 6)
        (refused,) = summary.bad_examples
        assert refused["source"] == "cube:moved" and "jobs.reembed" in refused["error"]
        # Still up, and holding what the job wrote.
        assert vectors.count("kept") == 3 and graph.count("kept") == 3
        assert vectors.count("moved") == 0
    finally:
        graph.close()
        stop_embedded(config)


# -- benchmark files ------------------------------------------------------------------------


def _locomo_slice(path: Path, sessions: int) -> Path:
    conv = json.loads(LOCOMO.read_text())[0]
    dialogue = conv["conversation"]
    keep = {f"session_{n}" for n in range(1, sessions + 1)}
    conv["conversation"] = {
        k: v
        for k, v in dialogue.items()
        if not k.startswith("session_") or k in keep or k.removesuffix("_date_time") in keep
    }
    path.write_text(json.dumps([conv]))
    return path


@pytest.mark.skipif(not LOCOMO.exists(), reason="LoCoMo dev file not found")
@pytest.mark.skipif(not LONGMEMEVAL.exists(), reason="LongMemEval dev file not found")
def test_benchmark_files_and_a_rerun_that_adds_nothing(tmp_path: Path, ray_cluster: None) -> None:
    locomo = _locomo_slice(tmp_path / "locomo.json", sessions=2)
    longmemeval = tmp_path / "lme.json"
    longmemeval.write_text(json.dumps(json.loads(LONGMEMEVAL.read_text())[:3]))
    data_dir = tmp_path / "data"
    for fmt, path, cubes in (("locomo", locomo, 1), ("longmemeval", longmemeval, 3)):
        first = _run(data_dir, fmt, path)
        assert first.cubes == cubes and first.bad_rows == 0
        assert 0 < first.memories_written <= first.rows
        again = _run(data_dir, fmt, path)
        assert (again.memories_written, again.memories_skipped) == (0, first.memories_written)
        assert again.rows == first.rows


# -- the API's fast add ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LocalStack]]:
    """The real app in this process (no Serve) on its own embedded stores."""
    from memos_ray import __version__
    from memos_ray.api.app import create_app
    from memos_ray.api.context import ApiContext
    from tests.fixtures.servers import serve_in_thread

    config = MemosConfig(
        data_dir=tmp_path_factory.mktemp("api"), preference={"backend": "none"}
    ).resolved()
    with LocalStack(config) as stack:
        context = ApiContext.of(stack.services, __version__)
        with serve_in_thread(create_app(lambda: context)) as url:
            yield url, stack


def _add_like_the_bench(url: str, user: str, cube: str, sessions: list[dict[str, Any]]) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=120) as http:
        if cube != user:
            created = http.post("/product/create_cube", json={"owner_id": user, "cube_id": cube})
            assert created.status_code == 200, created.text
        for session in sessions:  # one sync fast add per session, in order
            response = http.post(
                "/product/add",
                json={
                    "user_id": user,
                    "writable_cube_ids": [cube],
                    "session_id": session["session_id"],
                    "messages": session["messages"],
                    **({"tools": session["tools"]} if "tools" in session else {}),
                    "async_mode": "sync",
                    "mode": "fast",
                },
            )
            assert response.status_code == 200, response.text


def _same_memories(api_stack: LocalStack, job_dir: Path, cube: str) -> None:
    job = _stored(job_dir, [cube])[cube]
    api_nodes, _ = api_stack.service.graph.list_nodes(cube)
    api_scan = api_stack.service.vectors.scan(cube)
    assert job["nodes"] and set(job["nodes"]) == {n.id for n in api_nodes}
    for node in api_nodes:
        mine = job["nodes"][node.id]
        assert mine.memory == node.memory
        assert mine.metadata.sources == node.metadata.sources
        for key in ("user_id", "session_id", "memory_type", "tags", "info", "status"):
            assert getattr(mine.metadata, key) == getattr(node.metadata, key), key
    api_points = dict(zip(api_scan.ids, api_scan.payloads, strict=True))
    assert set(job["points"]) == set(api_points)
    for point_id, payload in api_points.items():
        for key in ("text", "memory", "speaker", "role", "chat_time", "memory_type", "session_id"):
            assert job["points"][point_id][key] == payload[key], key


def test_same_memories_as_the_api_fast_add(
    tmp_path: Path, ray_cluster: None, api: tuple[str, LocalStack]
) -> None:
    """Conversation records with names, times, a system message, a blank one and repeats."""
    url, stack = api
    sessions = [
        {
            "session_id": f"s{s}",
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": f"I moved to Lyon in {2020 + s}.", "name": "Ann"},
                {"role": "assistant", "content": "  Nice!  ", "chat_time": "2024-05-0{s}"},
                {"role": "user", "content": "   "},
                {"role": "user", "content": "ok", "message_id": f"m{s}"},
                {"role": "user", "content": "ok", "message_id": f"n{s}"},
            ],
        }
        for s in range(1, 4)
    ]
    # An agent's trace: tool schemas, a failed call and a retry, then the answer.
    sessions[1]["tools"] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    sessions[1]["messages"] += [
        {"role": "user", "content": "What's the weather in Lyon?"},
        _tool_call("call-1", '{"city": "Lyon, FR"}'),
        {"role": "tool", "tool_call_id": "call-1", "content": "Error: unknown city 'Lyon, FR'"},
        _tool_call("call-2", '{"city": "Lyon"}'),
        {"role": "tool", "tool_call_id": "call-2", "content": "18 C, sunny"},
        {"role": "assistant", "content": "It is 18 C and sunny in Lyon."},
    ]
    _add_like_the_bench(url, "ann", "ann-cube", sessions)
    records = [{"user_id": "ann", "cube_id": "ann-cube", **s} for s in sessions]
    data_dir = tmp_path / "job"
    summary = _run(data_dir, "jsonl", _write_jsonl(tmp_path / "conv.jsonl", records))
    assert summary.memories_written > 0
    _same_memories(stack, data_dir, "ann-cube")
    kinds = {
        str(n.metadata.memory_type)
        for n in _stored(data_dir, ["ann-cube"])["ann-cube"]["nodes"].values()
    }
    assert {"ToolSchemaMemory", "ToolTrajectoryMemory"} <= kinds


def _tool_call(call_id: str, arguments: str) -> dict[str, Any]:
    call = {"name": "get_weather", "arguments": arguments}
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": call_id, "type": "function", "function": call}],
    }


@pytest.mark.skipif(not LOCOMO.exists(), reason="LoCoMo dev file not found")
def test_same_memories_as_the_api_on_locomo(
    tmp_path: Path, ray_cluster: None, api: tuple[str, LocalStack]
) -> None:
    from memos_ray.services.ingest.datasets import locomo_cubes

    path = _locomo_slice(tmp_path / "locomo.json", sessions=2)
    (cube,) = locomo_cubes(path)
    sessions = [
        {
            "session_id": s.session_id,
            "messages": [
                {
                    "role": t.role,
                    "content": t.content,
                    "message_id": t.message_id,
                    "name": t.speaker,
                    **({"chat_time": t.chat_time} if t.chat_time else {}),
                }
                for t in s.turns
            ],
        }
        for s in cube.sessions
    ]
    url, stack = api
    _add_like_the_bench(url, "ingest", cube.cube_id, sessions)
    data_dir = tmp_path / "job"
    _run(data_dir, "locomo", path)
    _same_memories(stack, data_dir, cube.cube_id)


# -- killed and run again -------------------------------------------------------------------


def _job_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "jobs.ingest", "--config", str(config), "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


def _wait_group_gone(pgid: int, timeout_s: float = 5.0) -> None:
    """Ray's reaper ends the killed driver's cluster within a second or two, but for two
    agents that linger until they notice (they hold nothing of the data dir): end those."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)
    time.sleep(1)


def _stored_count(port: int, data_dir: Path, cubes: list[str]) -> int | None:
    """Nodes the job's server holds so far (None until it has made its password)."""
    if not (data_dir / PASSWORD_FILE).exists():
        return None
    graph = falkordb_graph_store(FalkorDBAddress("127.0.0.1", port, data_dir_password(data_dir)))
    try:
        return sum(graph.count(c) for c in cubes)
    except Exception:
        return None
    finally:
        graph.close()


def test_killed_job_then_rerun_equals_a_clean_run(tmp_path: Path, ray_cluster: None) -> None:
    rows = _conversations(cubes=3, sessions=3, turns=20)
    source = _write_jsonl(tmp_path / "in.jsonl", rows)
    cubes = [f"conv-{c}" for c in range(3)]
    # Small batches: many writes, so the kill lands between two of them.
    options = {"write_batch": 6, "embed_batch_size": 12}
    clean = _run(tmp_path / "clean", "jsonl", source, **options)
    total = clean.memories_written

    port = quiet_port()
    config = tmp_path / "job.yaml"
    job = {
        "format": "jsonl",
        "input": [str(source)],
        "data_dir": str(tmp_path / "killed"),
        "ceiling_sample": 0,
        **options,
    }
    graph = {"backend": "falkordb", "redis_port": port}
    config.write_text(yaml.safe_dump({"ingest": job, "memos": {"graph": graph}}))
    log = (tmp_path / "killed.log").open("wb")
    proc = subprocess.Popen(
        _job_command(config),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    seen = None
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            seen = _stored_count(port, tmp_path / "killed" / "falkordb", cubes)
            if seen is not None and 0 < seen < total:
                break
            time.sleep(0.2)
        if proc.poll() is not None:
            tail = (tmp_path / "killed.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"the job ended before it could be killed (saw {seen}):\n{tail}")
        assert seen is not None and 0 < seen < total
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        _wait_group_gone(proc.pid)
        log.close()

    # The re-run in this process (the subprocess' own start-up is the clean run's, measured
    # above): the same data dir, a new server port (the graph's password is in the data dir).
    summary = _run(tmp_path / "killed", "jsonl", source, **options)
    assert summary.memories_written + summary.memories_skipped == total
    # Not asserted: memories_skipped > 0. The kill may land between a batch's graph write
    # and its vector write, and then nothing counts as stored yet (which is the point).

    clean_stored, stored = _stored(tmp_path / "clean", cubes), _stored(tmp_path / "killed", cubes)
    clean_nodes, clean_points = _pairs(clean_stored)
    nodes, points = _pairs(stored)
    assert len(clean_nodes) == total
    assert nodes == clean_nodes
    assert points == clean_points
    # Even the arrival order the ranker reads is the clean run's.
    assert _seqs(stored) == _seqs(clean_stored)
