"""Model interfaces over Serve deployment handles, for sync code in worker threads.

The scheduler's actors, the jobs and the ingress reach the app's embedder and LLM replicas
through these; the deployments themselves (`deployments/`) only host the models.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

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
from memos_ray.models.embedder import Embedder, Encoded

EMBEDDER_DEPLOYMENT = "EmbedderDeployment"
LLM_DEPLOYMENT = "LLMDeployment"


class HandleEmbedder(Embedder):
    """The Embedder interface over the deployment handle, for sync code in worker threads.

    With `model`, texts go to that model (`encode_with`) instead of the configured one.
    """

    def __init__(
        self,
        handle: DeploymentHandle,
        dim: int,
        batch_threshold: int = 8,
        model: str | None = None,
    ) -> None:
        self._handle = handle
        self._dim = dim
        self._threshold = batch_threshold
        self._model = model

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts).dense

    def encode(self, texts: Sequence[str]) -> Encoded:
        if not texts:
            return Encoded(np.zeros((0, self._dim), dtype=np.float32), [])
        if self._model is not None:
            return self._handle.encode_with.remote(self._model, list(texts)).result()
        if len(texts) >= self._threshold:
            return self._handle.embed_many.remote(list(texts)).result()
        parts: list[Encoded] = [
            r.result() for r in [self._handle.embed_one.remote(t) for t in texts]
        ]
        dense = np.concatenate([p.dense for p in parts]).astype(np.float32)
        if any(p.tokens is None for p in parts):
            return Encoded(dense)
        return Encoded(dense, [t for p in parts for t in p.tokens or []])


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
        responses = cast(
            DeploymentResponseGenerator, self._handle.options(stream=True).stream.remote(request)
        )
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
