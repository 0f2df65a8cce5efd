"""Search algorithms: rank fusion, relevance threshold, MMR de-duplication."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

DedupMode = Literal["mmr", "sim", "no"]


def rrf_fuse(
    rankings: Sequence[Sequence[str]], k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion: robust to the incomparable scales of cosine and BM25."""
    weights = weights or [1.0] * len(rankings)
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item_id in enumerate(ranking):
            scores[item_id] = scores.get(item_id, 0.0) + weight / (k + rank + 1)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def select(
    ranked: Sequence[str],
    relevance: Mapping[str, float],
    vectors: Mapping[str, np.ndarray],
    top_k: int,
    mode: DedupMode = "mmr",
    mmr_lambda: float = 0.7,
    duplicate_threshold: float = 0.92,
) -> list[str]:
    """Pick up to top_k ids from `ranked` (best first).

    "no" keeps the order; "sim" drops items nearly identical to one already picked;
    "mmr" also trades relevance against redundancy (maximal marginal relevance). One
    similarity matrix up front keeps this at a few array operations per pick.
    """
    if mode == "no" or not ranked:
        return list(ranked[:top_k])
    ids = list(ranked)
    dim = next((len(v) for v in (vectors.get(i) for i in ids) if v is not None), 0)
    matrix = np.zeros((len(ids), dim), dtype=np.float32)
    for row, item_id in enumerate(ids):
        vec = vectors.get(item_id)
        if vec is not None:
            matrix[row] = vec
    similarity = matrix @ matrix.T
    rel = np.asarray([relevance[i] for i in ids], dtype=np.float64)
    # Highest similarity to anything picked so far; an item without a vector stays at 0.
    redundancy = np.zeros(len(ids), dtype=np.float64)
    open_ = np.ones(len(ids), dtype=bool)
    picked: list[int] = []
    while len(picked) < top_k:
        candidates = open_ & (redundancy < duplicate_threshold)
        if not candidates.any():
            break
        if mode == "sim":
            best = int(np.argmax(candidates))
        else:
            value = mmr_lambda * rel - (1 - mmr_lambda) * redundancy
            value[~candidates] = -np.inf
            best = int(np.argmax(value))
        picked.append(best)
        open_[best] = False
        redundancy = np.maximum(redundancy, similarity[best])
    return [ids[i] for i in picked]
