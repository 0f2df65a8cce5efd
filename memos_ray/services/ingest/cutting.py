"""One cube's units cut into the memories the API's fast add would store for them.

The API stores one add at a time: within an add, a repeated text becomes one memory that
keeps every source; a text already in the cube is a duplicate and is not stored again. Here a
cube's units are cut in their input order with the same rules (the same windowing, the same
item construction as `MemoryService.add_windows`), so the job and the API agree on ids, texts
and sources, and a run's result never depends on scheduling.

`seq` (the arrival order the turn ranker sorts a session by) is the memory's ordinal in the
cube's input order instead of a clock: a re-run after a crash then writes exactly what a
clean run would have. Memories ingested this way sort before those the API adds later.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from memos_ray.core.documents import Document
from memos_ray.core.reader import Turn, Window, fast_windows
from memos_ray.core.tools import ToolMessage, schema_windows, trajectory_windows
from memos_ray.domain.memory import Edge, EdgeType, MemoryItem, memory_id_for
from memos_ray.services.documents import document_windows
from memos_ray.services.ingest.formats import Unit
from memos_ray.services.memory import embedding_text, items_for_windows

DOCUMENT_CHUNK_CHARS = 1500


@dataclass(frozen=True)
class Prepared:
    """A memory ready to embed (`text`) and store (`item`, `seq`)."""

    item: MemoryItem
    text: str
    seq: int


@dataclass
class CubeCut:
    cube_id: str
    memories: list[Prepared] = field(default_factory=list)
    # Document chunk order (FOLLOWING / PRECEDING), written once both ends are stored.
    edges: list[Edge] = field(default_factory=list)
    records: int = 0


def join_messages(units: Sequence[Unit]) -> list[Unit]:
    """Units in input order, one-message records joined per (user, session) at the first."""
    joined: list[Unit] = []
    sessions: dict[tuple[str, str], Unit] = {}
    for unit in sorted(units, key=lambda u: u.order):
        if unit.kind != "message":
            joined.append(unit)
            continue
        key = (unit.user_id, unit.session_id)
        head = sessions.get(key)
        if head is None:
            head = unit.model_copy(update={"turns": list(unit.turns)})
            sessions[key] = head
            joined.append(head)
        else:
            head.turns.extend(unit.turns)
            head.records += unit.records
    return joined


def unit_turns(unit: Unit) -> list[Turn]:
    """As the API reads messages: system messages and blank contents left out, stripped."""
    return [
        Turn(
            role=t.role,
            content=t.content.strip(),
            chat_time=t.chat_time,
            message_id=t.message_id,
            name=t.name,
        )
        for t in unit.turns
        if t.role != "system" and t.content.strip()
    ]


def cut_cube(
    cube_id: str,
    units: Sequence[Unit],
    window_messages: int = 1,
    window_chars: int = 2000,
    chunk_chars: int = DOCUMENT_CHUNK_CHARS,
) -> CubeCut:
    cut = CubeCut(cube_id)
    taken: set[str] = set()
    for unit in join_messages(units):
        if unit.cube_id != cube_id:
            raise ValueError(f"unit of cube {unit.cube_id} cut with cube {cube_id}")
        cut.records += unit.records
        if unit.document is not None:
            doc = unit.document
            windows = document_windows(Document(doc.name, doc.text, doc.file_id), chunk_chars)
            chunk_ids = [memory_id_for(cube_id, w.text) for w in windows]
            cut.edges += [
                edge
                for before, after in itertools.pairwise(chunk_ids)
                for edge in (
                    Edge(source=before, target=after, type=EdgeType.FOLLOWING),
                    Edge(source=after, target=before, type=EdgeType.PRECEDING),
                )
            ]
            adds = [windows]
        else:
            # As the API's add: tool memories first, then the turns, each its own write.
            adds = [
                tool_windows(unit),
                fast_windows(unit_turns(unit), window_messages, window_chars),
            ]
        for windows in adds:
            items = items_for_windows(
                cube_id, unit.user_id, windows, unit.session_id, unit.tags, unit.info
            )
            for item_id, item in items.items():
                if item_id in taken:  # already stored by an earlier add: the API's duplicate
                    continue
                taken.add(item_id)
                cut.memories.append(Prepared(item, embedding_text(item), len(cut.memories)))
    return cut


def tool_windows(unit: Unit) -> list[Window]:
    """Tool schemas and trajectories (assistant tool calls with their results)."""
    windows = schema_windows(unit.tools)
    if any(t.tool_calls for t in unit.turns):
        windows += trajectory_windows(
            [
                ToolMessage(
                    role=t.role,
                    content=t.content,
                    message_id=t.message_id,
                    chat_time=t.chat_time,
                    tool_call_id=t.tool_call_id,
                    tool_calls=tuple(t.tool_calls or ()),
                )
                for t in unit.turns
            ]
        )
    return windows
