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
    "mmr" also trades relevance against redundancy (maximal marginal relevance).
    """
    if mode == "no":
        return list(ranked[:top_k])
    picked: list[str] = []
    picked_vecs: list[np.ndarray] = []
    pool = list(ranked)
    while pool and len(picked) < top_k:
        best_idx, best_val = -1, -np.inf
        for idx, item_id in enumerate(pool):
            vec = vectors.get(item_id)
            redundancy = (
                max((float(np.dot(vec, p)) for p in picked_vecs), default=0.0)
                if (vec is not None)
                else 0.0
            )
            if redundancy >= duplicate_threshold:
                continue
            if mode == "sim":
                best_idx = idx
                break
            value = mmr_lambda * relevance[item_id] - (1 - mmr_lambda) * max(redundancy, 0.0)
            if value > best_val:
                best_idx, best_val = idx, value
        if best_idx < 0:
            break
        item_id = pool.pop(best_idx)
        picked.append(item_id)
        vec = vectors.get(item_id)
        if vec is not None:
            picked_vecs.append(vec)
    return picked
