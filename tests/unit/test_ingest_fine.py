"""Fine ingest's pure part: windows, memories derived from recorded answers, the ledger."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine

from memos_ray.config import FineConfig, ReaderConfig
from memos_ray.core.reader import Turn, render_turn
from memos_ray.domain.memory import MemoryItem, MemoryType, memory_id_for
from memos_ray.services.fine_reader import ExtractedMemory, ExtractedPreference
from memos_ray.services.ingest.extractions import ExtractionLedger
from memos_ray.services.ingest.fine import FineRecord, FineWindow, fine_memories, fine_windows
from memos_ray.services.ingest.formats import DocumentPart, TurnRecord, Unit

CUBE = "cube-a"


def _conversation(session: str, order: int, contents: list[str]) -> Unit:
    turns = [
        TurnRecord(
            role="user" if n % 2 == 0 else "assistant", content=c, message_id=f"{session}{n}"
        )
        for n, c in enumerate(contents)
    ]
    return Unit(cube_id=CUBE, user_id="ann", session_id=session, order=(0, order), turns=turns)


def _document(order: int) -> Unit:
    text = "\n\n".join(f"Part {n}. " + "words " * 200 for n in range(3))
    return Unit(
        cube_id=CUBE,
        user_id="ann",
        order=(0, order),
        kind="document",
        document=DocumentPart(name="guide.md", text=text),
    )


def test_windows_cover_the_turn_memories_and_chunks() -> None:
    said = [f"line {n}" for n in range(10)]
    units = [_conversation("s1", 1, said), _conversation("s2", 2, ["hi", "hello"]), _document(3)]
    windows = fine_windows(CUBE, units, FineConfig(window_messages=4), ReaderConfig())
    talk = [w for w in windows if w.document is None]
    chunks = [w for w in windows if w.document == "guide.md"]
    assert [len(w.sources) for w in talk] == [4, 4, 2, 2]
    # Each window covers the one-turn memories the fast pass stores for its turns.
    first_turns = [
        Turn(role="user" if n % 2 == 0 else "assistant", content=said[n], message_id=f"s1{n}")
        for n in range(4)
    ]
    assert talk[0].covers == [memory_id_for(CUBE, render_turn(t)) for t in first_turns]
    assert talk[0].session_id == "s1" and talk[3].session_id == "s2"
    assert len(chunks) >= 2 and all(w.memory_type == MemoryType.RAW_FILE for w in chunks)
    assert all(w.covers == [memory_id_for(CUBE, w.text)] for w in chunks)
    # The same window text again (another session) is read once: the first one's.
    again = fine_windows(
        CUBE,
        [*units, _conversation("s3", 4, ["hi", "hello"])],
        FineConfig(window_messages=4),
        ReaderConfig(),
    )
    assert [w.window_id for w in again] == [w.window_id for w in windows]


def _window(name: str, session: str = "s1", document: str | None = None) -> FineWindow:
    return FineWindow(
        window_id=f"w-{name}",
        user_id="ann",
        session_id=session,
        text=f"ann: text of {name}",
        memory_type=MemoryType.USER,
        sources=[{"type": "chat", "role": "user", "content": f"text of {name}"}],
        covers=[f"turn-{name}"],
        document=document,
    )


def _fact(value: str) -> ExtractedMemory:
    return ExtractedMemory(key="k", memory_type="UserMemory", value=value, tags=["t"])


def test_memories_from_records() -> None:
    windows = [_window("a"), _window("b"), _window("c"), _window("d"), _window("e")]
    records = {
        "w-a": FineRecord(
            memories=[_fact("Ann lives in Lyon."), _fact("Ann has a cat.")],
            preferences=[ExtractedPreference(preference="Ann likes tea")],
            summary="About Ann.",
        ),
        "w-b": FineRecord(memories=[_fact("Ann lives in Lyon.")]),  # the same fact again
        "w-c": FineRecord(error="attempt 2: not JSON"),
        "w-d": FineRecord(),  # nothing worth remembering
        # w-e: never answered (a run killed before it): gives nothing yet
    }
    kept = fine_memories(CUBE, windows, records, keep_turns=True)
    assert [i.memory for i in kept.items] == ["Ann lives in Lyon.", "Ann has a cat."]
    lyon = kept.items[0]
    assert lyon.id == memory_id_for(CUBE, "Ann lives in Lyon.")
    assert "mode:fine" in lyon.metadata.tags and lyon.metadata.background == "About Ann."
    assert [s.content for s in lyon.metadata.sources] == ["text of a", "text of b"]
    assert {(e.target, str(e.type)) for e in kept.links[lyon.id]} == {
        ("turn-a", "MATERIAL"),
        ("turn-b", "MATERIAL"),
    }
    assert (kept.failed, kept.empty) == (1, 1)
    ((window_id, batch),) = kept.preferences
    assert window_id == "w-a" and batch.memory_ids == [i.id for i in kept.items]

    alone = fine_memories(CUBE, windows, records, keep_turns=False)
    raw = [i for i in alone.items if "mode:fine" not in i.metadata.tags]
    assert [i.memory for i in raw] == ["ann: text of c", "ann: text of d"]
    assert "fine:failed" in raw[0].metadata.tags
    assert raw[0].metadata.info["fine_error"] == "attempt 2: not JSON"
    assert "fine:failed" not in raw[1].metadata.tags
    assert all(not alone.links[i.id] for i in alone.items)  # no turns stored to link to

    # The records alone decide: any order of arrival gives the same memories.
    shuffled = dict(reversed(list(records.items())))
    same = fine_memories(CUBE, windows, shuffled, keep_turns=True)
    assert [_content(i) for i in same.items] == [_content(i) for i in kept.items]


def _content(item: MemoryItem) -> dict[str, object]:
    """All but the clock (when it was made)."""
    dumped = item.model_dump()
    for key in ("created_at", "updated_at"):
        dumped["metadata"].pop(key, None)
    return dumped


def test_document_facts_and_summary_link_to_chunks() -> None:
    windows = [_window("p1", document="guide.md"), _window("p2", document="guide.md")]
    records = {
        "w-p1": FineRecord(memories=[_fact("The guide covers setup.")], summary="Setup."),
        "w-p2": FineRecord(memories=[_fact("The guide covers upgrades.")], summary="Upgrades."),
    }
    made = fine_memories(CUBE, windows, records, keep_turns=False)
    summary = made.items[-1]
    assert summary.memory == "Summary of guide.md: Setup. Upgrades."
    assert {(e.target, str(e.type)) for e in made.links[summary.id]} == {
        ("turn-p1", "SUMMARY"),
        ("turn-p2", "SUMMARY"),
    }
    # Facts read from a chunk link to it even when turns are not kept.
    assert [str(e.type) for e in made.links[made.items[0].id]] == ["MATERIAL"]


def test_ledger_keeps_the_first_answer(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = ExtractionLedger(engine)
    first = FineRecord(memories=[_fact("one")]).model_dump_json()
    second = FineRecord(memories=[_fact("two")]).model_dump_json()
    assert ledger.record(CUBE, {"w1": first}) == {"w1": first}
    # A racing attempt's answer loses to the recorded one.
    assert ledger.record(CUBE, {"w1": second, "w2": second}) == {"w1": first, "w2": second}
    again = ExtractionLedger(engine)  # the table exists: created once
    assert again.get_many(["w1", "w2", "w3"]) == {"w1": first, "w2": second}
    assert again.count(CUBE) == 2 and again.count("other") == 0
