"""EmbedderDeployment: model replicas that batch requests from every ingress replica."""

from __future__ import annotations

import os
import threading

import numpy as np
import torch
from ray import serve

from memos_ray import metrics
from memos_ray.config import EmbedderConfig
from memos_ray.errors import ConfigError
from memos_ray.models.embedder import Embedder, Encoded
from memos_ray.models.handles import EMBEDDER_DEPLOYMENT
from memos_ray.models.runtimes import configured_embedder
from memos_ray.runtime.netguard import keep_serve_grpc_on_loopback


@serve.deployment(name=EMBEDDER_DEPLOYMENT, ray_actor_options={"num_cpus": 1})
class EmbedderDeployment:
    def __init__(self, config: EmbedderConfig) -> None:
        keep_serve_grpc_on_loopback()
        torch.set_num_threads(config.threads or os.cpu_count() or 1)
        self._config = config
        self._embedder = self._load(config.model)
        # Other models by name, loaded on first use (cubes moved to another embedding space
        # by jobs.reembed; see memos_ray/services/spaces.py). Few: one per space in the registry.
        self._others: dict[str, Embedder] = {}
        self._others_lock = threading.Lock()
        if self._embedder.dim != config.dim:
            raise ConfigError(
                f"embedder.dim is {config.dim} but the model gives {self._embedder.dim}"
            )
        self.embed_one.set_max_batch_size(config.batch_size)  # type: ignore[attr-defined]
        self.embed_one.set_batch_wait_timeout_s(config.max_batch_wait_s)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def embed_one(self, texts: list[str]) -> list[Encoded]:
        """Single texts from concurrent requests, encoded as one batch."""
        metrics.EMBEDDER_BATCH.observe(len(texts), call="batched")
        encoded = self._embedder.encode(texts)
        tokens: list[np.ndarray | None] = (
            list(encoded.tokens) if encoded.tokens else [None] * len(texts)
        )
        return [
            Encoded(encoded.dense[i : i + 1], None if (t := tokens[i]) is None else [t])
            for i in range(len(texts))
        ]

    def embed_many(self, texts: list[str]) -> Encoded:
        """A request that already holds a batch (bulk add) skips the batching queue."""
        metrics.EMBEDDER_BATCH.observe(len(texts), call="bulk")
        return self._embedder.encode(texts)

    def dim(self) -> int:
        return self._embedder.dim

    def encode_with(self, model: str, texts: list[str]) -> Encoded:
        """`texts` encoded by another model ("" is the packaged all-MiniLM-L6-v2). A sync
        method runs in Serve's thread pool: loading a model does not block the event loop
        that batches the configured model's requests."""
        metrics.EMBEDDER_BATCH.observe(len(texts), call="other_model")
        return self._model(model).encode(texts)

    def _load(self, model: str | None) -> Embedder:
        cfg = self._config
        return configured_embedder(cfg, model, threads=cfg.threads or os.cpu_count() or 1)

    def _model(self, model: str) -> Embedder:
        if model == (self._config.model or ""):
            return self._embedder
        with self._others_lock:
            embedder = self._others.get(model)
            if embedder is None:
                embedder = self._load(model or None)
                self._others[model] = embedder
        return embedder
