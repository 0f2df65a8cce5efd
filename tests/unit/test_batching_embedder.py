from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from memos_ray.models.batching import BatchingEmbedder
from memos_ray.models.embedder import SentenceTransformerEmbedder


def test_concurrent_callers_get_their_own_rows() -> None:
    model = SentenceTransformerEmbedder()
    batching = BatchingEmbedder(model, max_batch=8)
    texts = [[f"sentence number {i} about topic {i % 3}", f"second {i}"] for i in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(batching.embed, texts))
    for request, vectors in zip(texts, results, strict=True):
        assert vectors.shape == (2, model.dim)
        assert np.allclose(vectors, model.embed(request), atol=1e-5)
    assert batching.embed([]).shape == (0, model.dim)
