"""Async add benchmark: how fast `/product/add` answers in async mode (MemOS's default),
and how long until the scheduler's fine memories are searchable.

Conversations are spread over cubes; requests run `--concurrency` at a time. The clock
for "searchable" starts when the last add has answered and stops when every cube's queue
is drained and a search of each cube returns a fine memory.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from memos_ray.bench.common import machine, service_url, write_report

FACTS = (
    "I adopted a grey cat named {name} last spring.",
    "My sister {name} is moving to Porto in June.",
    "I started learning the violin with a teacher called {name}.",
    "{name} and I are planning a hiking trip to the Alps.",
)
NAMES = ("Miso", "Ana", "Ines", "Tomas", "Leila", "Oskar", "Priya", "Jonas")


def cmd_async_add(args: argparse.Namespace) -> int:

    cubes = [f"async-{i}" for i in range(args.cubes)]
    bodies = []
    for n in range(args.adds):
        cube = cubes[n % len(cubes)]
        fact = FACTS[n % len(FACTS)].format(name=NAMES[n % len(NAMES)])
        bodies.append(
            {
                "user_id": cube,
                "messages": [
                    {"role": "user", "content": f"{fact} (note {n})"},
                    {"role": "assistant", "content": "Noted, thank you for telling me."},
                ],
            }
        )
    with service_url(args) as (url, _), httpx.Client(base_url=url, timeout=600) as http:
        http.post("/product/search", json={"user_id": cubes[0], "query": "warm up"})

        def add(body: dict[str, Any]) -> float:
            started = time.perf_counter()
            response = http.post("/product/add", json=body)
            response.raise_for_status()
            return time.perf_counter() - started

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            latencies = sorted(pool.map(add, bodies))
        added_at = time.perf_counter()
        print(f"{len(bodies)} async adds answered in {added_at - started:.1f} s", flush=True)
        failed = 0
        for cube in cubes:
            waited = http.post(
                "/product/scheduler/wait",
                json={"user_name": cube, "user_id": cube, "timeout_seconds": args.timeout},
            ).json()["data"]
            failed += waited["failed"]
        searchable = 0
        for cube in cubes:
            data = http.post(
                "/product/search", json={"user_id": cube, "query": "cat sister violin trip"}
            ).json()["data"]
            memories = data["text_mem"][0]["memories"]
            searchable += any("mode:fine" in m["metadata"]["tags"] for m in memories)
        drained_s = time.perf_counter() - added_at
    figures = {
        "bench": "async-add",
        "machine": machine(),
        "adds": len(bodies),
        "cubes": len(cubes),
        "concurrency": args.concurrency,
        "add_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "add_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1),
        "fine_searchable_after_s": round(drained_s, 1),
        "cubes_with_fine_memories": searchable,
        "tasks_failed": failed,
    }
    write_report(figures, Path(args.out))
    return 0


def add_async_add_parser(kinds: Any) -> None:
    p = kinds.add_parser(
        "async-add", help="async /product/add latency, and time until fine memories are searchable"
    )
    p.add_argument("--adds", type=int, default=64)
    p.add_argument("--cubes", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the queues")
    p.add_argument("--llm-url", help="an OpenAI-compatible base URL (.../v1) for extraction")
    p.add_argument("--llm-model", default="SmolLM2-135M-Instruct", help="with --llm-url")
    p.add_argument("--vllm", action="store_true", help="extract with SmolLM2 on vLLM's CPU build")
    p.add_argument("--url", help="use a running service instead of starting one")
    p.add_argument("--api-key", default=None, help="for --url")
    p.add_argument("--data-dir", help="data dir of the started service (default: a new temp dir)")
    p.add_argument("--out", default="bench-results/async-add.json")
    p.set_defaults(func=cmd_async_add, mode="fine", facts_only=False)
