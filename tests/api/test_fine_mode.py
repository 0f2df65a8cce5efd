"""Fine mode on real stores: extraction, JSON repair, raw fallback, dates, merge, archive.

The LLM is the scripted TEST DOUBLE (tests/fixtures/scripted_model.py) where a test needs an
exact answer, and the real SmolLM2 where only the wiring is checked.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from memos_ray.config import MemosConfig
from memos_ray.core.reader import Turn, fast_windows
from memos_ray.domain.memory import MemoryStatus
from memos_ray.models.embedder import SentenceTransformerEmbedder
from memos_ray.runtime.compose import LocalStack
from memos_ray.services.fine import FineService
from memos_ray.services.memory import SearchOptions
from tests.fixtures.scripted_model import ScriptedChatModel


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder
) -> Iterator[LocalStack]:
    config = MemosConfig(data_dir=tmp_path_factory.mktemp("fine")).resolved()
    with LocalStack(config, embedder=embedder) as local:
        yield local


def _window(text: str, when: str = "2023-05-08T13:56:00", speaker: str = "Melanie"):
    turn = Turn(
        role="user", content=text, chat_time=when, message_id=uuid.uuid4().hex, name=speaker
    )
    return fast_windows([turn], 8, 4000)


def _answer(*memories: str, summary: str = "A chat.") -> str:
    return json.dumps(
        {
            "memories": [
                {"key": m[:20], "memory_type": "UserMemory", "value": m, "tags": ["life"]}
                for m in memories
            ],
            "summary": summary,
        }
    )


def _cube() -> str:
    return f"fine-{uuid.uuid4().hex[:8]}"


def test_valid_json_becomes_fine_memories(stack: LocalStack) -> None:
    cube = _cube()
    model = ScriptedChatModel([_answer("Melanie painted a sunrise in May 2023.", summary="Art.")])
    outcome = FineService(stack.service, model).add(cube, "mel", _window("I painted a sunrise!"))
    assert [i.memory for i in outcome.stored] == ["Melanie painted a sunrise in May 2023."]
    item = outcome.stored[0]
    assert "mode:fine" in item.metadata.tags and item.metadata.background == "Art."
    assert item.metadata.sources[0].content == "I painted a sunrise!"  # provenance kept
    assert outcome.calls == 1 and outcome.usage.completion_tokens > 0
    found = stack.service.search("sunrise painting", {cube: None}, SearchOptions(relativity=0))
    assert found[cube][0].id == item.id


def test_broken_json_is_repaired(stack: LocalStack) -> None:
    broken = (
        "Sure! Here are the memories:\n```json\n"
        "{'memories': [{'key': 'pet', 'memory_type': 'UserMemory', "
        "'value': 'Melanie\\'s cat is called Oliver', 'tags': ['pets'],},],\n"
        "'summary': 'Pets'\n```"
    )
    outcome = FineService(stack.service, ScriptedChatModel([broken])).add(
        _cube(), "mel", _window("My cat Oliver is sweet")
    )
    assert [i.memory for i in outcome.stored] == ["Melanie's cat is called Oliver"]
    assert outcome.calls == 1 and not outcome.errors


def test_json_that_never_parses_keeps_the_raw_memory(stack: LocalStack) -> None:
    cube = _cube()
    model = ScriptedChatModel(["I think she likes cats.", "Still not JSON, sorry!"])
    outcome = FineService(stack.service, model, max_attempts=2).add(
        cube, "mel", _window("I love my two cats.")
    )
    assert not outcome.stored and len(outcome.raw_kept) == 1 and len(outcome.errors) == 1
    raw = outcome.raw_kept[0]
    assert "I love my two cats." in raw.memory and "fine:failed" in raw.metadata.tags
    assert "attempt 2" in raw.metadata.info["fine_error"]
    # The second attempt showed the model its unreadable answer and asked again.
    assert model.requests[1].messages[-2].content == "I think she likes cats."
    page, _ = stack.service.get_page(cube)
    assert [i.id for i in page] == [raw.id]


def test_an_unreadable_window_of_stored_turns_writes_nothing(stack: LocalStack) -> None:
    """An async add's fast memories are the raw record: a failed reading of them (keep_raw
    false) must not write the window again, or it would bring back a turn the user deleted
    while the LLM was reading it (seen under load in bench chaos)."""
    cube = _cube()
    window = _window("I sold my bike yesterday.")
    stored = stack.service.add_windows(cube, "mel", window).stored
    assert stack.service.delete(cube, [i.id for i in stored])  # deleted during the reading
    model = ScriptedChatModel(["not JSON", "still not JSON"])
    outcome = FineService(stack.service, model, max_attempts=2).add(
        cube, "mel", window, keep_raw=False
    )
    assert outcome.errors and not outcome.raw_kept and not outcome.stored
    assert stack.service.get_page(cube)[1] == 0


def test_relative_date_is_resolved_against_chat_time(stack: LocalStack) -> None:
    model = ScriptedChatModel([_answer("Melanie went to the park yesterday.")])
    outcome = FineService(stack.service, model).add(
        _cube(), "mel", _window("I went to the park yesterday", when="2023-05-08T13:56:00")
    )
    assert outcome.stored[0].memory == "Melanie went to the park on 7 May 2023."


def test_duplicates_merge_exactly_and_by_judgement(stack: LocalStack) -> None:
    cube = _cube()
    first = FineService(
        stack.service, ScriptedChatModel([_answer("Caroline adopted a dog named Rex.")])
    )
    original = first.add(cube, "car", _window("We adopted Rex!", speaker="Caroline")).stored[0]

    # The same text again: merged by id, no judgement asked (one call: the extraction).
    again = ScriptedChatModel([_answer("Caroline adopted a dog named Rex.")])
    exact = FineService(stack.service, again).add(
        cube, "car", _window("Rex is ours", speaker="Caroline")
    )
    assert not exact.stored and [m.id for m in exact.merged] == [original.id]
    assert len(again.requests) == 1

    # Other words, same fact: the judge says duplicate of existing memory 0.
    judged = ScriptedChatModel(
        [_answer("Caroline has adopted a dog called Rex."), '{"relation": "duplicate", "index": 0}']
    )
    outcome = FineService(stack.service, judged).add(
        cube, "car", _window("Our new dog Rex", speaker="Caroline")
    )
    assert not outcome.stored and [m.id for m in outcome.merged] == [original.id]
    assert "Caroline adopted a dog named Rex." in judged.requests[1].messages[-1].content
    stored = stack.service.get_by_ids([cube], [original.id])[0]
    assert len(stored.metadata.sources) == 3 and stored.metadata.version == 3
    assert [h.version for h in stored.metadata.history] == [1, 2]
    assert stack.service.get_page(cube)[1] == 1  # still one memory


def test_contradiction_archives_the_old_memory(stack: LocalStack) -> None:
    cube = _cube()
    old = (
        FineService(stack.service, ScriptedChatModel([_answer("Caroline lives in Boston.")]))
        .add(cube, "car", _window("I live in Boston", speaker="Caroline"))
        .stored[0]
    )
    model = ScriptedChatModel(
        [_answer("Caroline lives in Denver now."), '{"relation": "contradiction", "index": 0}']
    )
    outcome = FineService(stack.service, model).add(
        cube, "car", _window("We moved to Denver", speaker="Caroline")
    )
    new = outcome.stored[0]
    assert [a.id for a in outcome.archived] == [old.id]
    archived = stack.service.get_by_ids([cube], [old.id])[0]
    assert archived.metadata.status == MemoryStatus.ARCHIVED
    assert archived.metadata.history[-1].memory == "Caroline lives in Boston."
    assert archived.metadata.history[-1].version == 1 and archived.metadata.version == 2
    edges = stack.service.graph.get_edges(cube, [old.id])
    assert [(e.source, e.target, e.type) for e in edges] == [(old.id, new.id, "MERGED_TO")]
    hits = stack.service.search(
        "Where does Caroline live?", {cube: None}, SearchOptions(relativity=0)
    )
    assert [h.id for h in hits[cube]] == [new.id]


def test_unreadable_judgement_keeps_both(stack: LocalStack) -> None:
    cube = _cube()
    FineService(stack.service, ScriptedChatModel([_answer("Jon plays the guitar.")])).add(
        cube, "jon", _window("I play guitar", speaker="Jon")
    )
    model = ScriptedChatModel([_answer("Jon plays the electric guitar."), "hmm, maybe"])
    outcome = FineService(stack.service, model).add(
        cube, "jon", _window("electric!", speaker="Jon")
    )
    assert len(outcome.stored) == 1 and not outcome.archived and not outcome.merged
    assert stack.service.get_page(cube)[1] == 2


def test_real_model_runs_fine_mode_without_losing_anything(
    stack: LocalStack, smollm2_dir: Path
) -> None:
    from memos_ray.models.hf_chat import TransformersChatModel

    model = TransformersChatModel(smollm2_dir, served_name="smol")
    cube = _cube()
    windows = _window("I just started learning the violin, my teacher is called Ana.")
    outcome = FineService(stack.service, model, max_tokens=96).add(cube, "ines", windows)
    assert outcome.calls >= 1 and outcome.usage.prompt_tokens > 0
    # Either distilled memories or the raw window with the error: never nothing.
    assert outcome.stored or outcome.merged or outcome.raw_kept
    assert stack.service.get_page(cube)[1] >= 1


def test_preferences_left_to_a_pref_add_task_are_stored_once(stack: LocalStack) -> None:
    """Without a preference service FineService hands the preferences back; the scheduler's
    `pref_add` handler stores them, and running it again (a retry) changes nothing."""
    from memos_ray.scheduler.context import HandlerContext
    from memos_ray.scheduler.tasks import pref_add
    from memos_ray.stores.sql.tasks import Task

    assert stack.preferences is not None
    cube = _cube()
    answer = json.dumps(
        {
            "memories": [{"value": "Rosa booked a flight to Oslo.", "memory_type": "UserMemory"}],
            "preferences": [{"preference": "Rosa prefers aisle seats", "kind": "explicit"}],
            "summary": "",
        }
    )
    outcome = FineService(stack.service, ScriptedChatModel([answer])).add(
        cube, "rosa", _window("Book me Oslo, aisle seat as always.", speaker="Rosa")
    )
    assert outcome.preferences == [] and not stack.preferences.search([cube], "seats", 5)[cube]
    [batch] = outcome.unstored_preferences
    assert batch.memory_ids == [outcome.stored[0].id]
    context = HandlerContext(stack.config)
    context._services = stack.services  # as the composition root built them
    task = Task(
        task_id="t1",
        cube_id=cube,
        user_id="rosa",
        label="pref_add",
        payload={"batches": [batch.model_dump(mode="json")]},
        state="in_progress",
        attempts=1,
        max_attempts=3,
        seq=1,
        not_before="",
        created_at="",
        updated_at="",
    )
    first = pref_add(task, context)
    again = pref_add(task, context)
    assert first["stored"] == again["stored"] == 1
    assert first["preference_ids"] == again["preference_ids"]
    [found] = stack.preferences.search([cube], "which seat does Rosa like", 5)[cube]
    assert found.preference == "Rosa prefers aisle seats"
    assert found.source_memory_ids == [outcome.stored[0].id]


def test_mem_organize_task_merges_duplicates_and_builds_the_tree_once(stack: LocalStack) -> None:
    """The scheduler's `mem_organize` handler on real stores (rules only, no LLM): an exact
    duplicate written differently is archived into the older memory, every memory gets one
    topic parent, and a second run (a retry) changes nothing."""
    from memos_ray.core.reader import Window
    from memos_ray.domain.memory import MemoryType
    from memos_ray.scheduler.context import HandlerContext
    from memos_ray.scheduler.tasks import mem_organize
    from memos_ray.stores.sql.tasks import Task

    cube = _cube()
    texts = ["Rosa lives in Oslo.", "Rosa plays the cello.", "rosa lives in oslo"]
    for text in texts:  # one by one: the first is the older
        window = Window(text=text, memory_type=MemoryType.USER, sources=[], mode="fine")
        stack.service.add_windows(cube, "rosa", [window])
    rules_only = stack.config.reorganize.model_copy(update={"llm": "none"})
    context = HandlerContext(stack.config.model_copy(update={"reorganize": rules_only}))
    context._services = stack.services
    task = Task(
        task_id="o1",
        cube_id=cube,
        user_id="rosa",
        label="mem_organize",
        payload={},
        state="in_progress",
        attempts=1,
        max_attempts=3,
        seq=1,
        not_before="",
        created_at="",
        updated_at="",
    )
    first = mem_organize(task, context)
    assert first["merged"] == 1 and first["topics"] >= 1
    again = mem_organize(task, context)
    assert again["merged"] == again["archived"] == again["topics_created"] == 0
    items, edges = stack.service.get_graph(cube)
    by_text = {i.memory: i for i in items}
    assert by_text["rosa lives in oslo"].metadata.status == MemoryStatus.ARCHIVED
    assert by_text["Rosa lives in Oslo."].metadata.status == MemoryStatus.ACTIVATED
    active = {i.id for i in items if i.metadata.status == MemoryStatus.ACTIVATED}
    parents = [e.target for e in edges if e.type == "PARENT" and e.target in active]
    assert sorted(parents) == sorted(
        active - {i.id for i in items if i.metadata.memory_type == MemoryType.TOPIC}
    )
