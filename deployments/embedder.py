"""EmbedderDeployment: model replicas that batch requests from every ingress replica."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from memos_ray.config import EmbedderConfig
from memos_ray.errors import ConfigError
from memos_ray.models.embedder import Embedder, SentenceTransformerEmbedder


@serve.deployment(name="EmbedderDeployment", ray_actor_options={"num_cpus": 1})
class EmbedderDeployment:
    def __init__(self, config: EmbedderConfig) -> None:
        torch.set_num_threads(config.threads or os.cpu_count() or 1)
        self._embedder = SentenceTransformerEmbedder(
            config.model, device=config.device, batch_size=config.batch_size
        )
        if self._embedder.dim != config.dim:
            raise ConfigError(
                f"embedder.dim is {config.dim} but the model gives {self._embedder.dim}"
            )
        self.embed_one.set_max_batch_size(config.batch_size)
        self.embed_one.set_batch_wait_timeout_s(config.max_batch_wait_s)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def embed_one(self, texts: list[str]) -> list[np.ndarray]:
        """Single texts from concurrent requests, embedded as one batch."""
        return list(self._embedder.embed(texts))

    def embed_many(self, texts: list[str]) -> np.ndarray:
        """A request that already holds a batch (bulk add) skips the batching queue."""
        return self._embedder.embed(texts)

    def dim(self) -> int:
        return self._embedder.dim


class HandleEmbedder(Embedder):
    """The Embedder interface over the deployment handle, for sync code in worker threads."""

    def __init__(self, handle: DeploymentHandle, dim: int, batch_threshold: int = 8) -> None:
        self._handle = handle
        self._dim = dim
        self._threshold = batch_threshold

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        if len(texts) >= self._threshold:
            return np.asarray(self._handle.embed_many.remote(list(texts)).result())
        responses = [self._handle.embed_one.remote(t) for t in texts]
        return np.stack([np.asarray(r.result()) for r in responses]).astype(np.float32)
