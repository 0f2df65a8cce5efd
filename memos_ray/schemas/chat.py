"""Wire models of the chat routes: MemOS `/product/chat/*` and OpenAI `/v1/chat/completions`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memos_ray.schemas.messages import ChatMessage
from memos_ray.schemas.values import INT64_MAX, INT64_MIN, FilterDict, ValidText


class ProductChatRequest(ValidText):
    """MemOS ChatRequest fields; `include_prompt` is memos-ray's: return the prompt sent."""

    model_config = ConfigDict(extra="ignore")

    user_id: str = Field(min_length=1, max_length=128)
    query: str
    readable_cube_ids: list[str] | None = None
    writable_cube_ids: list[str] | None = None
    mem_cube_id: str | None = None
    history: list[ChatMessage] | None = None
    mode: Literal["fast", "fine", "mixture"] = "fast"
    system_prompt: str | None = None
    top_k: int = Field(default=10, ge=1)
    session_id: str | None = None
    include_preference: bool = True
    pref_top_k: int = Field(default=6, ge=0)
    model_name_or_path: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    add_message_on_answer: bool = True
    relativity: float = Field(default=0.0, ge=0.0, le=1.0)
    filter: FilterDict | None = None
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    include_prompt: bool = False

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is empty")
        return value


class PlaygroundChatRequest(ProductChatRequest):
    beginner_guide_step: str | None = Field(default=None, max_length=256)


class BusinessChatRequest(ProductChatRequest):
    business_key: str = Field(min_length=1, max_length=256)
    need_search: bool = False


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(
            str(p.get("text", "")) for p in self.content if p.get("type") == "text"
        ).strip()


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class OpenAIChatRequest(ValidText):
    """The OpenAI chat completions body; fields memos-ray does not use are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    n: int = Field(default=1, ge=1, le=1)
    # OpenAI's end-user id: the memory owner in open mode (an API key names it otherwise).
    user: str | None = None
