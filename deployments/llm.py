"""LLMDeployment: chat model replicas (transformers on CPU, vLLM's engine on GPU)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ray import serve

from memos_ray.config import MemosConfig
from memos_ray.errors import MemosError
from memos_ray.models.chat import (
    ChatModel,
    ChatRequest,
    Delta,
    Generation,
    Message,
    PrefixWarmup,
)
from memos_ray.models.handles import LLM_DEPLOYMENT
from memos_ray.runtime.compose import build_chat_model
from memos_ray.runtime.netguard import keep_serve_grpc_on_loopback


@serve.deployment(name=LLM_DEPLOYMENT, max_ongoing_requests=16)
class LLMDeployment:
    """One model per replica; blocking backend calls run off the replica's event loop."""

    def __init__(self, config: MemosConfig) -> None:
        keep_serve_grpc_on_loopback()

        model = build_chat_model(config)
        if model is None:
            raise MemosError("LLMDeployment needs an llm backend other than 'none'")
        self._model: ChatModel = model

    def model_names(self) -> list[str]:
        return self._model.model_names

    async def generate(self, request: ChatRequest) -> Generation:
        return await asyncio.to_thread(self._model.generate, request)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Delta]:
        deltas = self._model.stream(request)
        try:
            while True:
                delta: Delta | None = await asyncio.to_thread(next, deltas, None)
                if delta is None:
                    return
                yield delta
        finally:
            # A client that went away closes the backend's stream, which ends generation.
            close = getattr(deltas, "close", None)
            if close is not None:
                await asyncio.to_thread(close)

    async def count_tokens(self, messages: list[Message]) -> int:
        return await asyncio.to_thread(self._model.count_tokens, messages)

    async def warm_prefix(self, request: ChatRequest) -> PrefixWarmup:
        return await asyncio.to_thread(self._model.warm_prefix, request)

    def __del__(self) -> None:
        model = getattr(self, "_model", None)
        if model is not None:
            model.close()
