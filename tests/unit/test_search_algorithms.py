from __future__ import annotations

import numpy as np

from memos_ray.memory.keywords import document_vector, query_vector, stem, tokenize
from memos_ray.memory.search import rrf_fuse, select


def unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_rrf_rewards_agreement_between_rankings() -> None:
    fused = rrf_fuse([["a", "b", "c"], ["b", "d"]], k=60)
    assert fused[0][0] == "b"
    assert {i for i, _ in fused} == {"a", "b", "c", "d"}


def test_select_modes() -> None:
    vectors = {"a": unit(1, 0), "a2": unit(1, 0.01), "b": unit(0, 1)}
    relevance = {"a": 0.9, "a2": 0.89, "b": 0.5}
    ranked = ["a", "a2", "b"]
    assert select(ranked, relevance, vectors, 3, mode="no") == ["a", "a2", "b"]
    assert select(ranked, relevance, vectors, 3, mode="sim") == ["a", "b"]
    assert select(ranked, relevance, vectors, 2, mode="mmr", duplicate_threshold=1.01) == [
        "a",
        "b",
    ]


def test_keywords_stem_and_drop_stopwords() -> None:
    assert stem("hiking") == "hik" and stem("cats") == "cat" and stem("class") == "class"
    assert tokenize("The user went hiking with Cats") == ["went", "hik", "cat"]
    doc = document_vector("cats cats dogs")
    assert len(doc.indices) == 2 and doc.values[0] != doc.values[1]
    assert query_vector("cat").indices[0] in doc.indices
    assert query_vector("the and of").indices == []
