"""Preference memory: what the user likes, says so (explicit) or shows by doing (implicit).

Explicit preferences go to the preference store (Milvus) as soon as they are read. An
implicit one is first an *observation* (a PreferenceMemory node with status `resolving`,
inspectable in the graph); it becomes a preference only when a similar observation comes
from another window of the conversation: one choice is not a habit.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from memos_ray.core.reader import Window
from memos_ray.domain.memory import (
    DEFAULT_SESSION,
    MemoryItem,
    MemoryStatus,
    MemoryType,
    SourceMessage,
    iso,
)
from memos_ray.domain.memory import utc_now as _utc_now
from memos_ray.services.fine_reader import ExtractedPreference
from memos_ray.services.memory import Query, as_query
from memos_ray.stores.preference.base import Preference, PreferenceStore
from memos_ray.stores.vector.base import VectorFilter

if TYPE_CHECKING:
    import numpy as np

    from memos_ray.services.memory import MemoryService

_NAMESPACE = uuid.UUID("0b6f1e0e-3f59-4d61-9a1c-6d1f4cbb7a21")
# Bound on the cubes remembered as having nothing to find (expired marks go first).
_EMPTY_MARKS = 100_000


def preference_id(cube_id: str, text: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{cube_id}\x00{' '.join(text.lower().split())}"))


@dataclass
class PreferenceOutcome:
    stored: list[Preference] = field(default_factory=list)
    observed: list[MemoryItem] = field(default_factory=list)


class PreferenceService:
    def __init__(
        self,
        memory: MemoryService,
        store: PreferenceStore,
        *,
        implicit_evidence: int = 2,
        similarity: float = 0.75,
        empty_ttl_s: float = 5.0,
    ) -> None:
        self.memory = memory
        self.store = store
        self.implicit_evidence = implicit_evidence
        self.similarity = similarity
        # Cubes where a search found no active preference, until this monotonic time: a search
        # then skips the store's round trip (another replica's write shows up within the TTL;
        # this process's own writes clear the mark, see `upsert`).
        self._empty: dict[str, float] = {}
        self._empty_ttl = empty_ttl_s
        self._lock = threading.Lock()

    # -- write -----------------------------------------------------------------------------

    def add_extracted(
        self,
        cube_id: str,
        user_id: str,
        preferences: Sequence[ExtractedPreference],
        sources: Sequence[SourceMessage],
        session_id: str = DEFAULT_SESSION,
        memory_ids: Sequence[str] = (),
    ) -> PreferenceOutcome:
        outcome = PreferenceOutcome()
        for extracted in preferences:
            if extracted.kind == "explicit":
                outcome.stored.append(
                    self.put(cube_id, user_id, extracted, session_id, list(memory_ids))
                )
                continue
            observation, promoted = self._observe(cube_id, user_id, extracted, sources, session_id)
            outcome.observed.append(observation)
            if promoted is not None:
                outcome.stored.append(promoted)
        return outcome

    def put(
        self,
        cube_id: str,
        user_id: str,
        extracted: ExtractedPreference,
        session_id: str,
        memory_ids: list[str],
    ) -> Preference:
        """Store (or refresh) a preference; the same text again joins its sources."""
        pref_id = preference_id(cube_id, extracted.preference)
        existing = self.store.get(cube_id, [pref_id])
        sources = list(
            dict.fromkeys([*(existing[0].source_memory_ids if existing else []), *memory_ids])
        )
        now = iso(_utc_now())
        preference = Preference(
            id=pref_id,
            cube_id=cube_id,
            user_id=user_id,
            kind=extracted.kind,
            preference=extracted.preference,
            reasoning=extracted.reasoning,
            topic=extracted.topic,
            source_memory_ids=sources,
            session_id=session_id,
            created_at=existing[0].created_at if existing else now,
            updated_at=now,
        )
        dense = self.memory.query_embedder.embed([preference.preference])
        self.upsert(cube_id, [preference], dense)
        return preference

    def upsert(self, cube_id: str, items: Sequence[Preference], dense: np.ndarray) -> None:
        """Every write of preferences goes through here (adds, cube loads, imports): the
        cube's "nothing to find" mark goes with it, so the next search asks the store."""
        self.store.upsert(cube_id, items, dense)
        with self._lock:
            self._empty.pop(cube_id, None)

    def _observe(
        self,
        cube_id: str,
        user_id: str,
        extracted: ExtractedPreference,
        sources: Sequence[SourceMessage],
        session_id: str,
    ) -> tuple[MemoryItem, Preference | None]:
        window = Window(
            text=extracted.preference,
            memory_type=MemoryType.PREFERENCE,
            sources=list(sources),
            tags=("implicit-observation", *([extracted.topic] if extracted.topic else [])),
            mode="preference",
        )
        occasion = hashlib.sha256(
            "\x00".join(s.message_id or s.content or "" for s in sources).encode()
        ).hexdigest()[:16]
        added = self.memory.add_windows(
            cube_id,
            user_id,
            [window],
            session_id,
            info={"occasions": [occasion]},
            status=MemoryStatus.RESOLVING,
        )
        observation = [*added.stored, *added.duplicates][0]
        seen = list(observation.metadata.info.get("occasions") or [])
        if occasion not in seen:
            # The same words on another occasion: one node that remembers both.
            info = {**observation.metadata.info, "occasions": [*seen, occasion]}
            observation = observation.model_copy(
                update={"metadata": observation.metadata.model_copy(update={"info": info})}
            )
            self.memory.update_items(cube_id, [observation])
        hits = self.memory.nearest(
            cube_id,
            extracted.preference,
            8,
            VectorFilter(
                memory_types=[str(MemoryType.PREFERENCE)],
                statuses=[MemoryStatus.RESOLVING, MemoryStatus.ACTIVATED],
            ),
        )
        similar = [h.id for h in hits if h.score >= self.similarity]
        evidence = self.memory.get_by_ids([cube_id], similar)
        # Evidence counts distinct occasions (windows of the conversation), not nodes.
        occasions = {o for item in evidence for o in item.metadata.info.get("occasions") or []}
        if len(occasions) < self.implicit_evidence:
            return observation, None
        promoted = self.put(
            cube_id,
            user_id,
            extracted.model_copy(update={"reasoning": f"seen on {len(occasions)} occasions"}),
            session_id,
            [item.id for item in evidence],
        )
        return observation, promoted

    # -- read ------------------------------------------------------------------------------

    def search(
        self, cube_ids: Sequence[str], question: str | Query, top_k: int
    ) -> dict[str, list[Preference]]:
        found: dict[str, list[Preference]] = {cube: [] for cube in cube_ids}
        now = time.monotonic()
        with self._lock:
            wanted = [c for c in cube_ids if self._empty.get(c, 0.0) < now]
        if not wanted or top_k <= 0:
            return found
        asked = as_query(question)
        dense = asked.encoded(self.memory.query_embedder).dense[0]
        for cube_id in wanted:
            found[cube_id] = self.store.search(cube_id, asked.text, dense, top_k)
            if not found[cube_id]:
                # Nothing active to find: the same answer for the TTL, without a round trip
                # (most cubes hold no preference; with thousands of cubes, each one's first
                # search would otherwise pay two).
                self._mark_empty(cube_id, now)
        return found

    def _mark_empty(self, cube_id: str, now: float) -> None:
        with self._lock:
            if len(self._empty) >= _EMPTY_MARKS:
                self._empty = {c: t for c, t in self._empty.items() if t >= now}
                if len(self._empty) >= _EMPTY_MARKS:
                    self._empty.clear()
            self._empty[cube_id] = now + self._empty_ttl


def preference_note(preferences: Sequence[Preference]) -> str:
    if not preferences:
        return ""
    return (
        "These are the user's preferences. Follow them when they apply; explicit ones come "
        "from the user's own words, implicit ones from repeated choices."
    )


def preference_string(preferences: Sequence[Preference]) -> str:
    """The block MemOS returns as `pref_string` and chat puts in the prompt."""
    explicit = [p.preference for p in preferences if p.kind == "explicit"]
    implicit = [p.preference for p in preferences if p.kind == "implicit"]
    parts = []
    if explicit:
        parts.append("Explicit preferences:\n" + "\n".join(f"- {p}" for p in explicit))
    if implicit:
        parts.append("Implicit preferences:\n" + "\n".join(f"- {p}" for p in implicit))
    return "\n".join(parts)
