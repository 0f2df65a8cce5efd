"""Latency and ingest benchmarks on generated conversations of realistic length."""

from __future__ import annotations

import http.client
import json
import random
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

NAMES = [
    "Ana",
    "Ben",
    "Chloe",
    "Dev",
    "Emre",
    "Fatima",
    "Gus",
    "Hana",
    "Ivan",
    "Jade",
    "Kofi",
    "Lena",
    "Mateo",
    "Nora",
    "Omar",
    "Priya",
]
PLACES = [
    "Lisbon",
    "Osaka",
    "Denver",
    "Nairobi",
    "Oslo",
    "Lima",
    "Hanoi",
    "Porto",
    "Quebec",
    "Cairo",
    "Austin",
    "Bergen",
]
ACTIVITIES = [
    "hiking trip",
    "pottery class",
    "job interview",
    "marathon training",
    "birthday dinner",
    "camping weekend",
    "piano recital",
    "book club",
    "dentist appointment",
    "road trip",
    "garden project",
    "chess tournament",
    "cooking course",
    "volunteer shift",
    "museum visit",
    "family reunion",
    "startup pitch",
    "yoga retreat",
]
FEELINGS = ["excited", "nervous", "proud", "tired", "relieved", "curious", "happy", "worried"]
TEMPLATES = [
    "{a}: I just got back from the {act} in {p}, it was {f} but worth it.",
    "{b}: That sounds great! How long were you in {p} for the {act}?",
    "{a}: About {n} days. My friend {c} joined me and we stayed near the old town.",
    "{b}: I remember you said you were {f} about it last month. Did {c} enjoy it too?",
    "{a}: Yes, {c} loved it and wants to plan another {act2} in the spring.",
    "{b}: You should try {p2} next time, the {act2} there is famous.",
]


def generate_windows(n: int, seed: int = 7) -> list[list[dict[str, str]]]:
    """n four-turn conversation windows (~60-90 words each)."""
    rng = random.Random(seed)
    windows = []
    for i in range(n):
        a, b, c = rng.sample(NAMES, 3)
        fill = {
            "a": a,
            "b": b,
            "c": c,
            "p": rng.choice(PLACES),
            "p2": rng.choice(PLACES),
            "act": rng.choice(ACTIVITIES),
            "act2": rng.choice(ACTIVITIES),
            "f": rng.choice(FEELINGS),
            "n": str(rng.randint(2, 14)),
        }
        start = rng.randint(0, len(TEMPLATES) - 4)
        lines = [t.format(**fill) for t in TEMPLATES[start : start + 4]]
        windows.append(
            [
                {
                    "role": "user" if j % 2 == 0 else "assistant",
                    "content": f"{line} (note {i})",
                    "message_id": f"w{i}:{j}",
                }
                for j, line in enumerate(lines)
            ]
        )
    return windows


def generate_queries(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    shapes = [
        "When did {a} go on the {act}?",
        "Who joined {a} in {p}?",
        "How did {a} feel about the {act}?",
        "Where should {a} go for the next {act}?",
        "What did {a} do in {p}?",
    ]
    return [
        rng.choice(shapes).format(
            a=rng.choice(NAMES), act=rng.choice(ACTIVITIES), p=rng.choice(PLACES)
        )
        for _ in range(n)
    ]


def percentiles(latencies: Sequence[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
    }


class LeanPoster:
    """POST JSON over one keep-alive connection per thread (http.client).

    The load generator shares the machine with the service; httpx costs several times more
    CPU per request, which the service's figures would pay for.
    """

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 80
        self._headers = {"content-type": "application/json", **(headers or {})}
        self._local = threading.local()

    def post(self, path: str, body: dict[str, Any]) -> bytes:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=120)
            self._local.conn = conn
        try:
            conn.request("POST", path, json.dumps(body), self._headers)
            response = conn.getresponse()
            data = response.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            self._local.conn = None
            raise
        if response.status != 200:
            raise RuntimeError(f"POST {path}: HTTP {response.status}: {data[:200]!r}")
        return data


def run_load(
    call: Callable[[str], Any], queries: Sequence[str], concurrency: int
) -> dict[str, float]:
    """Each worker sends its next query as soon as the last one answered (closed loop)."""
    latencies: list[float] = []

    def one(query: str) -> None:
        started = time.perf_counter()
        call(query)
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, queries))
    wall = time.perf_counter() - started
    return {**percentiles(latencies), "qps": round(len(queries) / wall, 1), "n": len(queries)}


def fill_cube(
    http: httpx.Client,
    user: str,
    cube_id: str,
    windows: Sequence[list[dict[str, str]]],
    batch: int = 32,
    concurrency: int = 2,
    log: Callable[[str], None] = print,
) -> tuple[int, float]:
    """Add the windows through /product/add, `batch` windows per request; (stored, seconds).

    How many memories a window becomes is the server's choice (`reader.window_messages`).
    """

    def add(chunk: Sequence[list[dict[str, str]]]) -> int:
        messages = [m for window in chunk for m in window]
        response = http.post(
            "/product/add",
            json={
                "user_id": user,
                "writable_cube_ids": [cube_id],
                "messages": messages,
                "async_mode": "sync",
            },
        )
        response.raise_for_status()
        return len(response.json()["data"])

    chunks = [windows[i : i + batch] for i in range(0, len(windows), batch)]
    stored = 0
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for done, count in enumerate(pool.map(add, chunks), start=1):
            stored += count
            if done % max(1, len(chunks) // 10) == 0 or done == len(chunks):
                rate = stored / (time.perf_counter() - started)
                log(f"  {cube_id}: {done}/{len(chunks)} requests, {stored} memories ({rate:.0f}/s)")
    return stored, time.perf_counter() - started
