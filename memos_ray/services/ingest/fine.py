"""Fine ingest, the pure part: the windows an LLM reads, and the memories its answers give.

The windows are the ones the service's fine mode reads (`fine.window_messages` turns; each
document chunk). What the LLM answered for a window is recorded (`FineRecord`, kept in
`ingest_extractions`), and the memories are derived from those records alone, so the same
records always give the same memories, ids and edges, whatever order the windows were read in:

- each extracted fact is a memory (mode `fine`) with the window's sources, linked by
  `MATERIAL` to the turn memories (when turns are kept) or the document chunk it was read from;
- a fact already derived from an earlier window of the cube is one memory with both windows'
  sources;
- a window the LLM could not read, or found nothing in, is kept as one raw memory when its
  turns are not stored anyway, so nothing said is lost;
- a document's chunk summaries become one summary memory linked (`SUMMARY`) to its chunks.

Near duplicates and contradictions between facts are left to `jobs.reorganize`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from memos_ray.config import FineConfig, ReaderConfig
from memos_ray.core.documents import Document
from memos_ray.core.reader import Window, fast_windows
from memos_ray.domain.memory import (
    DEFAULT_SESSION,
    Edge,
    EdgeType,
    MemoryItem,
    MemoryType,
    SourceMessage,
    memory_id_for,
)
from memos_ray.services.documents import document_windows
from memos_ray.services.fine import PreferenceBatch
from memos_ray.services.fine_reader import ExtractedMemory, ExtractedPreference, FineResult
from memos_ray.services.ingest.cutting import DOCUMENT_CHUNK_CHARS, join_messages, unit_turns
from memos_ray.services.ingest.formats import Unit
from memos_ray.services.memory import items_for_windows

# Fine memories sort after every turn of the cube in arrival order (`seq`): the turns an
# ingest stores are numbered from 0 in input order.
FINE_SEQ_BASE = 1 << 40


class FineWindow(BaseModel):
    """A window the LLM reads, with what the memories read from it need."""

    model_config = ConfigDict(extra="forbid")

    window_id: str
    user_id: str
    session_id: str = DEFAULT_SESSION
    tags: list[str] = Field(default_factory=list)
    info: dict[str, Any] = Field(default_factory=dict)
    text: str
    memory_type: MemoryType
    sources: list[SourceMessage]
    file_ids: list[str] = Field(default_factory=list)
    # Memories stored in fast mode that hold this window's turns (or its document chunk).
    covers: list[str] = Field(default_factory=list)
    # The document this window is a chunk of.
    document: str | None = None

    def window(self) -> Window:
        return Window(
            text=self.text,
            memory_type=self.memory_type,
            sources=list(self.sources),
            file_ids=list(self.file_ids),
        )


class FineRecord(BaseModel):
    """What the LLM read in one window: recorded once, reused by every later run."""

    model_config = ConfigDict(extra="ignore")

    memories: list[ExtractedMemory] = Field(default_factory=list)
    preferences: list[ExtractedPreference] = Field(default_factory=list)
    summary: str = ""
    # Set when no attempt gave a readable answer.
    error: str | None = None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def from_result(cls, result: FineResult) -> FineRecord:
        return cls(
            memories=result.memories,
            preferences=result.preferences,
            summary=result.summary,
            error=result.error,
            calls=result.calls,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
        )


class FineCounts(BaseModel):
    """The fine pass's own counts (summed over cubes into the job summary)."""

    windows: int = 0
    # Read by the LLM in this run / found recorded by an earlier run.
    read: int = 0
    reused: int = 0
    failed: int = 0
    empty: int = 0
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_seconds: float = 0.0
    preference_tasks: int = 0

    def add(self, other: FineCounts) -> None:
        for name in type(self).model_fields:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def window_id_for(cube_id: str, text: str) -> str:
    """The same text in the same cube is read once (its extraction depends on nothing else)."""
    return memory_id_for(cube_id, f"fine-window\x00{text}")


def _source_key(source: SourceMessage) -> tuple[str | None, ...]:
    return (source.role, source.message_id, source.chat_time, source.content, source.name)


def fine_windows(
    cube_id: str,
    units: Sequence[Unit],
    fine: FineConfig,
    reader: ReaderConfig,
    chunk_chars: int = DOCUMENT_CHUNK_CHARS,
) -> list[FineWindow]:
    """A cube's windows in input order, each text once (the first occurrence's sources)."""
    windows: dict[str, FineWindow] = {}
    for unit in join_messages(units):
        # (window, the fast memories holding its content)
        read: list[tuple[Window, list[str]]]
        if unit.document is not None:
            doc = unit.document
            chunks = document_windows(Document(doc.name, doc.text, doc.file_id), chunk_chars)
            read = [(chunk, [memory_id_for(cube_id, chunk.text)]) for chunk in chunks]
        else:
            turns = unit_turns(unit)
            fast = fast_windows(turns, reader.window_messages, reader.window_chars)
            holder = {
                _source_key(s): memory_id_for(cube_id, w.text) for w in fast for s in w.sources
            }
            read = [
                (window, list(dict.fromkeys(holder[_source_key(s)] for s in window.sources)))
                for window in fast_windows(turns, fine.window_messages, fine.window_chars)
            ]
        for window, covers in read:
            found = FineWindow(
                window_id=window_id_for(cube_id, window.text),
                user_id=unit.user_id,
                session_id=unit.session_id,
                tags=list(unit.tags),
                info=dict(unit.info),
                text=window.text,
                memory_type=window.memory_type,
                sources=list(window.sources),
                file_ids=list(window.file_ids),
                covers=covers,
                document=unit.document.name if unit.document is not None else None,
            )
            windows.setdefault(found.window_id, found)
    return list(windows.values())


@dataclass
class FineMemories:
    """What one cube's records give: memories in order, the edges each one brings, and
    the preferences read (by window) for the cube's `pref_add` tasks."""

    by_id: dict[str, MemoryItem] = field(default_factory=dict)
    links: dict[str, list[Edge]] = field(default_factory=dict)
    preferences: list[tuple[str, PreferenceBatch]] = field(default_factory=list)
    failed: int = 0
    empty: int = 0

    @property
    def items(self) -> list[MemoryItem]:
        """In the order first derived."""
        return list(self.by_id.values())

    def add(self, item: MemoryItem, links: Iterable[Edge] = ()) -> str:
        """Add, or join the sources of the memory already derived with this id."""
        held = self.by_id.get(item.id)
        if held is None:
            self.by_id[item.id] = item
            self.links[item.id] = _unique(links)
            return item.id
        sources = held.metadata.sources
        sources.extend(s for s in item.metadata.sources if s not in sources)
        self.links[item.id] = _unique([*self.links[item.id], *links])
        return item.id


def _unique(edges: Iterable[Edge]) -> list[Edge]:
    seen: dict[tuple[str, str, str], Edge] = {}
    for edge in edges:
        seen.setdefault((edge.source, edge.target, str(edge.type)), edge)
    return list(seen.values())


def fine_memories(
    cube_id: str,
    windows: Sequence[FineWindow],
    records: dict[str, FineRecord],
    *,
    keep_turns: bool,
) -> FineMemories:
    """The memories these windows' records give (windows without a record give none)."""
    out = FineMemories()
    summaries: dict[str, list[str]] = {}
    chunks: dict[str, list[str]] = {}
    firsts: dict[str, FineWindow] = {}
    for window in windows:
        record = records.get(window.window_id)
        if record is None:
            continue
        if window.document is not None:
            chunks.setdefault(window.document, []).extend(window.covers)
            firsts.setdefault(window.document, window)
        if record.error is not None or not record.memories:
            out.failed += record.error is not None
            out.empty += record.error is None
            # Turns and document chunks are stored anyway; otherwise keep the window.
            if not keep_turns and window.document is None:
                out.add(_raw_item(cube_id, window, record.error))
            continue
        if record.summary and window.document is not None:
            summaries.setdefault(window.document, []).append(record.summary)
        linked = window.document is not None or keep_turns
        made: list[str] = []
        for extracted in record.memories:
            fine = Window(
                text=extracted.value,
                memory_type=extracted.type,
                sources=list(window.sources),
                file_ids=list(window.file_ids),
                key=extracted.key or None,
                background=record.summary,
                tags=tuple(extracted.tags),
                mode="fine",
            )
            item = _single(cube_id, window, fine)
            edges = (
                [Edge(source=item.id, target=t, type=EdgeType.MATERIAL) for t in window.covers]
                if linked
                else []
            )
            made.append(out.add(item, edges))
        if record.preferences:
            batch = PreferenceBatch(
                preferences=record.preferences,
                sources=list(window.sources),
                memory_ids=list(dict.fromkeys(made)),
                session_id=window.session_id,
            )
            out.preferences.append((window.window_id, batch))
    for name, texts in summaries.items():
        first = firsts[name]
        summary = Window(
            text=f"Summary of {name}: " + " ".join(dict.fromkeys(texts)),
            memory_type=MemoryType.LONG_TERM,
            sources=[SourceMessage(type="file", doc_path=name)],
            tags=("document", "summary"),
            mode="fine",
        )
        item = _single(cube_id, first, summary)
        targets = list(dict.fromkeys(chunks[name]))
        out.add(item, [Edge(source=item.id, target=t, type=EdgeType.SUMMARY) for t in targets])
    return out


def _single(cube_id: str, window: FineWindow, content: Window) -> MemoryItem:
    (item,) = items_for_windows(
        cube_id, window.user_id, [content], window.session_id, window.tags, window.info
    ).values()
    return item


def _raw_item(cube_id: str, window: FineWindow, error: str | None) -> MemoryItem:
    """As the service keeps a window it could not read: its text, the error recorded."""
    info = dict(window.info)
    tags = list(window.tags)
    if error:
        info["fine_error"] = error
        tags.append("fine:failed")
    (item,) = items_for_windows(
        cube_id, window.user_id, [window.window()], window.session_id, tags, info
    ).values()
    return item
