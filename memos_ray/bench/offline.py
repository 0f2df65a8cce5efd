"""Offline ranking evaluation: the turn-ranking recipe straight over a dataset, no service.

For iterating on ranking quickly; `bench locomo` / `bench longmemeval` measure the service.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from memos_ray.core.baseline_ranking import RRF_K, build_baseline_index, rrf_rank
from memos_ray.core.turn_ranking import RankingParams, RankTurn, build_index, rank, turn_text
from memos_ray.models.embedder import Embedder, SentenceTransformerEmbedder
from memos_ray.services.ingest.datasets import BenchCube

Ranker = Literal["recipe", "rrf"]


class TokenEmbedder:
    """Per-token MiniLM vectors ([CLS]/[SEP] dropped, unit length, float16) for MaxSim."""

    def __init__(self, embedder: SentenceTransformerEmbedder) -> None:
        self._model = embedder._load()

    def __call__(self, texts: list[str]) -> list[np.ndarray]:
        outputs = self._model.encode(
            texts, output_value="token_embeddings", batch_size=32, convert_to_numpy=False
        )
        result = []
        for out in outputs:
            vectors = out.float().numpy()
            vectors = vectors[1:-1] if vectors.shape[0] > 2 else vectors
            vectors = vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-9)
            result.append(vectors.astype(np.float16))
        return result


class EncodedTokens:
    """Token vectors from any `Embedder.encode` (None when its backend has none)."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder

    def __call__(self, texts: list[str]) -> list[np.ndarray] | None:
        return self._embedder.encode(texts).tokens


def run_offline(
    name: str,
    cubes: Iterable[BenchCube],
    out: Path,
    params: RankingParams | None = None,
    top_k: int = 50,
    log: Callable[[str], None] = print,
    embedder: Embedder | None = None,
    ranker: Ranker = "recipe",
) -> dict[str, Any]:
    """Rank every question's turns and write `{"qid", "retrieved"}` lines to `out`.

    `embedder`: any `Embedder` (dense vectors from `embed`, MaxSim token vectors from
    `encode`); the default is the local MiniLM. `ranker`: "recipe" (`turn_ranking`) or
    "rrf" (`baseline_ranking`, the baseline: BM25 and cosine over the texts the recipe
    indexes, `speaker: content`, and nothing else).
    """
    params = params or RankingParams()
    if ranker not in ("recipe", "rrf"):
        raise ValueError(f"unknown ranker {ranker!r}")
    if embedder is None:
        local = SentenceTransformerEmbedder()
        embedder = local
        tokens: Any = TokenEmbedder(local) if params.w_maxsim else None
    else:
        tokens = EncodedTokens(embedder) if params.w_maxsim else None
    if ranker == "rrf":
        tokens = None
    out.parent.mkdir(parents=True, exist_ok=True)
    cubes = list(cubes)
    build_s = search_s = 0.0
    questions = 0
    with out.open("w") as sink:
        for i, cube in enumerate(cubes, start=1):
            turns = [
                RankTurn(t.message_id, s.session_id, t.content, t.speaker, t.chat_time, t.role)
                for s in cube.sessions
                for t in s.turns
            ]
            t0 = time.perf_counter()
            if ranker == "rrf":
                texts = [turn_text(t) for t in turns]
                baseline = build_baseline_index([t.id for t in turns], texts, embedder.embed(texts))
            else:
                index = build_index(turns, embedder.embed, tokens, params)
            t1 = time.perf_counter()
            for question in cube.questions:
                query_vector = embedder.embed([question.question])[0]
                if ranker == "rrf":
                    ids = rrf_rank(baseline, question.question, query_vector, top_k)
                else:
                    query_tokens = tokens([question.question]) if tokens else None
                    query_tokens = query_tokens[0].astype(np.float32) if query_tokens else None
                    ids = rank(
                        index, question.question, query_vector, query_tokens,
                        question.asked_at, top_k, params,
                    )  # fmt: skip
                sink.write(json.dumps({"qid": question.qid, "retrieved": ids}) + "\n")
            t2 = time.perf_counter()
            build_s += t1 - t0
            search_s += t2 - t1
            questions += len(cube.questions)
            log(
                f"[{i}/{len(cubes)}] {cube.cube_id}: {len(turns)} turns indexed in "
                f"{t1 - t0:.1f}s, {len(cube.questions)} questions in {t2 - t1:.1f}s"
            )
    return {
        "bench": f"offline-{name}",
        "ranker": ranker,
        "cubes": len(cubes),
        "questions": questions,
        "index_seconds": round(build_s, 1),
        "search_ms_per_question": round(1000 * search_s / max(questions, 1), 1),
        "params": params.model_dump() if ranker == "recipe" else {"rrf_k": RRF_K},
        "results": str(out),
    }
