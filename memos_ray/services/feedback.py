"""Feedback: the user corrects the assistant in plain language; memories follow.

The LLM sees the feedback, the conversation and the memories it may concern (those the
answer used, plus the closest by search) and answers with operations: `update` (the old
memory is archived with a history entry and a MERGED_TO edge to its corrected version),
`add`, or `delete` (a soft delete: status `deleted`, recoverable). An unreadable answer
stores the feedback itself as a memory, so a correction is never dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from memos_ray import metrics
from memos_ray.core.json_repair import JSONRepairError, parse_json
from memos_ray.core.reader import Window
from memos_ray.domain.memory import (
    DEFAULT_SESSION,
    MemoryItem,
    MemoryStatus,
    MemoryType,
    SourceMessage,
    iso,
    utc_now,
)
from memos_ray.models.chat import ChatRequest, Message, SamplingParams, Usage
from memos_ray.services.fine import FineService
from memos_ray.services.memory import SearchOptions

if TYPE_CHECKING:
    from memos_ray.services.memory import MemoryService

logger = logging.getLogger("memos_ray.services.feedback")

FEEDBACK_PROMPT = (
    "The user corrects what an assistant remembers. Given the user's feedback and the "
    "numbered memories, decide what to change.\n"
    "Answer with JSON only:\n"
    '{"operations": [{"op": "update", "index": 0, "text": "the corrected fact"}, '
    '{"op": "add", "text": "a new fact"}, {"op": "delete", "index": 1}], '
    '"answer": "a short reply to the user"}\n'
    "update: a memory is wrong and the feedback gives the right fact. delete: a memory is "
    "wrong and nothing replaces it. add: the feedback states a new fact. Write facts in the "
    "third person with names and absolute dates."
)

FEEDBACK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "operations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "op": {"enum": ["update", "add", "delete"]},
                    "index": {"type": "integer"},
                    "text": {"type": "string"},
                },
                "required": ["op"],
            },
        },
        "answer": {"type": "string"},
    },
    "required": ["operations", "answer"],
}


class Operation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    op: Literal["update", "add", "delete"]
    index: int = -1
    text: str = ""

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "op" not in data and isinstance(data.get("operation"), str):
                data["op"] = data["operation"]
            if isinstance(data.get("op"), str):
                data["op"] = data["op"].strip().lower()
            for alias in ("memory", "value", "new_text"):
                if not data.get("text") and isinstance(data.get(alias), str):
                    data["text"] = data[alias]
        return data


class Decision(BaseModel):
    model_config = ConfigDict(extra="ignore")

    operations: list[Operation] = Field(default_factory=list)
    answer: str = ""


@dataclass
class FeedbackOutcome:
    answer: str
    added: list[MemoryItem] = field(default_factory=list)
    # (new item, archived old item)
    updated: list[tuple[MemoryItem, MemoryItem]] = field(default_factory=list)
    deleted: list[MemoryItem] = field(default_factory=list)
    error: str | None = None
    usage: Usage = field(default_factory=Usage)

    def record(self) -> dict[str, Any]:
        """MemOS's `record`: what was added and which memories were updated from what."""
        return {
            "add": [{"id": i.id, "text": i.memory} for i in self.added],
            "update": [
                {
                    "id": new.id,
                    "text": new.memory,
                    "archived_id": old.id,
                    "origin_memory": old.memory,
                }
                for new, old in self.updated
            ],
            "delete": [{"id": i.id, "text": i.memory} for i in self.deleted],
        }


class FeedbackTask(BaseModel):
    """The payload of a `mem_feedback` task: the feedback request, minus who and where."""

    feedback_content: str
    history: list[Message] = Field(default_factory=list)
    retrieved_memory_ids: list[str] = Field(default_factory=list)
    corrected_answer: str | None = None
    feedback_time: str | None = None
    session_id: str = DEFAULT_SESSION


class FeedbackService:
    def __init__(self, fine: FineService, candidates: int = 5) -> None:
        self.fine = fine
        self.memory = fine.memory
        self.model = fine.model
        self.candidates = candidates

    def apply_task(self, cube_id: str, user_id: str, task: FeedbackTask) -> FeedbackOutcome:
        """Apply a feedback request as the route and the `mem_feedback` task receive it."""
        return self.apply(
            cube_id,
            user_id,
            task.feedback_content,
            history=task.history,
            retrieved_ids=task.retrieved_memory_ids,
            corrected_answer=task.corrected_answer,
            feedback_time=task.feedback_time,
            session_id=task.session_id,
        )

    def apply(
        self,
        cube_id: str,
        user_id: str,
        feedback: str,
        *,
        history: Sequence[Message] = (),
        retrieved_ids: Sequence[str] = (),
        corrected_answer: str | None = None,
        feedback_time: str | None = None,
        session_id: str = DEFAULT_SESSION,
    ) -> FeedbackOutcome:
        memories = self._concerned(cube_id, feedback, retrieved_ids)
        decision, usage, error = self._decide(feedback, memories, history, corrected_answer)
        outcome = FeedbackOutcome(answer=decision.answer, usage=usage, error=error)
        when = feedback_time or iso(utc_now())
        source = SourceMessage(type="feedback", role="user", chat_time=when, content=feedback)
        if error is not None:
            # Unreadable: keep the correction itself, searchable, for a later look.
            outcome.added += self._add(cube_id, user_id, feedback, source, session_id)
            outcome.answer = outcome.answer or "Thanks, I noted your feedback."
        for operation in decision.operations:
            target = memories[operation.index] if 0 <= operation.index < len(memories) else None
            if operation.op == "add" and operation.text.strip():
                outcome.added += self._add(cube_id, user_id, operation.text, source, session_id)
            elif operation.op == "update" and target is not None and operation.text.strip():
                new = self._add(cube_id, user_id, operation.text, source, session_id)
                if new and new[0].id != target.id:
                    old = self.fine.archive(cube_id, target, new[0].id, f"feedback: {feedback}")
                    outcome.updated.append((new[0], old))
            elif operation.op == "delete" and target is not None:
                reason = f"feedback: {feedback}"
                outcome.deleted.append(
                    set_status(self.memory, cube_id, target, MemoryStatus.DELETED, reason)
                )
        metrics.llm_tokens("feedback", usage.prompt_tokens, usage.completion_tokens)
        if self.fine.ledger is not None:
            self.fine.ledger.record_llm_usage(cube_id, usage.prompt_tokens, usage.completion_tokens)
        return outcome

    def _concerned(
        self, cube_id: str, feedback: str, retrieved_ids: Sequence[str]
    ) -> list[MemoryItem]:
        """The memories the answer used, then the closest to the feedback, active only."""
        found = self.memory.get_by_ids([cube_id], list(retrieved_ids))
        hits = self.memory.search(
            feedback, {cube_id: None}, SearchOptions(top_k=self.candidates, relativity=0.0)
        )[cube_id]
        seen: dict[str, MemoryItem] = {}
        for item in [*found, *hits]:
            if item.metadata.status == MemoryStatus.ACTIVATED and item.id not in seen:
                seen[item.id] = item
        return list(seen.values())[: self.candidates + len(retrieved_ids)]

    def _decide(
        self,
        feedback: str,
        memories: list[MemoryItem],
        history: Sequence[Message],
        corrected_answer: str | None,
    ) -> tuple[Decision, Usage, str | None]:
        listing = "\n".join(f"{n}. {m.memory}" for n, m in enumerate(memories)) or "(none)"
        talk = "\n".join(f"{m.role}: {m.content}" for m in list(history)[-6:])
        parts = [f"Conversation:\n{talk}" if talk else "", f"Memories:\n{listing}"]
        parts.append(f"Feedback: {feedback}")
        if corrected_answer:
            parts.append(f"The correct answer would be: {corrected_answer}")
        request = ChatRequest(
            messages=(
                Message(role="system", content=FEEDBACK_PROMPT),
                Message(role="user", content="\n\n".join(p for p in parts if p)),
            ),
            params=SamplingParams(max_tokens=256, temperature=0),
            response_schema=FEEDBACK_SCHEMA,
        )
        generation = self.model.generate(request)
        try:
            return Decision.model_validate(parse_json(generation.text)), generation.usage, None
        except (JSONRepairError, ValidationError) as exc:
            logger.info("unreadable feedback decision: %s", exc)
            return Decision(), generation.usage, f"unreadable decision: {exc}"[:300]

    def _add(
        self, cube_id: str, user_id: str, text: str, source: SourceMessage, session_id: str
    ) -> list[MemoryItem]:
        window = Window(
            text=text.strip(),
            memory_type=MemoryType.LONG_TERM,
            sources=[source],
            tags=("feedback",),
            mode="fine",
        )
        added = self.memory.add_windows(cube_id, user_id, [window], session_id)
        return [*added.stored, *added.duplicates]


def set_status(
    memory: MemoryService, cube_id: str, item: MemoryItem, status: MemoryStatus, reason: str
) -> MemoryItem:
    """A new status with a history entry holding the version it leaves."""
    changed = item.revised(reason, status=status)
    memory.update_items(cube_id, [changed])
    return changed


def recover(memory: MemoryService, cube_id: str, ids: Sequence[str]) -> list[MemoryItem]:
    """Archived or (soft-)deleted memories back to active; the rest are left as they are."""
    items = memory.graph.get_nodes([cube_id], list(ids))
    return [
        set_status(memory, cube_id, item, MemoryStatus.ACTIVATED, "recovered")
        for item in items
        if item.metadata.status in (MemoryStatus.ARCHIVED, MemoryStatus.DELETED)
    ]
