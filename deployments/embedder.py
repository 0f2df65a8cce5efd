"""EmbedderDeployment: model replicas that batch requests from every ingress replica."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from memos_ray.config import EmbedderConfig
from memos_ray.errors import ConfigError
from memos_ray.models.embedder import Embedder, Encoded, SentenceTransformerEmbedder
from memos_ray.netguard import keep_serve_grpc_on_loopback


@serve.deployment(name="EmbedderDeployment", ray_actor_options={"num_cpus": 1})
class EmbedderDeployment:
    def __init__(self, config: EmbedderConfig) -> None:
        keep_serve_grpc_on_loopback()
        torch.set_num_threads(config.threads or os.cpu_count() or 1)
        self._config = config
        self._embedder = SentenceTransformerEmbedder(
            config.model, device=config.device, batch_size=config.batch_size
        )
        # Other models by name, loaded on first use (cubes moved to another embedding space
        # by jobs.reembed; see memos_ray/spaces.py). Few: one per space in the registry.
        self._others: dict[str, SentenceTransformerEmbedder] = {}
        self._others_lock = threading.Lock()
        if self._embedder.dim != config.dim:
            raise ConfigError(
                f"embedder.dim is {config.dim} but the model gives {self._embedder.dim}"
            )
        self.embed_one.set_max_batch_size(config.batch_size)
        self.embed_one.set_batch_wait_timeout_s(config.max_batch_wait_s)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def embed_one(self, texts: list[str]) -> list[Encoded]:
        """Single texts from concurrent requests, encoded as one batch."""
        encoded = self._embedder.encode(texts)
        tokens = encoded.tokens or [None] * len(texts)
        return [
            Encoded(encoded.dense[i : i + 1], None if tokens[i] is None else [tokens[i]])
            for i in range(len(texts))
        ]

    def embed_many(self, texts: list[str]) -> Encoded:
        """A request that already holds a batch (bulk add) skips the batching queue."""
        return self._embedder.encode(texts)

    def dim(self) -> int:
        return self._embedder.dim

    def encode_with(self, model: str, texts: list[str]) -> Encoded:
        """`texts` encoded by another model ("" is the packaged all-MiniLM-L6-v2). A sync
        method runs in Serve's thread pool: loading a model does not block the event loop
        that batches the configured model's requests."""
        return self._model(model).encode(texts)

    def _model(self, model: str) -> SentenceTransformerEmbedder:
        if model == (self._config.model or ""):
            return self._embedder
        with self._others_lock:
            embedder = self._others.get(model)
            if embedder is None:
                cfg = self._config
                embedder = SentenceTransformerEmbedder(
                    model or None, device=cfg.device, batch_size=cfg.batch_size
                )
                self._others[model] = embedder
        return embedder


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
