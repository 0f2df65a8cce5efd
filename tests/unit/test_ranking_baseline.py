"""The naive baseline of `bench offline --ranker rrf`, and the offline bench's embedder seam."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from memos_ray.bench.offline import run_offline
from memos_ray.core.baseline_ranking import build_baseline_index, rrf_rank
from memos_ray.models.embedder import Embedder, Encoded
from memos_ray.services.ingest.datasets import BenchCube, BenchQuestion, BenchSession, BenchTurn


def at(degrees: float) -> np.ndarray:
    return np.array([np.cos(np.radians(degrees)), np.sin(np.radians(degrees))], np.float32)


def test_rrf_fuses_bm25_and_cosine_ranks() -> None:
    # BM25 for "alpha": t2 (shorter) > t0, the others share no term and are not ranked.
    # Cosine: t1 > t0 > t3 > t2. Fused (k=60): t0 2/62 > t2 1/61+1/64 > t1 1/61 > t3 1/63,
    # so neither list's own winner comes first.
    ids = ["t0", "t1", "t2", "t3"]
    texts = ["alpha beta", "gamma", "alpha", "delta"]
    vectors = np.stack([at(30), at(0), at(90), at(60)])
    index = build_baseline_index(ids, texts, vectors)
    assert rrf_rank(index, "alpha", at(0)) == ["t0", "t2", "t1", "t3"]
    assert rrf_rank(index, "alpha", at(0), top_k=2) == ["t0", "t2"]
    # No query term in any turn: the cosine order alone.
    assert rrf_rank(index, "omega", at(0)) == ["t1", "t0", "t3", "t2"]
    assert rrf_rank(build_baseline_index([], [], np.zeros((0, 2))), "alpha", at(0)) == []


class HashEmbedder(Embedder):
    """Bag of hashed words: a stand-in encoder with token vectors, no model to load."""

    calls: list[str]

    def __init__(self) -> None:
        self.calls = []

    @property
    def dim(self) -> int:
        return 16

    def _word(self, word: str) -> np.ndarray:
        v = np.zeros(self.dim, np.float32)
        v[zlib.crc32(word.lower().encode()) % self.dim] = 1.0
        return v

    def _tokens(self, text: str) -> np.ndarray:
        words = text.split() or [""]
        return np.stack([self._word(w) for w in words]).astype(np.float16)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append("embed")
        rows = [self._tokens(t).astype(np.float32).sum(0) for t in texts]
        out = np.array(rows, np.float32).reshape(len(texts), self.dim)
        return out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-9)

    def encode(self, texts: Sequence[str]) -> Encoded:
        self.calls.append("encode")
        return Encoded(self.embed(texts), [self._tokens(t) for t in texts])


def _cube() -> BenchCube:
    def turn(i: int, text: str) -> BenchTurn:
        return BenchTurn(f"D1:{i}", "user", text, "2023/05/20 (Sat) 02:21")

    session = BenchSession(
        "s1", [turn(1, "we adopted a puppy"), turn(2, "nice"), turn(3, "the puppy is named Rex")]
    )
    return BenchCube("c", [session], [BenchQuestion("c:0", "what is the puppy named")])


def test_offline_bench_takes_any_embedder(tmp_path: Path) -> None:
    for ranker in ("recipe", "rrf"):
        embedder = HashEmbedder()
        out = tmp_path / f"{ranker}.jsonl"
        figures = run_offline("t", [_cube()], out, embedder=embedder, ranker=ranker, log=str)
        line = json.loads(out.read_text())
        assert figures["ranker"] == ranker and figures["questions"] == 1
        assert line["qid"] == "c:0" and line["retrieved"][0] == "D1:3"
        assert sorted(line["retrieved"]) == ["D1:1", "D1:2", "D1:3"]
        # MaxSim's token vectors come from the embedder's `encode` (the recipe only).
        assert ("encode" in embedder.calls) == (ranker == "recipe")
