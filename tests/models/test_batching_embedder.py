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


def test_encode_gives_pooled_and_token_vectors_from_one_pass() -> None:
    model = SentenceTransformerEmbedder()
    texts = ["Ann adopted a kitten", "a much longer sentence about pottery classes on Tuesdays"]
    encoded = model.encode(texts)
    assert np.allclose(encoded.dense, model.embed(texts), atol=1e-5)
    assert encoded.tokens is not None and len(encoded.tokens) == 2
    tokenizer = model._load().tokenizer
    for text, rows in zip(texts, encoded.tokens, strict=True):
        # Every word piece of the text, without [CLS] and [SEP], and no padding.
        assert rows.shape == (len(tokenizer.tokenize(text)), model.dim)
        assert rows.dtype == np.float16
        assert np.allclose(np.linalg.norm(rows.astype(np.float32), axis=1), 1.0, atol=1e-2)


def test_batched_encode_splits_token_vectors_per_caller() -> None:
    model = SentenceTransformerEmbedder()
    batching = BatchingEmbedder(model, max_batch=8)
    texts = [[f"request {i} mentions {'word ' * (i % 4)}".strip()] for i in range(10)]
    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(batching.encode, texts))
    for request, encoded in zip(texts, results, strict=True):
        alone = model.encode(request)
        assert encoded.tokens is not None and alone.tokens is not None
        assert encoded.tokens[0].shape == alone.tokens[0].shape
        assert np.allclose(encoded.dense, alone.dense, atol=1e-5)
