"""The ingest job's pure logic: records to units (with the line of every bad one), and a
cube's units to the memories the API's fast add would store."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.ingest import parse_args
from memos_ray.domain.memory import EdgeType, MemoryType, memory_id_for
from memos_ray.services.ingest.cutting import cut_cube
from memos_ray.services.ingest.formats import BadRecord, Unit, input_files, read_units

GOOD = [
    {"cube_id": "c1", "user_id": "u1", "session_id": "s1", "role": "user", "content": "Hi"},
    {"user_id": "u2", "role": "assistant", "content": "Hello", "name": "Bot"},
    {
        "cube_id": "c1",
        "session_id": "s2",
        "messages": [{"role": "user", "content": "I like tea", "chat_time": "2024-01-02"}],
        "tags": ["import"],
    },
    {"cube_id": "c1", "name": "notes.md", "text": "First.\n\nSecond.", "file_id": "f1"},
]


def _units(path: Path, fmt: str) -> tuple[list[Unit], list[BadRecord]]:
    units: list[Unit] = []
    bad: list[BadRecord] = []
    for entry in read_units(path, 0, fmt, "job-user"):
        (bad if isinstance(entry, BadRecord) else units).append(entry)  # type: ignore[arg-type]
    return units, bad


def test_jsonl_kinds_defaults_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [json.dumps(r) for r in GOOD]
    lines.insert(1, "{not json")  # line 2
    lines.insert(3, "")  # line 4: blank, skipped without a complaint
    lines.append(json.dumps({"role": "robot", "content": "x"}))  # line 7
    lines.append(json.dumps({"role": "user"}))  # line 8: no content
    lines.append(json.dumps(["a", "list"]))  # line 9
    lines.append(json.dumps({"role": "user", "content": "x", "colour": "red"}))  # line 10
    path.write_text("\n".join(lines) + "\n")

    units, bad = _units(path, "jsonl")
    assert [b.line for b in bad] == [2, 7, 8, 9, 10]
    assert all(b.source == str(path) for b in bad)
    assert "not JSON" in bad[0].error
    assert "role" in bad[1].error and "content" in bad[2].error
    assert "colour" in bad[4].error  # a misspelt field is reported, not ignored

    message, default_scope, conversation, document = units
    assert (message.kind, message.cube_id, message.user_id, message.order) == (
        "message",
        "c1",
        "u1",
        (0, 1),
    )
    # No cube: the user's own cube, as in the API; no user: the job's user.
    assert (default_scope.cube_id, default_scope.user_id) == ("u2", "u2")
    assert default_scope.session_id == "default_session"
    assert (conversation.kind, conversation.user_id, conversation.tags) == (
        "conversation",
        "job-user",
        ["import"],
    )
    assert document.kind == "document" and document.document is not None
    assert document.document.file_id == "f1"


def test_parquet_rows_with_every_kinds_columns(tmp_path: Path) -> None:
    """A Parquet file mixing kinds has every column; nulls there mean absent."""
    rows = [dict(r) for r in GOOD if "messages" not in r] + [{"role": "user", "content": None}]
    columns = sorted({k for r in rows for k in r})
    table = pa.table({c: [r.get(c) for r in rows] for c in columns})
    path = tmp_path / "in.parquet"
    pq.write_table(table, path)
    units, bad = _units(path, "parquet")
    assert [u.kind for u in units] == ["message", "message", "document"]
    assert [(b.line, "content" in b.error) for b in bad] == [(4, True)]


def test_input_files_are_sorted_and_checked(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text("")
    (tmp_path / "a.jsonl").write_text("")
    (tmp_path / "skip.txt").write_text("")
    assert [p.name for p in input_files([str(tmp_path)], "jsonl")] == ["a.jsonl", "b.jsonl"]
    with pytest.raises(FileNotFoundError):
        input_files([str(tmp_path / "missing.jsonl")], "jsonl")


def _turn(role: str, content: str, **extra: str) -> dict[str, str]:
    return {"role": role, "content": content, **extra}


def test_cut_follows_the_api_rules() -> None:
    """Within one add a repeated text keeps every source; a later add's repeat is a duplicate;
    system and blank messages are left out; message records join per session in order."""
    first = Unit.model_validate(
        {
            "cube_id": "c",
            "user_id": "u",
            "session_id": "s1",
            "order": (0, 1),
            "turns": [
                _turn("system", "be nice"),
                _turn("user", "  same words  ", message_id="m1"),
                _turn("assistant", "   "),
                _turn("user", "same words", message_id="m2"),
            ],
        }
    )
    later = Unit.model_validate(
        {
            "cube_id": "c",
            "user_id": "u",
            "session_id": "s2",
            "order": (0, 2),
            "turns": [_turn("user", "same words", message_id="m3"), _turn("user", "new")],
        }
    )
    messages = [
        Unit.model_validate(
            {
                "cube_id": "c",
                "user_id": "u",
                "session_id": "s3",
                "order": (1, line),
                "kind": "message",
                "turns": [_turn("user", text)],
            }
        )
        for line, text in ((9, "third"), (3, "first"), (5, "second"))
    ]
    cut = cut_cube("c", [*messages, later, first])
    texts = [m.item.memory for m in cut.memories]
    assert texts == ["user: same words", "user: new", "user: first", "user: second", "user: third"]
    assert [m.seq for m in cut.memories] == [0, 1, 2, 3, 4]
    kept = cut.memories[0].item
    assert kept.id == memory_id_for("c", "user: same words")
    assert [s.message_id for s in kept.metadata.sources] == ["m1", "m2"]
    assert kept.metadata.session_id == "s1"
    assert kept.metadata.memory_type == MemoryType.USER
    assert cut.memories[0].text == "same words"  # what is embedded: what was said
    assert cut.records == 5  # two conversation records and three message records
    with pytest.raises(ValueError):
        cut_cube("other", [first])


def test_document_chunks_and_their_order_edges() -> None:
    text = "\n\n".join(f"Paragraph {n} " + "word " * 60 for n in range(6))
    unit = Unit.model_validate(
        {
            "cube_id": "c",
            "user_id": "u",
            "order": (0, 1),
            "kind": "document",
            "document": {"name": "doc.md", "text": text},
        }
    )
    cut = cut_cube("c", [unit], chunk_chars=700)
    chunks = [m.item for m in cut.memories]
    assert len(chunks) >= 3
    assert all(c.metadata.memory_type == MemoryType.RAW_FILE for c in chunks)
    assert chunks[0].memory.startswith(f"doc.md (1/{len(chunks)}):")
    following = [(e.source, e.target) for e in cut.edges if e.type == EdgeType.FOLLOWING]
    preceding = [(e.source, e.target) for e in cut.edges if e.type == EdgeType.PRECEDING]
    pairs = [(a.id, b.id) for a, b in itertools.pairwise(chunks)]
    assert following == pairs
    assert preceding == [(b, a) for a, b in pairs]


def test_config_file_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(
        "ingest:\n  format: jsonl\n  input: [a.jsonl]\n  write_batch: 64\n  actors: 2\n"
        "memos:\n  reader:\n    window_messages: 2\n"
    )
    args = parse_args(["--config", str(config), "--actors", "3", "--data-dir", "/d"])
    assert (args.format, args.input, args.write_batch, args.actors) == ("jsonl", ["a.jsonl"], 64, 3)
    assert args.memos == {"reader": {"window_messages": 2}} and args.data_dir == "/d"
    serve = tmp_path / "serve.yaml"
    serve.write_text(
        "applications:\n  - name: memos\n    args:\n      config:\n        embedder:\n"
        "          batch_size: 32\n"
    )
    args = parse_args(["--config", str(serve), "--format", "locomo", "--input", "x.json"])
    assert args.memos == {"embedder": {"batch_size": 32}}
    with pytest.raises(SystemExit):
        parse_args(["--format", "csv", "--input", "x"])


def test_what_the_user_must_fix_is_said_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked before any cluster starts or anything is written."""
    from jobs.ingest import main

    monkeypatch.delenv("MEMOS_SQL__URL", raising=False)
    monkeypatch.delenv("MEMOS_LLM__BACKEND", raising=False)

    assert main(["--format", "jsonl", "--input", str(tmp_path / "missing.jsonl")]) == 2
    assert "error: input" in capsys.readouterr().err
    source = tmp_path / "in.jsonl"
    source.write_text('{"role": "user", "content": "hi"}\n')
    data_dir = tmp_path / "data"
    config = tmp_path / "job.yaml"
    config.write_text("memos:\n  llm:\n    backend: none\n")
    flags = ["--format", "jsonl", "--input", str(source), "--data-dir", str(data_dir)]
    assert main([*flags, "--config", str(config), "--fine"]) == 2
    assert "--fine needs a chat model" in capsys.readouterr().err
    config.write_text("memos:\n  sql:\n    require_server: true\n")
    assert main([*flags, "--config", str(config)]) == 2
    assert "MEMOS_SQL__URL" in capsys.readouterr().err
    assert not data_dir.exists()


def test_bench_projection_arithmetic() -> None:
    """The GPUs or the CPU side, whichever is slower, bound the projected time."""
    from memos_ray.bench.ingest_job import projection

    figures = {
        "rows": 1000,
        "memories_written": 990,
        "job_cpu_ms_per_memory": 20.0,
        "embedder_cpu_ms_per_text": 15.0,  # 5 ms a memory outside embedding
    }
    gpu_bound = projection(figures, 10_000_000, workers=2, gpu_rate=1000, cpu_cores=64)
    assert gpu_bound["memories_per_s"] == 2000  # the CPU side could do 64 / 5 ms = 12,800
    assert gpu_bound["seconds"] == 10_000_000 * 0.99 / 2000
    cpu_bound = projection(figures, 10_000_000, workers=8, gpu_rate=10_000, cpu_cores=64)
    assert cpu_bound["cpu_side_per_s"] == 12_800 and cpu_bound["memories_per_s"] == 12_800
    assert cpu_bound["seconds"] == round(10_000_000 * 0.99 / 12_800, 1)
