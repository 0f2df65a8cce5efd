"""The topic tree of a cube in the graph: topic nodes (TopicMemory) and PARENT edges.

`memos_ray.core.organize.build_topic_tree` plans the tree; this writes the difference
between the plan and what the graph holds: new or changed topics are upserted, missing
PARENT edges added, topics no longer in the plan deleted (with their edges). A topic whose
id and fingerprint are unchanged is neither rewritten nor re-summarised.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memos_ray.core.json_repair import JSONRepairError, parse_json
from memos_ray.core.organize import Entry, TopicPlan, build_topic_tree, extractive_summary
from memos_ray.domain.memory import Edge, EdgeType, MemoryItem, MemoryMetadata, MemoryType
from memos_ray.models.chat import ChatModel, ChatRequest, Message, SamplingParams, Usage
from memos_ray.stores.graph.base import GraphStore

TOPIC_TYPE = str(MemoryType.TOPIC)

TOPIC_PROMPT = (
    "You name and summarise a group of related memories of one person or project.\n"
    'Answer with JSON only: {"key": "<a title of at most 8 words>", '
    '"summary": "<one or two sentences covering the whole group>"}.'
)
TOPIC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"key": {"type": "string"}, "summary": {"type": "string"}},
    "required": ["key", "summary"],
}


class TopicAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key: str = Field(min_length=1, max_length=200)
    summary: str = Field(min_length=1, max_length=2000)


@dataclass
class TreeOutcome:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    topics: int = 0
    parents: int = 0
    parents_added: int = 0
    root: str | None = None
    llm_calls: int = 0
    usage: Usage = field(default_factory=Usage)


class TopicTreeWriter:
    def __init__(self, graph: GraphStore, leaf_size: int, branching: int, seed: int) -> None:
        self.graph = graph
        self.leaf_size = leaf_size
        self.branching = branching
        self.seed = seed

    def rebuild(
        self,
        cube_id: str,
        entries: Sequence[Entry],
        vectors: np.ndarray,
        model: ChatModel | None,
        max_llm_calls: int,
    ) -> TreeOutcome:
        """Make the cube's tree cover exactly `entries` (its active memories)."""
        plans = build_topic_tree(
            cube_id,
            entries,
            vectors,
            leaf_size=self.leaf_size,
            branching=self.branching,
            seed=self.seed,
        )
        existing, _ = self.graph.list_nodes(cube_id, memory_types=[TOPIC_TYPE])
        stored = {t.id: t for t in existing}
        out = TreeOutcome(topics=len(plans), root=plans[-1].id if plans else None)
        described: dict[str, tuple[str, str]] = {}
        writes: list[MemoryItem] = []
        for plan in plans:  # children before parents: a parent's prompt reads theirs
            old = stored.get(plan.id)
            if old is not None and old.metadata.info.get("topic_fingerprint") == plan.fingerprint:
                described[plan.id] = (old.metadata.key or "", old.memory)
                out.unchanged += 1
                continue
            use = model if out.llm_calls < max_llm_calls else None
            key, summary, by = self._describe(use, plan, entries, described, out)
            described[plan.id] = (key, summary)
            writes.append(_topic_item(cube_id, plan, entries, key, summary, by, old))
            (out.updated if old is not None else out.created).append(plan.id)
        wanted = {(plan.id, child) for plan in plans for child in plan.children}
        have = {
            (e.source, e.target) for e in self.graph.get_edges(cube_id) if e.type == EdgeType.PARENT
        }
        missing = sorted(wanted - have)
        # New nodes and edges first, stale topics last: a crash in between leaves a second
        # parent for a while, which the next run removes, never a memory without one.
        if writes:
            self.graph.upsert_nodes(cube_id, writes)
        if missing:
            self.graph.add_edges(
                cube_id, [Edge(source=s, target=t, type=EdgeType.PARENT) for s, t in missing]
            )
        out.removed = sorted(set(stored) - {plan.id for plan in plans})
        if out.removed:
            self.graph.delete_nodes(cube_id, out.removed)
        out.parents = len(wanted)
        out.parents_added = len(missing)
        return out

    def _describe(
        self,
        model: ChatModel | None,
        plan: TopicPlan,
        entries: Sequence[Entry],
        described: dict[str, tuple[str, str]],
        out: TreeOutcome,
    ) -> tuple[str, str, str]:
        """(key, summary, how): the LLM's words when it gives usable ones, else extractive."""
        key = ", ".join(plan.keywords[:3])
        summary = extractive_summary(plan, entries)
        if model is None:
            return key, summary, "extractive"
        if plan.level == 0:
            lines = [entries[plan.central].text] + [
                entries[i].text for i in plan.members if i != plan.central
            ]
        else:
            lines = [f"{described[c][0]}: {described[c][1]}" for c in plan.children]
        listing = "\n".join(f"- {' '.join(t.split())[:300]}" for t in lines[:12])
        request = ChatRequest(
            messages=(
                Message(role="system", content=TOPIC_PROMPT),
                Message(role="user", content=f"Memories:\n{listing}"),
            ),
            params=SamplingParams(max_tokens=128, temperature=0),
            response_schema=TOPIC_SCHEMA,
        )
        generation = model.generate(request)
        out.llm_calls += 1
        out.usage = Usage(
            prompt_tokens=out.usage.prompt_tokens + generation.usage.prompt_tokens,
            completion_tokens=out.usage.completion_tokens + generation.usage.completion_tokens,
            cached_tokens=out.usage.cached_tokens + generation.usage.cached_tokens,
        )
        try:
            answer = TopicAnswer.model_validate(parse_json(generation.text))
        except (JSONRepairError, ValidationError):
            return key, summary, "extractive"
        return answer.key.strip(), answer.summary.strip(), "llm"


def _topic_item(
    cube_id: str,
    plan: TopicPlan,
    entries: Sequence[Entry],
    key: str,
    summary: str,
    by: str,
    old: MemoryItem | None,
) -> MemoryItem:
    users = Counter(entries[i].user_id for i in plan.members)
    user = min(users, key=lambda u: (-users[u], u))
    tags = ["topic", f"topic_level:{plan.level}", *(["topic_root"] if plan.is_root else [])]
    info = {
        "topic_level": plan.level,
        "topic_members": len(plan.members),
        "topic_children": len(plan.children),
        "topic_keywords": plan.keywords,
        "topic_central": entries[plan.central].id,
        "topic_fingerprint": plan.fingerprint,
        "topic_summary_by": by,
    }
    if old is not None:
        revised = old.revised("reorganize: topic changed", key=key, tags=tags, info=info)
        return revised.model_copy(update={"memory": summary})
    metadata = MemoryMetadata(
        user_id=user, memory_type=MemoryType.TOPIC, key=key, tags=tags, info=info
    )
    return MemoryItem(id=plan.id, memory=summary, cube_id=cube_id, metadata=metadata)
