"""Per-cube ranking indexes kept in memory, rebuilt from the vector store when it changes.

The turn-ranking recipe (`memos_ray.core.turn_ranking`) scores every memory of a cube, so
it needs the cube's vectors, texts, sessions and dates at hand. They are read once from the
vector store (`scan`) and cached per process, keyed by the store's revision of the cube: any
write, from this process or another sharing the store, changes the revision, and the next
search that notices rebuilds the index (one scan; about 20 ms per 10k points on qdrant-edge).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from memos_ray import metrics
from memos_ray.core.turn_ranking import (
    CubeIndex,
    RankingParams,
    RankUnit,
    index_units,
    parse_date,
)
from memos_ray.domain.memory import MemoryItem, MemoryStatus
from memos_ray.stores.vector.base import VectorFilter, VectorStore

# Payload keys written beside each point for the index (see `unit_payload`).
TEXT = "text"
SPEAKER = "speaker"
CHAT_TIME = "chat_time"
SEQ = "seq"


def unit_payload(item: MemoryItem, seq: int) -> dict[str, Any]:
    """What the index reads about a memory besides its vector.

    `text` is what BM25 indexes: each source turn as `name: content` (the speaker's name is
    a strong cue: "what did Ann adopt?"), without the rendered timestamps, which would
    pollute keyword scores; `seq` orders a session's turns (arrival order, nanoseconds).
    """
    if "mode:fast" in item.metadata.tags:
        turns = [s for s in item.metadata.sources if s.content]
    else:
        # Distilled facts, preferences, tool trajectories, document chunks: their own words
        # are what to match, not the messages they came from.
        turns = []
    # A repeated message merged into one memory is indexed once.
    said = dict.fromkeys(f"{s.name}: {s.content}" if s.name else str(s.content) for s in turns)
    text = "\n".join(said)
    first = turns[0] if turns else None
    if first is None:
        first = next((s for s in item.metadata.sources if s.chat_time), None)
    return {
        TEXT: text or item.memory,
        SPEAKER: (first.name or "") if first else "",
        CHAT_TIME: first.chat_time if first else None,
        SEQ: seq,
    }


@dataclass
class IndexedCube:
    index: CubeIndex
    payloads: list[dict[str, Any]]
    revision: str
    memory_types: np.ndarray
    sessions: np.ndarray
    positions: dict[str, int]

    @property
    def type_set(self) -> set[str]:
        """Memory types present (text, tool, document chunks share one index)."""
        cached = getattr(self, "_type_set", None)
        if cached is None:
            cached = set(self.memory_types.tolist())
            object.__setattr__(self, "_type_set", cached)
        return cached

    def allowed(
        self, memory_types: Sequence[str] | None, ids: Sequence[str] | None
    ) -> np.ndarray | None:
        """A mask of the units a search may return; None when all are."""
        mask: np.ndarray | None = None
        if memory_types is not None and not self.type_set <= set(memory_types):
            mask = np.isin(self.memory_types, list(memory_types))
        if ids is not None:
            by_id = np.zeros(len(self.payloads), bool)
            by_id[[self.positions[i] for i in ids if i in self.positions]] = True
            mask = by_id if mask is None else mask & by_id
        return mask


def index_cube(
    ids: Sequence[str],
    vectors: np.ndarray,
    payloads: Sequence[Mapping[str, Any]],
    revision: str,
    params: RankingParams,
) -> IndexedCube:
    """Order units by session (sessions by their first turn), then by arrival, and index."""
    seqs = [int(p.get(SEQ) or 0) for p in payloads]
    sessions = [str(p.get("session_id") or "") for p in payloads]
    first: dict[str, int] = {}
    for seq, session in zip(seqs, sessions, strict=True):
        first[session] = min(seq, first.get(session, seq))
    order = sorted(
        range(len(ids)),
        key=lambda i: (
            first[sessions[i]],
            sessions[i],
            seqs[i],
            str(payloads[i].get("created_at")),
            ids[i],
        ),
    )
    dates: dict[str | None, Any] = {}
    units = []
    for i in order:
        p = payloads[i]
        chat_time = p.get(CHAT_TIME)
        if chat_time not in dates:
            dates[chat_time] = parse_date(chat_time)
        units.append(
            RankUnit(
                id=ids[i],
                session=sessions[i],
                text=str(p.get(TEXT) or p.get("memory") or ""),
                speaker=str(p.get(SPEAKER) or ""),
                day=dates[chat_time],
            )
        )
    ordered = [dict(payloads[i]) for i in order]
    index = index_units(units, vectors[order] if len(order) else vectors, None, params)
    return IndexedCube(
        index=index,
        payloads=ordered,
        revision=revision,
        memory_types=np.array([str(p.get("memory_type")) for p in ordered], dtype=object),
        sessions=np.array([sessions[i] for i in order], dtype=object),
        positions={unit_id: pos for pos, unit_id in enumerate(index.ids)},
    )


class CubeIndexCache:
    """LRU of IndexedCube per cube; one build at a time per cube, concurrent readers wait."""

    def __init__(
        self,
        vectors: VectorStore,
        params: RankingParams,
        memory_types: Sequence[str] | None = None,
        max_cubes: int = 64,
    ) -> None:
        self._vectors = vectors
        self._params = params
        # None: every type is indexed; searches pick theirs with a mask.
        self._memory_types = list(memory_types) if memory_types is not None else None
        self._max = max_cubes
        self._entries: OrderedDict[str, IndexedCube] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}

    def _cached(self, cube_id: str, revision: str | None) -> IndexedCube | None:
        with self._lock:
            entry = self._entries.get(cube_id)
            if entry is None or (revision is not None and entry.revision != revision):
                return None
            self._entries.move_to_end(cube_id)
            return entry

    def get(self, cube_id: str, revision: str | None = None) -> IndexedCube:
        """The cube's index; rebuilt when missing or when `revision` says it is stale."""
        entry = self._cached(cube_id, revision)
        if entry is not None:
            metrics.SEARCH_INDEX_CACHE.inc(outcome="hit")
            return entry
        with self._lock:
            build_lock = self._building.setdefault(cube_id, threading.Lock())
        with build_lock:
            entry = self._cached(cube_id, revision)
            if entry is not None:
                metrics.SEARCH_INDEX_CACHE.inc(outcome="hit")
                return entry
            metrics.SEARCH_INDEX_CACHE.inc(outcome="miss")
            scan = self._vectors.scan(
                cube_id,
                VectorFilter(memory_types=self._memory_types, statuses=[MemoryStatus.ACTIVATED]),
            )
            entry = index_cube(scan.ids, scan.dense, scan.payloads, scan.revision, self._params)
            with self._lock:
                self._entries[cube_id] = entry
                self._entries.move_to_end(cube_id)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
            return entry

    def invalidate(self, cube_id: str) -> None:
        with self._lock:
            self._entries.pop(cube_id, None)
