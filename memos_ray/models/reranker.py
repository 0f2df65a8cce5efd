"""Rerankers: score (query, memory) pairs after fusion; the score becomes `relativity`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from memos_ray.core.keywords import term_id, tokenize


@dataclass(frozen=True)
class RerankCandidate:
    text: str
    # The stored dense vector, when the backend can use it (saves re-embedding).
    dense: np.ndarray | None = None
    # The stored keyword term ids (saves re-tokenising the text).
    term_ids: frozenset[int] | None = None
    # Or the text's keyword terms themselves, where an index already holds them.
    terms: frozenset[str] | None = None


class Reranker(ABC):
    @abstractmethod
    def rerank(
        self, query: str, query_dense: np.ndarray, candidates: Sequence[RerankCandidate]
    ) -> list[float]:
        """One score per candidate, roughly in [0, 1], higher is more relevant."""


class EmbeddingReranker(Reranker):
    """CPU default without cross-encoder weights: cosine blended with query-term coverage.

    Cosine alone under-rates exact names and numbers; coverage alone ignores paraphrase.
    """

    def __init__(self, keyword_weight: float = 0.25) -> None:
        self._w = keyword_weight

    def rerank(
        self, query: str, query_dense: np.ndarray, candidates: Sequence[RerankCandidate]
    ) -> list[float]:
        terms = set(tokenize(query))
        term_ids = {term_id(t) for t in terms}
        scores: list[float] = []
        for cand in candidates:
            cosine = float(np.dot(query_dense, cand.dense)) if cand.dense is not None else 0.0
            if cand.terms is not None:
                hits = len(terms & cand.terms)
            elif cand.term_ids is not None:
                hits = len(term_ids & cand.term_ids)
            else:
                hits = len(terms & set(tokenize(cand.text)))
            coverage = hits / len(terms) if terms else 0.0
            scores.append((1 - self._w) * cosine + self._w * coverage)
        return scores
