"""Fine-mode MemReader: an LLM distils a conversation window into self-contained memories.

Built for models that get JSON wrong: the answer is parsed leniently and repaired
(`json_repair`), validated against `Extraction`, and on failure the model is asked again
with the error; the caller keeps the raw window when every attempt fails, so a bad answer
never loses what was said. Relative dates left in the answer are resolved against the
window's time (`dates`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from memos_ray.core.dates import resolve_relative_dates
from memos_ray.core.json_repair import JSONRepairError, parse_json
from memos_ray.core.reader import Window
from memos_ray.domain.memory import MemoryType
from memos_ray.models.chat import ChatModel, ChatRequest, Message, SamplingParams, Usage

logger = logging.getLogger("memos_ray.services.fine")

_TYPES = {"UserMemory": MemoryType.USER, "LongTermMemory": MemoryType.LONG_TERM}


class ExtractedMemory(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key: str = ""
    memory_type: str = "LongTermMemory"
    value: str = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, data: Any) -> Any:
        """Accept the shapes small models produce: other field names, a bare string."""
        if isinstance(data, str):
            return {"value": data}
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for alias in ("memory", "text", "content", "fact"):
            if not data.get("value") and isinstance(data.get(alias), str):
                data["value"] = data[alias]
        if "memory_type" not in data and isinstance(data.get("type"), str):
            data["memory_type"] = data["type"]
        if isinstance(data.get("tags"), str):
            data["tags"] = [t.strip() for t in data["tags"].split(",") if t.strip()]
        if isinstance(data.get("value"), str):
            data["value"] = data["value"].strip()
        return data

    @property
    def type(self) -> MemoryType:
        return _TYPES.get(self.memory_type, MemoryType.LONG_TERM)


class ExtractedPreference(BaseModel):
    model_config = ConfigDict(extra="ignore")

    preference: str = Field(min_length=1)
    # explicit: the user said it; implicit: inferred from what the user did or chose.
    kind: Literal["explicit", "implicit"] = "explicit"
    topic: str = ""
    reasoning: str = ""

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"preference": data}
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for alias in ("value", "text", "content"):
            if not data.get("preference") and isinstance(data.get(alias), str):
                data["preference"] = data[alias]
        kind = str(data.get("kind") or data.get("type") or "explicit").lower()
        data["kind"] = "implicit" if kind.startswith("implicit") else "explicit"
        if isinstance(data.get("preference"), str):
            data["preference"] = data["preference"].strip()
        return data


class Extraction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    memories: list[ExtractedMemory] = Field(default_factory=list)
    preferences: list[ExtractedPreference] = Field(default_factory=list)
    summary: str = ""

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, data: Any) -> Any:
        if isinstance(data, list):
            data = {"memories": data}
        if isinstance(data, dict) and "memories" not in data:
            for alias in ("memory_list", "facts", "items"):
                if isinstance(data.get(alias), list):
                    data = {**data, "memories": data[alias]}
                    break
            else:
                if "value" in data or "memory" in data:
                    data = {"memories": [data]}
        if isinstance(data, dict):
            # One malformed entry (a small model's half-written item) must not sink the rest.
            data = dict(data)
            for key, fields in (("memories", _VALUE_FIELDS), ("preferences", _PREF_FIELDS)):
                if isinstance(data.get(key), list):
                    data[key] = [e for e in data[key] if _has_text(e, fields)]
        return data


_VALUE_FIELDS = ("value", "memory", "text", "content", "fact")
_PREF_FIELDS = ("preference", "value", "text", "content")


def _has_text(entry: Any, fields: tuple[str, ...]) -> bool:
    if isinstance(entry, str):
        return bool(entry.strip())
    return isinstance(entry, dict) and any(
        isinstance(entry.get(f), str) and entry[f].strip() for f in fields
    )


EXTRACTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "memories": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "key": {"type": "string"},
                    "memory_type": {"enum": ["UserMemory", "LongTermMemory"]},
                    "value": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["key", "memory_type", "value", "tags"],
            },
        },
        "preferences": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "preference": {"type": "string"},
                    "kind": {"enum": ["explicit", "implicit"]},
                    "topic": {"type": "string"},
                },
                "required": ["preference", "kind", "topic"],
            },
        },
        "summary": {"type": "string"},
    },
    "required": ["memories", "preferences", "summary"],
}

SYSTEM_PROMPT = (
    "You turn a conversation into memories for a personal assistant.\n"
    "Write each memory as one self-contained fact in the third person: use people's names "
    "instead of pronouns, and absolute dates instead of relative ones (each line shows when "
    "it was said).\n"
    'memory_type is "UserMemory" for facts about the user, otherwise "LongTermMemory".\n'
    "Also list the user's preferences: explicit ones the user states (likes, dislikes, "
    "wishes), and implicit ones shown by what the user chooses or does.\n"
    "Answer with JSON only, in this shape:\n"
    '{"memories": [{"key": "short title", "memory_type": "UserMemory", "value": "the fact", '
    '"tags": ["topic"]}], "preferences": [{"preference": "Melanie prefers tea to coffee", '
    '"kind": "explicit", "topic": "drinks"}], "summary": "one sentence about the conversation"}\n'
    'Return {"memories": [], "preferences": [], "summary": ""} if nothing is worth remembering.'
)


@dataclass
class FineResult:
    memories: list[ExtractedMemory]
    summary: str
    error: str | None
    attempts: int
    usage: Usage = field(default_factory=Usage)
    calls: int = 0
    preferences: list[ExtractedPreference] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.error is not None


class FineReader:
    def __init__(self, model: ChatModel, *, max_attempts: int = 2, max_tokens: int = 512) -> None:
        self.model = model
        self.max_attempts = max_attempts
        self.max_tokens = max_tokens

    def extract(self, window: Window) -> FineResult:
        messages: list[Message] = [
            Message(role="system", content=SYSTEM_PROMPT),
            Message(role="user", content=f"{_kind(window)}:\n{window.text}"),
        ]
        usage = Usage()
        error = "no attempt made"
        calls = 0
        for attempt in range(1, self.max_attempts + 1):
            request = ChatRequest(
                messages=tuple(messages),
                params=SamplingParams(max_tokens=self.max_tokens, temperature=0),
                response_schema=EXTRACTION_SCHEMA,
            )
            generation = self.model.generate(request)
            calls += 1
            usage = _add(usage, generation.usage)
            try:
                extraction = Extraction.model_validate(parse_json(generation.text))
            except (JSONRepairError, ValidationError) as exc:
                error = f"attempt {attempt}: {_short(exc)}"
                logger.info("fine extraction unreadable (%s)", error)
                messages += [
                    Message(role="assistant", content=generation.text),
                    Message(
                        role="user",
                        content=f"That was not valid JSON ({_short(exc)}). "
                        "Answer again with the JSON object only.",
                    ),
                ]
                continue
            said_at = next((s.chat_time for s in window.sources if s.chat_time), None)
            memories = [
                m.model_copy(update={"value": resolve_relative_dates(m.value, said_at)})
                for m in extraction.memories
                if m.value.strip()
            ]
            return FineResult(
                memories=memories,
                summary=resolve_relative_dates(extraction.summary.strip(), said_at),
                error=None,
                attempts=attempt,
                usage=usage,
                calls=calls,
                preferences=[p for p in extraction.preferences if p.preference],
            )
        return FineResult([], "", error, self.max_attempts, usage, calls)


def _kind(window: Window) -> str:
    return "Document" if window.memory_type == MemoryType.RAW_FILE else "Conversation"


def _add(total: Usage, more: Usage) -> Usage:
    return Usage(
        prompt_tokens=total.prompt_tokens + more.prompt_tokens,
        completion_tokens=total.completion_tokens + more.completion_tokens,
        cached_tokens=total.cached_tokens + more.cached_tokens,
    )


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:200] + "..."
