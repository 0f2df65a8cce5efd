"""LLMDeployment: chat model replicas (transformers on CPU, vLLM's engine on GPU)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from memos_ray.config import MemosConfig
from memos_ray.errors import MemosError
from memos_ray.models.chat import (
    ChatModel,
    ChatRequest,
    Delta,
    Generation,
    LLMError,
    Message,
    PrefixWarmup,
)
from memos_ray.netguard import keep_serve_grpc_on_loopback

_DONE = object()


@serve.deployment(name="LLMDeployment", max_ongoing_requests=16)
class LLMDeployment:
    """One model per replica; blocking backend calls run off the replica's event loop."""

    def __init__(self, config: MemosConfig) -> None:
        keep_serve_grpc_on_loopback()
        from memos_ray.wiring import build_chat_model

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
                delta = await asyncio.to_thread(next, deltas, _DONE)
                if delta is _DONE:
                    return
                yield delta
        finally:
            # A client that went away closes the backend's stream, which ends generation.
            await asyncio.to_thread(deltas.close)

    async def count_tokens(self, messages: list[Message]) -> int:
        return await asyncio.to_thread(self._model.count_tokens, messages)

    async def warm_prefix(self, request: ChatRequest) -> PrefixWarmup:
        return await asyncio.to_thread(self._model.warm_prefix, request)

    def __del__(self) -> None:
        model = getattr(self, "_model", None)
        if model is not None:
            model.close()


class HandleChatModel(ChatModel):
    """The ChatModel interface over the deployment handle, for sync code in worker threads."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle
        self._names: list[str] | None = None

    @property
    def model_names(self) -> list[str]:
        if self._names is None:
            self._names = _call(lambda: self._handle.model_names.remote().result())
        return self._names

    def generate(self, request: ChatRequest) -> Generation:
        self.check_model(request.model)
        return _call(lambda: self._handle.generate.remote(request).result())

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        self.check_model(request.model)
        responses = self._handle.options(stream=True).stream.remote(request)
        try:
            while True:
                delta = _call(lambda: next(responses, None))
                if delta is None:
                    return
                yield delta
        finally:
            responses.cancel()

    def count_tokens(self, messages: tuple[Message, ...] | list[Message]) -> int:
        return _call(lambda: self._handle.count_tokens.remote(list(messages)).result())

    def warm_prefix(self, request: ChatRequest) -> PrefixWarmup:
        return _call(lambda: self._handle.warm_prefix.remote(request).result())


def _call(fn: Any) -> Any:
    """Run a handle call; errors the replica raised on purpose keep their class and status."""
    try:
        return fn()
    except MemosError as exc:
        cause = getattr(exc, "cause", None)
        raise (cause if isinstance(cause, MemosError) else exc) from None
    except Exception as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, MemosError):
            raise cause from None
        raise LLMError(f"the LLM deployment failed: {type(exc).__name__}: {exc}") from exc
