"""Retrieval benchmark: fill one cube per conversation through the public API, ask every
question in fast mode, and write the ranked turn ids in the scorer's JSONL format."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from memos_ray.client import ConflictError, MemosClient
from memos_ray.services.ingest.datasets import BenchCube, BenchQuestion

BENCH_USER = "bench"
MIN_IDS = 20


def ranked_turn_ids(search_data: dict[str, Any], cube_id: str) -> list[str]:
    """Sources of the returned memories in rank order; a memory adds all its turns at its rank."""
    seen: dict[str, None] = {}
    for bucket in search_data.get("text_mem", []):
        if bucket.get("cube_id") != cube_id:
            continue
        for memory in bucket.get("memories", []):
            for source in memory.get("metadata", {}).get("sources", []):
                message_id = source.get("message_id")
                if message_id:
                    seen.setdefault(message_id, None)
    return list(seen)


def ingest_cube(client: MemosClient, cube: BenchCube, workers: int = 4, mode: str = "fast") -> int:
    """One /product/add per session (sync), sessions in parallel; returns memories stored."""
    try:
        client.create_cube(BENCH_USER, cube.cube_id, cube.cube_id)
    except ConflictError as exc:
        raise ConflictError(
            f"cube {cube.cube_id} already exists: use a fresh data dir (or drop --url)", 409
        ) from exc

    def add_session(index: int) -> int:
        session = cube.sessions[index]
        messages = [
            {
                "role": t.role,
                "content": t.content,
                "message_id": t.message_id,
                **({"name": t.speaker} if t.speaker else {}),
                **({"chat_time": t.chat_time} if t.chat_time else {}),
            }
            for t in session.turns
            if t.content.strip()
        ]
        if not messages:
            return 0
        added = client.add(
            BENCH_USER,
            messages,
            cube_id=cube.cube_id,
            session_id=session.session_id,
            async_mode="sync",
            mode=mode,
        )
        return len(added)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(add_session, range(len(cube.sessions))))


def search_cube(
    client: MemosClient,
    cube: BenchCube,
    top_k: int,
    workers: int = 4,
    extra: dict[str, Any] | None = None,
) -> list[tuple[BenchQuestion, list[str], float]]:
    def ask(question: BenchQuestion) -> tuple[BenchQuestion, list[str], float]:
        started = time.perf_counter()
        data = client.search(
            BENCH_USER,
            question.question,
            [cube.cube_id],
            top_k=top_k,
            relativity=0.0,
            **(extra or {}),
            mode="fast",
            **({"reference_time": question.asked_at} if question.asked_at else {}),
        )
        ranked = ranked_turn_ids(data.model_dump(), cube.cube_id)
        return question, ranked, time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(ask, cube.questions))


def run_retrieval_bench(
    name: str,
    cubes: Iterable[BenchCube],
    client: MemosClient,
    out: Path,
    top_k: int = 20,
    log: Callable[[str], None] = print,
    extra: dict[str, Any] | None = None,
    resume: bool = False,
    mode: str = "fast",
) -> dict[str, Any]:
    """`extra`: more /product/search fields (e.g. dedup), for ablations.

    Results are flushed after each cube; `resume` keeps the lines already in `out` and
    skips cubes whose questions are all answered there (cubes are independent, so a run
    that stopped half-way finishes in a fresh service).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    cubes = list(cubes)
    done: set[str] = set()
    if resume and out.exists():
        done = {json.loads(line)["qid"] for line in out.read_text().splitlines() if line.strip()}
        before = len(cubes)
        cubes = [c for c in cubes if not all(q.qid in done for q in c.questions)]
        log(f"resuming: {before - len(cubes)} cubes already answered in {out}")
    turns = memories = questions = short = 0
    llm = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
    ingest_s = 0.0
    latencies: list[float] = []
    started = time.perf_counter()
    with out.open("a" if resume else "w") as sink:
        for index, cube in enumerate(cubes, start=1):
            t0 = time.perf_counter()
            stored = ingest_cube(client, cube, mode=mode)
            if mode == "fine":
                usage = client.llm_usage(BENCH_USER, cube.cube_id).model_dump()
                for key in llm:
                    llm[key] += usage[key]
            t1 = time.perf_counter()
            results = search_cube(client, cube, top_k, extra=extra)
            t2 = time.perf_counter()
            for question, ids, latency in results:
                if question.qid in done:
                    continue
                sink.write(json.dumps({"qid": question.qid, "retrieved": ids}) + "\n")
                latencies.append(latency)
                short += len(ids) < MIN_IDS
            sink.flush()
            turns += cube.turn_count
            memories += stored
            questions += len(results)
            ingest_s += t1 - t0
            log(
                f"[{index}/{len(cubes)}] {cube.cube_id}: {cube.turn_count} turns -> {stored} "
                f"memories in {t1 - t0:.1f}s; {len(results)} questions in {t2 - t1:.1f}s"
            )
    latencies.sort()
    return {
        "bench": name,
        "cubes": len(cubes),
        "turns": turns,
        "memories": memories,
        "questions": questions,
        "questions_with_fewer_than_20_ids": short,
        "ingest_seconds": round(ingest_s, 2),
        "ingest_turns_per_s": round(turns / ingest_s, 1) if ingest_s else None,
        "search_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "search_p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))] * 1000, 1)
        if latencies
        else None,
        "total_seconds": round(time.perf_counter() - started, 1),
        "results": str(out),
        "mode": mode,
        **(
            {
                "llm": llm,
                "llm_per_100_turns": {
                    k: round(100 * v / turns, 1) if turns else None for k, v in llm.items()
                },
            }
            if mode == "fine"
            else {}
        ),
    }
