"""A naive baseline for turn ranking: reciprocal-rank fusion of BM25 and dense cosine.

What the recipe of `turn_ranking` has to beat: each turn's indexed text alone (the same
`speaker: content` the recipe indexes), no speaker match, no dates, no neighbours, no
sessions. BM25 is the recipe's own (`bm25_build` over the project's tokenizer), the
fusion is the service's `rrf_fuse`, and the dense side is whatever embedder the caller
uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from memos_ray.core.keywords import tokenize
from memos_ray.core.search import rrf_fuse
from memos_ray.core.turn_ranking import BM25Index, RankingParams, bm25_build, bm25_score

RRF_K = 60  # the constant of Cormack et al. (2009), used as is by most hybrid search engines


@dataclass
class BaselineIndex:
    ids: list[str]
    bm25: BM25Index
    vectors: np.ndarray  # (n, d) unit rows

    @property
    def size(self) -> int:
        return len(self.ids)


def build_baseline_index(
    ids: Sequence[str], texts: Sequence[str], vectors: np.ndarray
) -> BaselineIndex:
    params = RankingParams()
    docs = [tokenize(text) for text in texts]
    e = np.asarray(vectors, np.float32)
    return BaselineIndex(list(ids), bm25_build(docs, params.k1, params.b), e)


def _order(score: np.ndarray) -> np.ndarray:
    """Positions by score, best first; ties by position (deterministic)."""
    return np.lexsort((np.arange(len(score)), -score))


def rrf_rank(
    index: BaselineIndex, query: str, query_vector: np.ndarray, top_k: int = 50, k: int = RRF_K
) -> list[str]:
    """Unit ids, best first: RRF of the BM25 ranking (turns sharing a query term; the others
    are not retrieved by BM25) and the cosine ranking (every turn)."""
    if index.size == 0:
        return []
    bm25 = bm25_score(index.bm25, tokenize(query))
    keyword = _order(bm25)
    keyword = keyword[bm25[keyword] > 0]
    dense = _order(index.vectors @ np.asarray(query_vector, np.float32))
    fused = rrf_fuse([[index.ids[i] for i in keyword], [index.ids[i] for i in dense]], k=k)
    return [item_id for item_id, _ in fused[:top_k]]
