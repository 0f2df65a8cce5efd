"""The `ChatModel` role: one interface for vLLM, a remote OpenAI-compatible endpoint and
Hugging Face transformers on CPU.

Requests and results are pydantic models because they cross process boundaries (Serve
handles, the vLLM helper process) and the HTTP API; backends differ only in how they run.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from memos_ray.errors import MemosError

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "error"]


class LLMError(MemosError):
    """The model backend failed (unreachable endpoint, engine error): not the caller's fault."""

    status_code = 502


class UnknownModelError(MemosError):
    status_code = 404


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role
    content: str


class SamplingParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int = Field(default=512, ge=1)
    # 0 means greedy: the only setting under which two runs must give the same tokens.
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    stop: tuple[str, ...] = ()
    seed: int | None = None


class Adapter(BaseModel):
    """A LoRA adapter (PEFT layout: adapter_config.json + adapter_model.safetensors)."""

    model_config = ConfigDict(frozen=True)

    # Unique per adapter version: engines cache loaded adapters under this name.
    name: str
    path: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    messages: tuple[Message, ...]
    params: SamplingParams = Field(default_factory=SamplingParams)
    # None: the backend's default model. Otherwise a served model name.
    model: str | None = None
    adapter: Adapter | None = None
    # The first `prefix_messages` messages form a stable prefix (activation memory): a
    # backend may keep its KV cache and reuse it; the output must not change because of it.
    prefix_messages: int = Field(default=0, ge=0)
    # A JSON schema the answer must follow: backends with guided decoding enforce it,
    # others ignore it (callers parse leniently either way).
    response_schema: dict[str, Any] | None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Prompt tokens whose KV came from a cache instead of being computed now.
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Generation(BaseModel):
    text: str
    finish_reason: FinishReason
    usage: Usage
    model: str
    # Seconds from request to first generated token, when the backend measured it.
    ttft_s: float | None = None


class Delta(BaseModel):
    """One streamed piece; the last one has `finish_reason` and `usage` set."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    ttft_s: float | None = None


class PrefixWarmup(BaseModel):
    tokens: int
    seconds: float
    # False when the prefix was already cached (nothing computed).
    computed: bool


class ChatModel(ABC):
    """Generate, stream, count tokens; optionally keep prefix KV caches warm."""

    @property
    @abstractmethod
    def model_names(self) -> list[str]:
        """Names a request may pass as `model` (the first is the default)."""

    @abstractmethod
    def generate(self, request: ChatRequest) -> Generation: ...

    @abstractmethod
    def stream(self, request: ChatRequest) -> Iterator[Delta]: ...

    @abstractmethod
    def count_tokens(self, messages: tuple[Message, ...] | list[Message]) -> int:
        """Tokens of the rendered prompt (chat template applied, generation prompt added)."""

    def warm_prefix(self, request: ChatRequest) -> PrefixWarmup:
        """Compute and keep the KV cache of the request's prefix; a no-op by default."""
        return PrefixWarmup(tokens=0, seconds=0.0, computed=False)

    def close(self) -> None:
        """Release engines, threads and connections (nothing to release by default)."""
        return None

    def check_model(self, model: str | None) -> str:
        names = self.model_names
        if model is None or model == "":
            return names[0]
        if model not in names:
            raise UnknownModelError(f"model {model!r} is not served here; available: {names}")
        return model


def collect(deltas: Iterator[Delta], model: str) -> Generation:
    """A whole generation from a stream (for backends that only stream)."""
    parts: list[str] = []
    finish: FinishReason = "stop"
    usage = Usage()
    ttft: float | None = None
    for delta in deltas:
        parts.append(delta.text)
        if delta.ttft_s is not None and ttft is None:
            ttft = delta.ttft_s
        if delta.finish_reason is not None:
            finish = delta.finish_reason
        if delta.usage is not None:
            usage = delta.usage
    return Generation(
        text="".join(parts), finish_reason=finish, usage=usage, model=model, ttft_s=ttft
    )


_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)


def split_reasoning(text: str) -> tuple[str, str]:
    """(answer, reasoning): reasoning models put their thoughts inside <think>...</think>."""
    thoughts = [m.strip() for m in _THINK.findall(text)]
    answer = _THINK.sub("", text).strip()
    return answer, "\n".join(t for t in thoughts if t)


class ReasoningSplitter:
    """Splits a stream into answer and <think> reasoning pieces, tags split across chunks."""

    _OPEN, _CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self._buffer = ""
        self._thinking = False

    def feed(
        self, text: str, final: bool = False
    ) -> list[tuple[Literal["text", "reasoning"], str]]:
        self._buffer += text
        out: list[tuple[Literal["text", "reasoning"], str]] = []
        while self._buffer:
            tag = self._CLOSE if self._thinking else self._OPEN
            kind: Literal["text", "reasoning"] = "reasoning" if self._thinking else "text"
            at = self._buffer.find(tag)
            if at >= 0:
                if at:
                    out.append((kind, self._buffer[:at]))
                self._buffer = self._buffer[at + len(tag) :]
                self._thinking = not self._thinking
                continue
            # Hold back a tail that may be the start of the tag.
            keep = 0 if final else _partial_suffix(self._buffer, tag)
            emit = self._buffer[: len(self._buffer) - keep]
            if emit:
                out.append((kind, emit))
            self._buffer = self._buffer[len(emit) :]
            break
        return out


def _partial_suffix(text: str, tag: str) -> int:
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
