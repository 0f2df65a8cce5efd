from __future__ import annotations

import numpy as np

from memos_ray.core.keywords import document_vector, query_vector, stem, tokenize
from memos_ray.core.search import rrf_fuse, select


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


def _reference_select(ranked, relevance, vectors, top_k, mode, lam, threshold):  # type: ignore[no-untyped-def]
    """The plain definition, pick by pick, to check the vectorised version against."""
    picked: list[str] = []
    pool = list(ranked)
    while pool and len(picked) < top_k:
        best, best_value = None, -np.inf
        for item_id in pool:
            redundancy = max(
                (float(np.dot(vectors[item_id], vectors[p])) for p in picked), default=0.0
            )
            if redundancy >= threshold:
                continue
            if mode == "sim":
                best = item_id
                break
            value = lam * relevance[item_id] - (1 - lam) * max(redundancy, 0.0)
            if value > best_value:
                best, best_value = item_id, value
        if best is None:
            break
        pool.remove(best)
        picked.append(best)
    return picked


def test_select_matches_the_plain_definition() -> None:
    rng = np.random.default_rng(5)
    for trial in range(20):
        n = int(rng.integers(1, 40))
        base = rng.standard_normal((4, 8))
        vecs = base[rng.integers(0, 4, n)] + 0.2 * rng.standard_normal((n, 8))
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        ids = [f"m{i}" for i in range(n)]
        vectors = dict(zip(ids, vecs.astype(np.float32), strict=True))
        relevance = {i: float(rng.random()) for i in ids}
        for mode in ("mmr", "sim"):
            args = (ids, relevance, vectors, 10)
            got = select(*args, mode=mode, mmr_lambda=0.7, duplicate_threshold=0.9)
            want = _reference_select(*args, mode, 0.7, 0.9)
            assert got == want, (trial, mode)
