"""Documents as memories: RawFileMemory chunks in reading order, and in fine mode what the
LLM distils from each chunk, linked back to it.

Graph shape (inspectable, MemOS edge names):
- chunk -FOLLOWING-> next chunk, next chunk -PRECEDING-> chunk;
- fine memory -MATERIAL-> the chunk it was read from;
- a summary memory of the document -SUMMARY-> each chunk (fine mode, when the LLM gave
  summaries).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memos_ray.core.documents import CHUNK_CHARS, Document, chunk_text
from memos_ray.core.reader import Window
from memos_ray.domain.memory import (
    DEFAULT_SESSION,
    Edge,
    EdgeType,
    MemoryItem,
    MemoryType,
    SourceMessage,
    memory_id_for,
)
from memos_ray.services.fine import FineService

if TYPE_CHECKING:
    from memos_ray.services.memory import MemoryService


@dataclass
class DocumentOutcome:
    chunks: list[MemoryItem] = field(default_factory=list)
    # Of `chunks`, how many were new (the rest were already in the cube).
    stored_chunks: int = 0
    fine: list[MemoryItem] = field(default_factory=list)
    summaries: list[MemoryItem] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    calls: int = 0


def document_windows(document: Document, chunk_chars: int = CHUNK_CHARS) -> list[Window]:
    """A document's RawFileMemory chunks in reading order (shared with the bulk ingest job)."""
    texts = chunk_text(document.text, chunk_chars)
    return [
        Window(
            text=f"{document.name} ({n}/{len(texts)}):\n{chunk}",
            memory_type=MemoryType.RAW_FILE,
            sources=[
                SourceMessage(
                    type="file", doc_path=document.name, content=chunk, file_id=document.file_id
                )
            ],
            file_ids=[document.file_id] if document.file_id else [],
            tags=("document",),
            mode="raw",
        )
        for n, chunk in enumerate(texts, start=1)
    ]


def add_documents(
    memory: MemoryService,
    cube_id: str,
    user_id: str,
    documents: Sequence[Document],
    *,
    fine: FineService | None = None,
    session_id: str = DEFAULT_SESSION,
    tags: Sequence[str] = (),
    info: Mapping[str, Any] | None = None,
    chunk_chars: int = CHUNK_CHARS,
    written: list[str] | None = None,
) -> DocumentOutcome:
    """Store the documents' chunks (and in fine mode what was read in them).

    `written` collects the ids this call stored (not duplicates, not merges) as they are
    written, so that a caller whose request fails later, or part way through here, can
    remove them again.
    """
    outcome = DocumentOutcome()
    new = written if written is not None else []
    for document in documents:
        windows = document_windows(document, chunk_chars)
        added = memory.add_windows(cube_id, user_id, windows, session_id, tags, info)
        new += [i.id for i in added.stored]
        outcome.stored_chunks += len(added.stored)
        by_id = {i.id: i for i in [*added.stored, *added.duplicates]}
        chunks = [by_id[memory_id_for(cube_id, w.text)] for w in windows]
        outcome.chunks += chunks
        edges = [
            edge
            for before, after in itertools.pairwise(chunks)
            for edge in (
                Edge(source=before.id, target=after.id, type=EdgeType.FOLLOWING),
                Edge(source=after.id, target=before.id, type=EdgeType.PRECEDING),
            )
        ]
        if fine is None:
            memory.graph.add_edges(cube_id, edges)
            continue
        summaries: list[str] = []
        for chunk, window in zip(chunks, windows, strict=True):
            done = fine.add(cube_id, user_id, [window], session_id, tags, info)
            new += [i.id for i in done.stored]
            outcome.calls += done.calls
            outcome.errors += done.errors
            summaries += done.summaries
            distilled = [i for i in [*done.stored, *done.merged] if i.id != chunk.id]
            outcome.fine += distilled
            edges += [Edge(source=i.id, target=chunk.id, type=EdgeType.MATERIAL) for i in distilled]
        if summaries:
            summary = Window(
                text=f"Summary of {document.name}: " + " ".join(dict.fromkeys(summaries)),
                memory_type=MemoryType.LONG_TERM,
                sources=[SourceMessage(type="file", doc_path=document.name)],
                tags=("document", "summary"),
                mode="fine",
            )
            stored = memory.add_windows(cube_id, user_id, [summary], session_id, tags, info)
            new += [i.id for i in stored.stored]
            for item in [*stored.stored, *stored.duplicates]:
                outcome.summaries.append(item)
                edges += [Edge(source=item.id, target=c.id, type=EdgeType.SUMMARY) for c in chunks]
        memory.graph.add_edges(cube_id, edges)
    return outcome
