"""Suggested next questions (MemOS's /product/suggestions): what a user might ask next,
from the conversation so far or else from the cube's newest memories.

With a chat model the model writes them; without one they are drawn from the memories'
keys, so the route answers on every deployment and says which way it took.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from memos_ray.core.json_repair import JSONRepairError, parse_json
from memos_ray.domain.memory import MemoryItem
from memos_ray.models.chat import ChatModel, ChatRequest, Message, SamplingParams

logger = logging.getLogger("memos_ray.services.suggestions")

COUNT = 3
# Chinese text uses full-width punctuation on purpose.
_PROMPTS = {
    "en": (
        "Suggest {n} short questions the user may want to ask next, based on the material "
        'below. Answer with JSON only: {{"query": ["...", "..."]}}.'
    ),
    "zh": (
        "根据下面的材料，给出用户接下来可能想问的 {n} 个简短问题。"  # noqa: RUF001
        '只用 JSON 回答：{{"query": ["...", "..."]}}。'  # noqa: RUF001
    ),
}
_FALLBACK = {
    "en": "What do I know about {topic}?",
    "zh": "关于{topic}我知道些什么？",  # noqa: RUF001
}
_SCHEMA = {
    "type": "object",
    "properties": {"query": {"type": "array", "items": {"type": "string"}}},
    "required": ["query"],
}


class _Answer(BaseModel):
    query: list[str] = Field(default_factory=list)


def suggest(
    model: ChatModel | None,
    memories: Sequence[MemoryItem],
    conversation: Sequence[Message],
    language: Literal["zh", "en"],
) -> tuple[list[str], bool]:
    """(questions, whether a model wrote them)."""
    if model is not None:
        material = "\n".join(f"{m.role}: {m.content}" for m in conversation[-6:])
        if not material:
            material = "\n".join(f"- {m.memory[:200]}" for m in memories[:20])
        request = ChatRequest(
            messages=(
                Message(role="system", content=_PROMPTS[language].format(n=COUNT)),
                Message(role="user", content=material or "(nothing yet)"),
            ),
            params=SamplingParams(max_tokens=200, temperature=0),
            response_schema=_SCHEMA,
        )
        text = model.generate(request).text
        try:
            found = _Answer.model_validate(parse_json(text)).query
        except (JSONRepairError, ValidationError) as exc:
            logger.info("unreadable suggestions: %s", exc)
            found = []
        questions = [q.strip() for q in found if isinstance(q, str) and q.strip()][:COUNT]
        if questions:
            return questions, True
    return _from_keys(memories, language), False


def _from_keys(memories: Sequence[MemoryItem], language: Literal["zh", "en"]) -> list[str]:
    topics: list[str] = []
    for item in memories:
        topic = (item.metadata.key or " ".join(item.memory.split()[:6])).strip()
        if topic and topic not in topics:
            topics.append(topic)
        if len(topics) == COUNT:
            break
    return [_FALLBACK[language].format(topic=t) for t in topics]
