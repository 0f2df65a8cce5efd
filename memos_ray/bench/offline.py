"""Offline ranking evaluation: the turn-ranking recipe straight over a dataset, no service.

For iterating on ranking quickly; `bench locomo` / `bench longmemeval` measure the service.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from memos_ray.config import MemosConfig
from memos_ray.core.baseline_ranking import RRF_K, build_baseline_index, rrf_rank
from memos_ray.core.turn_ranking import RankingParams, RankTurn, build_index, rank, turn_text
from memos_ray.models.embedder import Embedder
from memos_ray.models.runtimes import configured_embedder
from memos_ray.services.ingest.datasets import BenchCube

Ranker = Literal["recipe", "rrf"]
T = TypeVar("T")


def _given(value: T) -> Callable[[list[str]], T]:
    """Stands in for an encoder: what one `encode` of the same texts gave."""
    return lambda _texts: value


def run_offline(
    name: str,
    cubes: Iterable[BenchCube],
    out: Path,
    params: RankingParams | None = None,
    top_k: int = 50,
    log: Callable[[str], None] = print,
    embedder: Embedder | None = None,
    ranker: Ranker = "recipe",
    query_embedder: Embedder | None = None,
) -> dict[str, Any]:
    """Rank every question's turns and write `{"qid", "retrieved"}` lines to `out`.

    `embedder`: any `Embedder` (dense and MaxSim token vectors from one `encode` per cube);
    the default is the service's own (the configured runtime, ONNX Runtime), with its query
    encoder (int8 weights) for the questions. `query_embedder`: the questions' encoder when
    `embedder` is given (default: the same). `ranker`: "recipe" (`turn_ranking`) or
    "rrf" (`baseline_ranking`, the baseline: BM25 and cosine over the texts the recipe
    indexes, `speaker: content`, and nothing else).
    """
    params = params or RankingParams()
    if ranker not in ("recipe", "rrf"):
        raise ValueError(f"unknown ranker {ranker!r}")
    if embedder is None:
        cfg = MemosConfig().embedder
        embedder = configured_embedder(cfg, cfg.model)
        query_embedder = query_embedder or configured_embedder(cfg, cfg.model, for_queries=True)
    queries = query_embedder or embedder
    late = bool(params.w_maxsim) and ranker == "recipe"
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
            texts = [turn_text(t) for t in turns]
            if ranker == "rrf":
                baseline = build_baseline_index([t.id for t in turns], texts, embedder.embed(texts))
            else:
                encoded = embedder.encode(texts)  # one pass: dense and token vectors
                tokens = _given(encoded.tokens) if late and encoded.tokens else None
                index = build_index(turns, _given(encoded.dense), tokens, params)
            t1 = time.perf_counter()
            for question in cube.questions:
                if ranker == "rrf":
                    query_vector = queries.embed([question.question])[0]
                    ids = rrf_rank(baseline, question.question, query_vector, top_k)
                else:
                    asked = queries.encode([question.question])
                    query_vector = asked.dense[0]
                    query_tokens = (
                        asked.tokens[0].astype(np.float32) if late and asked.tokens else None
                    )
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
