"""jobs.ingest --fine on the session's Ray cluster, real Serve and real embedded stores.

What "the LLM" answers is decided by the scripted TEST DOUBLE deployed as a Serve app
(tests/fixtures/scripted_model.py), where the test must know the facts; the real CPU model
(SmolLM2) runs through the LLM deployment the job deploys for itself in the last test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.ingest import IngestArgs, IngestSummary, run_ingest
from memos_ray.config import MemosConfig
from memos_ray.domain.memory import memory_id_for
from memos_ray.models.chat import ChatRequest
from memos_ray.runtime.compose import LocalStack
from tests.fixtures.scripted_model import scripted_llm_app, scripted_llm_calls

pytestmark = pytest.mark.ray

APP = "scripted-llm"
CUBE = "ann-cube"


def scripted_answers(request: ChatRequest) -> str:
    """One fact per user line ("User said: ..."); a preference where tea is mentioned; no
    readable answer at all for a window that says BROKEN."""
    window = request.messages[1].content
    if "BROKEN" in window:
        return "I am not going to answer in JSON."
    said = [line.split(": ", 1)[1] for line in window.splitlines()[1:] if line.startswith("user")]
    preferences = [
        {"preference": "The user prefers tea to coffee.", "kind": "explicit", "topic": "drinks"}
        for line in said
        if "tea" in line
    ]
    return json.dumps(
        {
            "memories": [
                {"key": s[:16], "memory_type": "UserMemory", "value": f"User said: {s}", "tags": []}
                for s in said
            ],
            "preferences": preferences,
            "summary": "A chat.",
        }
    )


def _records() -> list[dict[str, Any]]:
    sessions = {
        "s1": [
            "I adopted a dog named Rex.",
            "Lovely!",
            "I prefer tea to coffee.",
            "Noted.",
            "My sister lives in Boston.",
            "Nice.",
        ],
        "s2": ["I adopted a dog named Rex.", "You told me!"],  # the same fact, again
        "s3": ["BROKEN", "Hm."],
    }
    return [
        {
            "cube_id": CUBE,
            "user_id": "ann",
            "session_id": session,
            "role": "user" if n % 2 == 0 else "assistant",
            "content": content,
            "message_id": f"{session}-{n}",
        }
        for session, contents in sessions.items()
        for n, content in enumerate(contents)
    ]


def _run(data_dir: Path, source: Path, **options: Any) -> IngestSummary:
    memos = options.pop("memos", {})
    args = IngestArgs(
        format="jsonl",
        input=[str(source)],
        data_dir=str(data_dir),
        ceiling_sample=0,
        progress=False,
        fine=True,
        memos={"fine": {"window_messages": 4}, **memos},
        **options,
    )
    return run_ingest(args)


def _stored(data_dir: Path) -> dict[str, Any]:
    config = MemosConfig(data_dir=data_dir, preference={"backend": "none"}).resolved()
    with LocalStack(config) as stack:
        nodes, _ = stack.service.graph.list_nodes(CUBE)
        scan = stack.service.vectors.scan(CUBE)
        return {
            "nodes": {n.id: n for n in nodes},
            "points": set(scan.ids),
            "edges": stack.service.graph.get_edges(CUBE),
            "usage": stack.tenancy.llm_usage(CUBE),
            "tasks": [t for t in _task_store(stack).find(cube_id=CUBE) if t.label == "pref_add"],
        }


def _task_store(stack: LocalStack) -> Any:
    from memos_ray.stores.sql.tasks import SQLTaskStore

    return SQLTaskStore(stack.tenancy.engine)


@pytest.fixture(scope="module")
def scripted_llm(ray_cluster: None) -> Iterator[str]:
    with scripted_llm_app(APP, scripted_answers) as app:
        yield app


def test_each_window_is_read_once_and_a_rerun_writes_only_what_is_missing(
    tmp_path: Path, scripted_llm: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    data_dir = tmp_path / "data"
    calls_before = scripted_llm_calls(scripted_llm)

    first = _run(data_dir, source, llm_app=scripted_llm)
    fine = first.fine
    assert fine is not None and fine.llm == f"serve:{APP}"
    # s1 gives two windows of 4 and 2 turns, s2 and s3 one each; BROKEN fails twice.
    assert (fine.windows, fine.read, fine.reused, fine.failed) == (4, 4, 0, 1)
    assert fine.llm_calls == 5 == scripted_llm_calls(scripted_llm) - calls_before
    # 10 turns, one of them said twice: 9 turn memories; 3 facts (the dog's told twice).
    assert (fine.memories_written, first.memories_written) == (3, 12)
    assert fine.preference_tasks == 1

    stored = _stored(data_dir)
    facts = {n.memory: n for n in stored["nodes"].values() if "mode:fine" in n.metadata.tags}
    dog = facts["User said: I adopted a dog named Rex."]
    assert set(facts) == {
        "User said: I adopted a dog named Rex.",
        "User said: I prefer tea to coffee.",
        "User said: My sister lives in Boston.",
    }
    assert {s.message_id for s in dog.metadata.sources} == {
        "s1-0",
        "s1-1",
        "s1-2",
        "s1-3",
        "s2-0",
        "s2-1",
    }
    assert stored["points"] == set(stored["nodes"])
    # Each fact links (MATERIAL) to the turn memories it was read from.
    material = {(e.source, e.target) for e in stored["edges"] if str(e.type) == "MATERIAL"}
    boston = facts["User said: My sister lives in Boston."]
    turn_ids = {
        memory_id_for(CUBE, t) for t in ("user: My sister lives in Boston.", "assistant: Nice.")
    }
    assert {t for s, t in material if s == boston.id} == turn_ids
    assert len(material) == first.fine.edges == 5 + 4 + 2
    assert stored["usage"].calls == 5
    (task,) = stored["tasks"]
    (batch,) = task.payload["batches"]
    assert batch["preferences"][0]["preference"] == "The user prefers tea to coffee."
    assert sorted(batch["memory_ids"]) == sorted(
        [dog.id, facts["User said: I prefer tea to coffee."].id]
    )

    # Again, as after a run killed once every answer was recorded but before two facts were
    # stored (their vector points are what marks them stored): nothing is asked, those two
    # are written, and no LLM is even deployed (no app named: the job would deploy its own
    # on demand, and none is needed).
    config = MemosConfig(data_dir=data_dir, preference={"backend": "none"}).resolved()
    with LocalStack(config) as stack:
        stack.service.vectors.delete(CUBE, [dog.id, boston.id])
    again = _run(data_dir, source)
    assert again.fine is not None and again.fine.llm.startswith("none")
    assert (again.fine.read, again.fine.reused, again.fine.llm_calls) == (0, 4, 0)
    assert (again.fine.memories_written, again.memories_written) == (2, 2)
    assert again.memories_skipped == 10
    assert scripted_llm_calls(scripted_llm) - calls_before == 5
    after = _stored(data_dir)
    assert after["points"] == stored["points"] and set(after["nodes"]) == set(stored["nodes"])
    assert len(after["tasks"]) == 1  # queued once, whatever the re-runs


def test_through_the_real_model_in_a_deployment_of_its_own(
    tmp_path: Path, ray_cluster: None, llm_models_dir: Path
) -> None:
    """No LLM app named and no service running: the job deploys the configured model
    (SmolLM2 on CPU) for itself and removes it after. Without kept turns, whatever the
    small model answers, each window ends as facts or as its own text: nothing is lost."""
    from ray import serve

    from memos_ray.runtime.jobs_llm import JOB_LLM_APP

    records = [r for r in _records() if r["session_id"] == "s2"]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    data_dir = tmp_path / "data"
    memos = {
        "llm": {"backend": "transformers", "models_dir": str(llm_models_dir)},
        "fine": {"window_messages": 4, "keep_turns": False, "max_tokens": 48, "max_attempts": 1},
    }
    summary = _run(data_dir, source, memos=memos)
    fine = summary.fine
    assert fine is not None and fine.llm == f"serve:{JOB_LLM_APP}"
    assert (fine.windows, fine.read, fine.llm_calls) == (1, 1, 1)
    assert fine.completion_tokens > 0
    assert JOB_LLM_APP not in serve.status().applications
    nodes = list(_stored(data_dir)["nodes"].values())
    assert summary.memories_written == len(nodes) > 0
    if fine.failed or fine.empty:
        (raw,) = nodes
        assert raw.memory == "user: I adopted a dog named Rex.\nassistant: You told me!"
        assert ("fine:failed" in raw.metadata.tags) == bool(fine.failed)
    else:
        assert all("mode:fine" in n.metadata.tags for n in nodes)
