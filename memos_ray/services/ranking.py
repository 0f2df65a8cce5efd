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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from memos_ray import metrics
from memos_ray.core.turn_ranking import (
    CubeIndex,
    RankingParams,
    RankUnit,
    append_units,
    index_units,
    parse_date,
)
from memos_ray.domain.memory import MemoryItem, MemoryStatus
from memos_ray.stores.vector.base import VectorFilter, VectorStore, WriteStamp

# Payload keys written beside each point for the index (see `unit_payload`).
TEXT = "text"
SPEAKER = "speaker"
ROLE = "role"
CHAT_TIME = "chat_time"
SEQ = "seq"
# Ids per graph query when checking an index's units for their nodes.
ALIVE_CHUNK = 5000


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
        # Only a turn's own side of the chat (step 5's perspective term); distilled facts
        # and documents are no one's words.
        ROLE: (turns[0].role or "") if turns else "",
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
    # Which units have their graph node (orphan points are hidden), checked once per index
    # on the first search instead of once per search: nodes go away only with their points
    # (deletes remove points first), which changes the revision and replaces this index.
    alive: np.ndarray | None = None
    alive_lock: threading.Lock = field(default_factory=threading.Lock)
    # Each session's first seq and the sort key of the last unit: where an append may go.
    first_seq: dict[str, int] = field(default_factory=dict)
    last_key: tuple[Any, ...] | None = None
    # What it holds in memory, roughly (vectors, stored items, postings): the cache's budget.
    size_bytes: int = 0

    def alive_mask(self, existing: Callable[[Sequence[str]], set[str]]) -> np.ndarray:
        """`alive`, asking `existing` (the graph) the first time, in chunks."""
        with self.alive_lock:
            if self.alive is None:
                ids = self.index.ids
                found: set[str] = set()
                for start in range(0, len(ids), ALIVE_CHUNK):
                    found |= existing(ids[start : start + ALIVE_CHUNK])
                self.alive = np.fromiter((i in found for i in ids), bool, len(ids))
            return self.alive

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
            size = len(self.payloads)
            by_id[[p for i in ids if (p := self.positions.get(i, size)) < size]] = True
            mask = by_id if mask is None else mask & by_id
        return mask


def _order_key(
    first: Mapping[str, int], session: str, seq: int, payload: Mapping[str, Any], unit_id: str
) -> tuple[Any, ...]:
    """Sessions by their first turn, then arrival: the order the index keeps units in."""
    return (first[session], session, seq, str(payload.get("created_at")), unit_id)


def _payload_bytes(payloads: Sequence[Mapping[str, Any]]) -> int:
    """Stored items and texts plus ~300 bytes of postings and bookkeeping per unit."""
    return sum(
        len(str(p.get("item") or "")) + 2 * len(str(p.get(TEXT) or "")) + 300 for p in payloads
    )


def _unit(unit_id: str, payload: Mapping[str, Any], dates: dict[Any, Any]) -> RankUnit:
    chat_time = payload.get(CHAT_TIME)
    if chat_time not in dates:
        dates[chat_time] = parse_date(chat_time)
    return RankUnit(
        id=unit_id,
        session=str(payload.get("session_id") or ""),
        text=str(payload.get(TEXT) or payload.get("memory") or ""),
        speaker=str(payload.get(SPEAKER) or ""),
        day=dates[chat_time],
        role=str(payload.get(ROLE) or ""),
    )


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
    keys = [_order_key(first, sessions[i], seqs[i], payloads[i], ids[i]) for i in range(len(ids))]
    order = sorted(range(len(ids)), key=keys.__getitem__)
    dates: dict[Any, Any] = {}
    units = [_unit(ids[i], payloads[i], dates) for i in order]
    ordered = [dict(payloads[i]) for i in order]
    index = index_units(units, vectors[order] if len(order) else vectors, None, params)
    return IndexedCube(
        index=index,
        payloads=ordered,
        revision=revision,
        memory_types=np.array([str(p.get("memory_type")) for p in ordered], dtype=object),
        sessions=np.array([sessions[i] for i in order], dtype=object),
        positions={unit_id: pos for pos, unit_id in enumerate(index.ids)},
        first_seq=first,
        last_key=keys[order[-1]] if order else None,
        size_bytes=int(index.vectors.nbytes) + _payload_bytes(ordered),
    )


def extend_cube(
    cube: IndexedCube,
    ids: Sequence[str],
    vectors: np.ndarray,
    payloads: Sequence[Mapping[str, Any]],
    revision: str,
) -> IndexedCube | None:
    """`cube` plus new active units that sort after all of its own (a chat's next turns),
    as `index_cube` over everything would give; None when they do not, or are not new."""
    if not ids:
        return replace(cube, revision=revision)
    if any(i in cube.positions for i in ids) or len(set(ids)) != len(ids):
        return None
    if any(p.get("status") != MemoryStatus.ACTIVATED for p in payloads):
        return None
    seqs = [int(p.get(SEQ) or 0) for p in payloads]
    sessions = [str(p.get("session_id") or "") for p in payloads]
    first = dict(cube.first_seq)
    for seq, session in zip(seqs, sessions, strict=True):
        if session not in cube.first_seq:
            first[session] = min(seq, first.get(session, seq))
    keys = [_order_key(first, sessions[i], seqs[i], payloads[i], ids[i]) for i in range(len(ids))]
    order = sorted(range(len(ids)), key=keys.__getitem__)
    if cube.last_key is not None and keys[order[0]] <= cube.last_key:
        return None
    dates: dict[Any, Any] = {}
    try:
        index = append_units(
            cube.index, [_unit(ids[i], payloads[i], dates) for i in order], vectors[order]
        )
    except ValueError:
        return None
    ordered = [dict(payloads[i]) for i in order]
    positions = cube.positions  # shared: older readers never ask for ids past their size
    for offset, i in enumerate(order):
        positions[ids[i]] = cube.index.size + offset
    alive = cube.alive
    return IndexedCube(
        index=index,
        payloads=cube.payloads + ordered,
        revision=revision,
        memory_types=np.concatenate(
            [cube.memory_types, np.array([str(p.get("memory_type")) for p in ordered], object)]
        ),
        sessions=np.concatenate(
            [cube.sessions, np.array([sessions[i] for i in order], dtype=object)]
        ),
        positions=positions,
        # The caller wrote these units' nodes before their points.
        alive=None if alive is None else np.concatenate([alive, np.ones(len(ids), bool)]),
        first_seq=first,
        last_key=keys[order[-1]],
        size_bytes=cube.size_bytes + int(vectors.nbytes) + _payload_bytes(ordered),
    )


class CubeIndexCache:
    """LRU of IndexedCube per cube; one build at a time per cube, concurrent readers wait.

    Bounded by a count and by bytes: many users' small cubes fit by the hundred (a miss
    costs a scan and a build), one 100k cube takes a large share. The newest entry always
    stays, even alone over the budget.
    """

    def __init__(
        self,
        vectors: VectorStore,
        params: RankingParams,
        memory_types: Sequence[str] | None = None,
        max_cubes: int = 1024,
        max_bytes: int = 1 << 30,
    ) -> None:
        self._vectors = vectors
        self._params = params
        # None: every type is indexed; searches pick theirs with a mask.
        self._memory_types = list(memory_types) if memory_types is not None else None
        self._max = max_cubes
        self._max_bytes = max_bytes
        self._bytes = 0
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
                self._put(cube_id, entry)
            return entry

    def _put(self, cube_id: str, entry: IndexedCube) -> None:
        """Under the lock: store, then evict the least recently used past either bound."""
        old = self._entries.pop(cube_id, None)
        self._bytes += entry.size_bytes - (old.size_bytes if old is not None else 0)
        self._entries[cube_id] = entry
        while len(self._entries) > 1 and (
            len(self._entries) > self._max or self._bytes > self._max_bytes
        ):
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size_bytes

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def written(
        self,
        cube_id: str,
        stamp: WriteStamp | None,
        ids: Sequence[str],
        vectors: np.ndarray,
        payloads: Sequence[Mapping[str, Any]],
    ) -> None:
        """After this process wrote new points: extend the cube's index in place of a
        rebuild when the store vouches nothing else changed since the index was read
        (`stamp.before` is its revision); else drop it, and the next search rebuilds."""
        with self._lock:
            build_lock = self._building.setdefault(cube_id, threading.Lock())
        with build_lock:
            entry = self._cached(cube_id, None)
            grown = None
            if entry is not None and stamp is not None and entry.revision == stamp.before:
                grown = extend_cube(entry, ids, vectors, payloads, stamp.after)
            with self._lock:
                if grown is None:
                    self._drop(cube_id)
                elif cube_id in self._entries:
                    self._put(cube_id, grown)

    def invalidate(self, cube_id: str) -> None:
        with self._lock:
            self._drop(cube_id)

    def _drop(self, cube_id: str) -> None:
        old = self._entries.pop(cube_id, None)
        if old is not None:
            self._bytes -= old.size_bytes
