"""Reorganise a cube: merge duplicates, archive superseded facts, rebuild the topic tree.

The algorithms are in `memos_ray.core.organize`; this module reads the cube (graph for
the items, vector store for their stored vectors: nothing is re-embedded to compare them),
asks the LLM where one is configured, and writes the changes through `MemoryService`.

Safety and idempotence:
- An archived memory keeps its id and history and points (MERGED_TO) at what replaced it,
  so callers holding its id can still resolve it; archived memories are not searched.
- The MERGED_TO edge is written before the archive, so a crash in between leaves an active
  memory with an edge that the next run completes, never an orphaned archive.
- Each item is re-read just before it is written; one changed since the plan was made
  (a concurrent add or feedback) is left alone and reported as skipped.
- Topic ids derive from their children and carry a fingerprint of what they cover, so an
  unchanged group is not rewritten (nor re-summarised by the LLM); stale topics are deleted
  with their edges.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from memos_ray import metrics
from memos_ray.config import ReorganizeConfig as ReorganizeParams
from memos_ray.core.json_repair import JSONRepairError, parse_json
from memos_ray.core.organize import (
    Entry,
    Merge,
    Supersede,
    judge_cases,
    plan_duplicates,
    plan_key_conflicts,
)
from memos_ray.domain.memory import Edge, EdgeType, MemoryItem, MemoryStatus, MemoryType
from memos_ray.models.chat import ChatModel, ChatRequest, Message, SamplingParams, Usage
from memos_ray.services.fine import JUDGE_PROMPT, JUDGE_SCHEMA, Judgement
from memos_ray.services.memory import TEXT_TYPES
from memos_ray.services.ranking import TEXT
from memos_ray.services.topics import TopicTreeWriter
from memos_ray.stores.sql.base import TenancyStore
from memos_ray.stores.vector.base import VectorFilter

if TYPE_CHECKING:
    from memos_ray.services.memory import MemoryService

logger = logging.getLogger("memos_ray.services.reorganize")


class MergeRecord(BaseModel):
    kept: str
    archived: str
    reason: str
    similarity: float | None = None


class CubeReport(BaseModel):
    """What one run changed in one cube (ids included, so it can be audited or undone)."""

    cube_id: str
    active: int = 0
    merged: list[MergeRecord] = Field(default_factory=list)
    archived: list[MergeRecord] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    topics_created: list[str] = Field(default_factory=list)
    topics_updated: list[str] = Field(default_factory=list)
    topics_removed: list[str] = Field(default_factory=list)
    topics_unchanged: int = 0
    topics: int = 0
    parents: int = 0
    parents_added: int = 0
    root: str | None = None
    unvectored: list[str] = Field(default_factory=list)
    llm_calls: int = 0
    llm: str = "none"
    seconds: float = 0.0
    error: str | None = None

    @property
    def changed(self) -> bool:
        return bool(
            self.merged
            or self.archived
            or self.topics_created
            or self.topics_updated
            or self.topics_removed
            or self.parents_added
        )


def _mode(item: MemoryItem) -> str:
    return next((t[5:] for t in item.metadata.tags if t.startswith("mode:")), "")


def _is_turn(item: MemoryItem) -> bool:
    return _mode(item) == "fast" and any(s.type == "chat" for s in item.metadata.sources)


class Reorganizer:
    """Runs the whole reorganisation of one cube at a time; safe to reuse across cubes."""

    def __init__(
        self,
        memory: MemoryService,
        params: ReorganizeParams | None = None,
        model: ChatModel | None = None,
        ledger: TenancyStore | None = None,
    ) -> None:
        self.memory = memory
        self.params = params or ReorganizeParams()
        self.model = model if self.params.llm == "config" else None
        self.ledger = ledger

    # -- reading ------------------------------------------------------------------------

    def _load(
        self, cube_id: str, report: CubeReport
    ) -> tuple[list[MemoryItem], np.ndarray, dict[str, str]]:
        """Active text memories that have a stored vector, in id order, their vectors and the
        text each vector was made from."""
        items, _ = self.memory.graph.list_nodes(
            cube_id, memory_types=TEXT_TYPES, statuses=[MemoryStatus.ACTIVATED]
        )
        store = self.memory.vectors_of(cube_id)
        scan = store.scan(
            cube_id,
            VectorFilter(memory_types=list(TEXT_TYPES), statuses=[MemoryStatus.ACTIVATED]),
        )
        rows = {item_id: r for r, item_id in enumerate(scan.ids)}
        plain = {i: str(p.get(TEXT) or "") for i, p in zip(scan.ids, scan.payloads, strict=True)}
        kept = sorted((i for i in items if i.id in rows), key=lambda i: i.id)
        report.unvectored = sorted(i.id for i in items if i.id not in rows)
        report.active = len(items)
        dim = scan.dense.shape[1] if scan.dense.ndim == 2 else store.dim
        vectors = (
            scan.dense[[rows[i.id] for i in kept]].astype(np.float32)
            if kept
            else np.zeros((0, dim), dtype=np.float32)
        )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return kept, vectors / np.maximum(norms, 1e-12), plain

    def _entries(self, items: Sequence[MemoryItem], plain: dict[str, str]) -> list[Entry]:
        return [
            Entry(
                id=i.id,
                text=i.memory,
                user_id=i.metadata.user_id,
                memory_type=str(i.metadata.memory_type),
                mode=_mode(i),
                created_at=i.metadata.created_at,
                sources=len(i.metadata.sources),
                key=i.metadata.key,
                mergeable=str(i.metadata.memory_type) != MemoryType.RAW_FILE
                and (self.params.include_turns or not _is_turn(i)),
                plain=plain.get(i.id) or i.memory,
            )
            for i in items
        ]

    # -- the run ------------------------------------------------------------------------

    def run(self, cube_id: str) -> CubeReport:
        started = time.monotonic()
        p = self.params
        report = CubeReport(cube_id=cube_id)
        usage = Usage()
        try:
            items, vectors, plain = self._load(cube_id, report)
            current = {i.id: i for i in items}
            entries = self._entries(items, plain)
            merges = plan_duplicates(entries, vectors, self.params.near_duplicate)
            self._apply_merges(cube_id, merges, current, report)
            alive = [n for n, e in enumerate(entries) if _active(current.get(e.id))]
            items = [current[entries[n].id] for n in alive]
            vectors, entries = vectors[alive], self._entries(items, plain)
            model = self._model_for(cube_id, report)
            if model is not None:
                merges, supersedes, usage = self._judge(model, entries, vectors, report)
                self._apply_merges(cube_id, merges, current, report)
            else:
                supersedes = plan_key_conflicts(entries, vectors, self.params.key_similarity)
            self._apply_supersedes(cube_id, supersedes, current, report)
            alive = [n for n, e in enumerate(entries) if _active(current.get(e.id))]
            items = [current[entries[n].id] for n in alive]
            tree = TopicTreeWriter(self.memory.graph, p.leaf_size, p.branching, p.seed)
            left = p.max_llm_calls - report.llm_calls
            outcome = tree.rebuild(
                cube_id, self._entries(items, plain), vectors[alive], model, left
            )
            usage = _add(usage, outcome.usage)
            report.llm_calls += outcome.llm_calls
            report.topics_created = outcome.created
            report.topics_updated = outcome.updated
            report.topics_removed = outcome.removed
            report.topics_unchanged = outcome.unchanged
            report.topics = outcome.topics
            report.parents = outcome.parents
            report.parents_added = outcome.parents_added
            report.root = outcome.root
        except Exception as exc:
            logger.exception("reorganising cube %s failed", cube_id)
            report.error = f"{type(exc).__name__}: {exc}"
        finally:
            metrics.llm_tokens("reorganize", usage.prompt_tokens, usage.completion_tokens)
            if self.ledger is not None and report.llm_calls:
                self.ledger.record_llm_usage(
                    cube_id, usage.prompt_tokens, usage.completion_tokens, report.llm_calls
                )
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def _model_for(self, cube_id: str, report: CubeReport) -> ChatModel | None:
        if self.model is None:
            return None
        if self.ledger is not None and self.ledger.llm_usage(cube_id).over_budget:
            report.llm = "over budget: rules only"
            return None
        report.llm = self.model.model_names[0]
        return self.model

    # -- duplicates and contradictions --------------------------------------------------

    def _fresh(
        self, cube_id: str, ids: Sequence[str], current: dict[str, MemoryItem]
    ) -> dict[str, MemoryItem]:
        """Items as stored now, only where unchanged since they were read (and active)."""
        stored = {i.id: i for i in self.memory.get_by_ids([cube_id], list(dict.fromkeys(ids)))}
        return {
            i: item
            for i, item in stored.items()
            if i in current
            and item.metadata.version == current[i].metadata.version
            and item.metadata.status == MemoryStatus.ACTIVATED
        }

    def _apply_merges(
        self,
        cube_id: str,
        merges: Sequence[Merge],
        current: dict[str, MemoryItem],
        report: CubeReport,
    ) -> None:
        if not merges:
            return
        fresh = self._fresh(cube_id, [x for m in merges for x in (m.kept, m.absorbed)], current)
        kept: dict[str, MemoryItem] = {}
        absorbed: dict[str, list[str]] = {}
        archived: list[MemoryItem] = []
        edges: list[Edge] = []
        for merge in merges:
            if merge.kept not in fresh or merge.absorbed not in fresh:
                report.skipped.append(merge.absorbed)
                continue
            target = kept.get(merge.kept, fresh[merge.kept])
            other = fresh[merge.absorbed]
            meta = target.metadata
            sources = list(meta.sources)
            sources.extend(s for s in other.metadata.sources if s not in sources)
            tags = list(dict.fromkeys([*meta.tags, *other.metadata.tags]))
            kept[merge.kept] = target.model_copy(
                update={"metadata": meta.model_copy(update={"sources": sources, "tags": tags})}
            )
            absorbed.setdefault(merge.kept, []).append(merge.absorbed)
            archived.append(
                other.revised(
                    f"reorganize: {merge.reason} of {merge.kept}", status=MemoryStatus.ARCHIVED
                )
            )
            edges.append(Edge(source=merge.absorbed, target=merge.kept, type=EdgeType.MERGED_TO))
            report.merged.append(
                MergeRecord(
                    kept=merge.kept,
                    archived=merge.absorbed,
                    reason=merge.reason,
                    similarity=_finite(merge.similarity),
                )
            )
        updates: list[MemoryItem] = []
        for item_id, merged in kept.items():
            before = fresh[item_id].metadata
            if merged.metadata.sources != before.sources or merged.metadata.tags != before.tags:
                # One history entry per run, however many copies it absorbed.
                reason = f"reorganize: absorbed {', '.join(absorbed[item_id])}"
                updates.append(
                    fresh[item_id].revised(
                        reason, sources=merged.metadata.sources, tags=merged.metadata.tags
                    )
                )
        self._write(cube_id, edges, [*updates, *archived], current)

    def _apply_supersedes(
        self,
        cube_id: str,
        supersedes: Sequence[Supersede],
        current: dict[str, MemoryItem],
        report: CubeReport,
    ) -> None:
        if not supersedes:
            return
        fresh = self._fresh(cube_id, [x for s in supersedes for x in (s.old, s.new)], current)
        archived: list[MemoryItem] = []
        edges: list[Edge] = []
        for sup in supersedes:
            if sup.old not in fresh or sup.new not in fresh:
                report.skipped.append(sup.old)
                continue
            archived.append(
                fresh[sup.old].revised(
                    f"reorganize: {sup.reason}; superseded by {sup.new}",
                    status=MemoryStatus.ARCHIVED,
                )
            )
            edges.append(Edge(source=sup.old, target=sup.new, type=EdgeType.MERGED_TO))
            report.archived.append(
                MergeRecord(
                    kept=sup.new,
                    archived=sup.old,
                    reason=sup.reason,
                    similarity=_finite(sup.similarity),
                )
            )
        self._write(cube_id, edges, archived, current)

    def _write(
        self,
        cube_id: str,
        edges: Sequence[Edge],
        items: Sequence[MemoryItem],
        current: dict[str, MemoryItem],
    ) -> None:
        if edges:
            self.memory.graph.add_edges(cube_id, edges)
        if items:
            self.memory.update_items(cube_id, items)
            current.update({i.id: i for i in items})

    def _judge(
        self, model: ChatModel, entries: list[Entry], vectors: np.ndarray, report: CubeReport
    ) -> tuple[list[Merge], list[Supersede], Usage]:
        """Each memory against its older look-alikes: duplicate (merged into the older one),
        contradiction (the older one is archived) or unrelated."""
        p = self.params
        merges: list[Merge] = []
        supersedes: list[Supersede] = []
        gone: set[int] = set()
        usage = Usage()
        for case in judge_cases(entries, vectors, p.judge_similarity, p.judge_candidates):
            if report.llm_calls >= p.max_llm_calls:
                break
            older = [
                (j, s) for j, s in zip(case.older, case.similarities, strict=True) if j not in gone
            ]
            if case.new in gone or not older:
                continue
            listing = "\n".join(f"{n}. {entries[j].text}" for n, (j, _) in enumerate(older))
            request = ChatRequest(
                messages=(
                    Message(role="system", content=JUDGE_PROMPT),
                    Message(
                        role="user", content=f"New: {entries[case.new].text}\nExisting:\n{listing}"
                    ),
                ),
                params=SamplingParams(max_tokens=64, temperature=0),
                response_schema=JUDGE_SCHEMA,
            )
            generation = model.generate(request)
            report.llm_calls += 1
            usage = _add(usage, generation.usage)
            try:
                judgement = Judgement.model_validate(parse_json(generation.text))
            except (JSONRepairError, ValidationError) as exc:
                logger.info("unreadable judgement, pair left as it is: %s", exc)
                continue
            if not 0 <= judgement.index < len(older):
                continue
            target, sim = older[judgement.index]
            new = entries[case.new]
            if judgement.relation == "duplicate":
                merges.append(Merge(entries[target].id, new.id, "duplicate (LLM)", sim))
                gone.add(case.new)
            elif judgement.relation == "contradiction":
                supersedes.append(Supersede(entries[target].id, new.id, "contradiction (LLM)", sim))
                gone.add(target)
        return merges, supersedes, usage


def _active(item: MemoryItem | None) -> bool:
    return item is not None and item.metadata.status == MemoryStatus.ACTIVATED


def _finite(value: float) -> float | None:
    return value if value == value else None


def _add(a: Usage, b: Usage) -> Usage:
    return Usage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        cached_tokens=a.cached_tokens + b.cached_tokens,
    )
