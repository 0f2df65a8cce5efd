"""Fine mode: LLM-distilled memories, merged with or superseding what the cube holds.

Per window: extract (FineReader). A window whose extraction fails is stored raw with the
error recorded, so nothing said is lost. Each extracted memory then meets the cube:
- the same text already there (same id, no LLM call): its sources join the stored one;
- near neighbours by vector similarity are shown to the LLM, which judges `duplicate`
  (merged into the old one) or `contradiction` (the old one is archived, with a `history`
  entry and a `MERGED_TO` edge to the new one); anything else is stored as new.
An unreadable judgement counts as "unrelated": the new memory is stored, the old one kept.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from memos_ray import metrics
from memos_ray.core.json_repair import JSONRepairError, parse_json
from memos_ray.core.reader import Window
from memos_ray.domain.memory import (
    DEFAULT_SESSION,
    Edge,
    EdgeType,
    MemoryItem,
    MemoryStatus,
    SourceMessage,
    memory_id_for,
)
from memos_ray.models.chat import ChatModel, ChatRequest, Message, SamplingParams, Usage
from memos_ray.services.fine_reader import ExtractedPreference, FineReader
from memos_ray.services.memory import TEXT_TYPES

if TYPE_CHECKING:
    from memos_ray.services.memory import MemoryService
    from memos_ray.services.preferences import PreferenceService
from memos_ray.stores.preference.base import Preference
from memos_ray.stores.sql.base import TenancyStore
from memos_ray.stores.vector.base import VectorFilter

logger = logging.getLogger("memos_ray.services.fine")

Relation = Literal["duplicate", "contradiction", "unrelated"]

JUDGE_PROMPT = (
    "You compare a new memory with existing memories of the same person.\n"
    'Answer with JSON only: {"relation": "duplicate" | "contradiction" | "unrelated", '
    '"index": <number of the existing memory it concerns, or -1>}.\n'
    "duplicate: it says the same thing as an existing memory.\n"
    "contradiction: it and an existing memory cannot both be true now; the new one is newer.\n"
    "unrelated: anything else."
)

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "relation": {"enum": ["duplicate", "contradiction", "unrelated"]},
        "index": {"type": "integer"},
    },
    "required": ["relation", "index"],
}


class Judgement(BaseModel):
    model_config = ConfigDict(extra="ignore")

    relation: Relation = "unrelated"
    index: int = -1


class PreferenceBatch(BaseModel):
    """Preferences read from one window, with what a preference store needs beside them."""

    preferences: list[ExtractedPreference]
    sources: list[SourceMessage]
    memory_ids: list[str]
    session_id: str = DEFAULT_SESSION


@dataclass
class FineOutcome:
    """What one fine add did, for the response and for token accounting."""

    stored: list[MemoryItem] = field(default_factory=list)
    merged: list[MemoryItem] = field(default_factory=list)
    archived: list[MemoryItem] = field(default_factory=list)
    raw_kept: list[MemoryItem] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Preferences stored (explicit, or implicit ones seen often enough).
    preferences: list[Preference] = field(default_factory=list)
    # Preferences read but not stored, for a FineService without a preference service:
    # the caller stores them (the scheduler does so in its own `pref_add` task).
    unstored_preferences: list[PreferenceBatch] = field(default_factory=list)
    # The LLM's one-line summaries of the windows it read.
    summaries: list[str] = field(default_factory=list)
    # True when the cube was over its token budget: windows stored in fast mode.
    paused: bool = False
    calls: int = 0
    usage: Usage = field(default_factory=Usage)

    def count(self, usage: Usage, calls: int = 1) -> None:
        self.calls += calls
        self.usage = Usage(
            prompt_tokens=self.usage.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens + usage.completion_tokens,
            cached_tokens=self.usage.cached_tokens + usage.cached_tokens,
        )


class FineService:
    def __init__(
        self,
        memory: MemoryService,
        model: ChatModel,
        *,
        max_attempts: int = 2,
        max_tokens: int = 512,
        similarity: float = 0.6,
        candidates: int = 4,
        ledger: TenancyStore | None = None,
        preferences: PreferenceService | None = None,
    ) -> None:
        self.memory = memory
        self.model = model
        # Where LLM tokens are counted per cube, and budgets read.
        self.ledger = ledger
        # Where extracted preferences go (None: they are dropped).
        self.preferences = preferences
        self.reader = FineReader(model, max_attempts=max_attempts, max_tokens=max_tokens)
        self.similarity = similarity
        self.candidates = candidates
        # One consolidation at a time per cube: two adds must not both miss each other.
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock(self, cube_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(cube_id, threading.Lock())

    def add(
        self,
        cube_id: str,
        user_id: str,
        windows: Sequence[Window],
        session_id: str = DEFAULT_SESSION,
        tags: Sequence[str] = (),
        info: Mapping[str, Any] | None = None,
        keep_raw: bool = True,
    ) -> FineOutcome:
        """Distil `windows` into memories. With `keep_raw` false the windows' text is stored
        already (an async add's fast memories): a window that cannot be read, or a cube over
        its budget, writes nothing; rewriting those memories here could bring back one the
        user deleted while the LLM was reading it."""
        outcome = FineOutcome()
        if self.ledger is not None and self.ledger.llm_usage(cube_id).over_budget:
            # Over budget: the adds still land, in fast mode, marked so they can be redone.
            outcome.paused = True
            if not keep_raw:
                return outcome
            added = self.memory.add_windows(
                cube_id, user_id, windows, session_id, [*tags, "fine:paused"], info
            )
            outcome.raw_kept.extend([*added.stored, *added.duplicates])
            return outcome
        try:
            self._add(cube_id, user_id, windows, session_id, tags, info, outcome, keep_raw)
        finally:
            usage = outcome.usage
            metrics.llm_tokens("fine_extraction", usage.prompt_tokens, usage.completion_tokens)
            if self.ledger is not None and outcome.calls:
                self.ledger.record_llm_usage(
                    cube_id,
                    outcome.usage.prompt_tokens,
                    outcome.usage.completion_tokens,
                    outcome.calls,
                )
        return outcome

    def _add(
        self,
        cube_id: str,
        user_id: str,
        windows: Sequence[Window],
        session_id: str,
        tags: Sequence[str],
        info: Mapping[str, Any] | None,
        outcome: FineOutcome,
        keep_raw: bool = True,
    ) -> None:
        for window in windows:
            result = self.reader.extract(window)
            outcome.count(result.usage, result.calls)
            if (result.failed or not result.memories) and not keep_raw:
                if result.error:
                    outcome.errors.append(result.error)
                continue
            if result.failed or not result.memories:
                self._keep_raw(
                    cube_id, user_id, window, result.error, session_id, tags, info, outcome
                )
                continue
            if result.summary:
                outcome.summaries.append(result.summary)
            before = len(outcome.stored) + len(outcome.merged)
            for extracted in result.memories:
                fine = Window(
                    text=extracted.value,
                    memory_type=extracted.type,
                    sources=window.sources,
                    file_ids=window.file_ids,
                    key=extracted.key or None,
                    background=result.summary,
                    tags=tuple(extracted.tags),
                    mode="fine",
                )
                with self._lock(cube_id):
                    self._consolidate(cube_id, user_id, fine, session_id, tags, info, outcome)
            made = [*outcome.stored, *outcome.merged][before:]
            if self.preferences is None and result.preferences:
                outcome.unstored_preferences.append(
                    PreferenceBatch(
                        preferences=result.preferences,
                        sources=list(window.sources),
                        memory_ids=[item.id for item in made],
                        session_id=session_id,
                    )
                )
            elif self.preferences is not None and result.preferences:
                done = self.preferences.add_extracted(
                    cube_id,
                    user_id,
                    result.preferences,
                    window.sources,
                    session_id,
                    [item.id for item in made],
                )
                outcome.preferences += done.stored

    def _keep_raw(
        self,
        cube_id: str,
        user_id: str,
        window: Window,
        error: str | None,
        session_id: str,
        tags: Sequence[str],
        info: Mapping[str, Any] | None,
        outcome: FineOutcome,
    ) -> None:
        """The window as a fast-mode memory; a failed extraction is recorded on it."""
        extra = dict(info or {})
        if error:
            extra["fine_error"] = error
            outcome.errors.append(error)
        raw_tags = [*tags, "fine:failed"] if error else list(tags)
        added = self.memory.add_windows(cube_id, user_id, [window], session_id, raw_tags, extra)
        outcome.raw_kept.extend(added.stored or added.duplicates)

    def _consolidate(
        self,
        cube_id: str,
        user_id: str,
        fine: Window,
        session_id: str,
        tags: Sequence[str],
        info: Mapping[str, Any] | None,
        outcome: FineOutcome,
    ) -> None:
        same = self.memory.get_by_ids([cube_id], [memory_id_for(cube_id, fine.text)])
        if same:
            outcome.merged.append(self._merge(cube_id, same[0], fine, "same text added again"))
            return
        neighbours = self._neighbours(cube_id, fine.text)
        judgement = self._judge(fine.text, neighbours, outcome) if neighbours else Judgement()
        target = neighbours[judgement.index] if 0 <= judgement.index < len(neighbours) else None
        if judgement.relation == "duplicate" and target is not None:
            outcome.merged.append(self._merge(cube_id, target, fine, f"duplicate: {fine.text}"))
            return
        added = self.memory.add_windows(cube_id, user_id, [fine], session_id, tags, info)
        outcome.stored.extend(added.stored)
        if judgement.relation == "contradiction" and target is not None and added.stored:
            new = added.stored[0]
            outcome.archived.append(self.archive(cube_id, target, new.id, "contradicted"))

    def _neighbours(self, cube_id: str, text: str) -> list[MemoryItem]:
        """Active fine memories of the cube close to `text`, most similar first."""
        hits = self.memory.nearest(
            cube_id,
            text,
            self.candidates,
            VectorFilter(memory_types=list(TEXT_TYPES), statuses=[MemoryStatus.ACTIVATED]),
        )
        close = [h.id for h in hits if h.score >= self.similarity]
        items = self.memory.get_by_ids([cube_id], close)
        return [i for i in items if "mode:fine" in i.metadata.tags]

    def _judge(self, text: str, neighbours: list[MemoryItem], outcome: FineOutcome) -> Judgement:
        listing = "\n".join(f"{n}. {item.memory}" for n, item in enumerate(neighbours))
        request = ChatRequest(
            messages=(
                Message(role="system", content=JUDGE_PROMPT),
                Message(role="user", content=f"New: {text}\nExisting:\n{listing}"),
            ),
            params=SamplingParams(max_tokens=64, temperature=0),
            response_schema=JUDGE_SCHEMA,
        )
        generation = self.model.generate(request)
        outcome.count(generation.usage)
        try:
            return Judgement.model_validate(parse_json(generation.text))
        except (JSONRepairError, ValidationError) as exc:
            logger.info("unreadable judgement, storing the memory as new: %s", exc)
            return Judgement()

    def _merge(self, cube_id: str, target: MemoryItem, fine: Window, reason: str) -> MemoryItem:
        """The new memory's provenance joins the stored one; its text stays."""
        meta = target.metadata
        sources = list(meta.sources)
        sources.extend(s for s in fine.sources if s not in sources)
        merged = target.revised(
            reason, sources=sources, tags=list(dict.fromkeys([*meta.tags, *fine.tags]))
        )
        self.memory.update_items(cube_id, [merged])
        return merged

    def archive(self, cube_id: str, old: MemoryItem, new_id: str | None, reason: str) -> MemoryItem:
        """Archive `old` (kept, no longer searched), pointing at what replaced it."""
        archived = old.revised(reason, status=MemoryStatus.ARCHIVED)
        self.memory.update_items(cube_id, [archived])
        if new_id is not None:
            self.memory.graph.add_edges(
                cube_id, [Edge(source=old.id, target=new_id, type=EdgeType.MERGED_TO)]
            )
        return archived
