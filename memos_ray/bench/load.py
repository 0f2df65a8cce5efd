"""Latency and ingest benchmarks on generated conversations of realistic length."""

from __future__ import annotations

import http.client
import itertools
import json
import math
import random
import re
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

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


def chat_turns(n: int, seed: int = 13) -> list[dict[str, str]]:
    """n fresh single messages, alternating speakers, each unlike any stored one."""
    windows = generate_windows(n, seed=seed)
    return [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": window[i % len(window)]["content"].replace("(note", "(chat turn", 1),
            "message_id": f"chat{seed}:{i}",
        }
        for i, window in enumerate(windows)
    ]


class ZipfSampler:
    """Draws 0-based popularity ranks, P(rank k) proportional to 1 / (k + 1) ** s.

    Real deployments have a few hot cubes and a long tail: that tail, not the hot cubes, is
    what evicts ranking indexes from a bounded per-process cache.
    """

    def __init__(self, n: int, s: float, seed: int = 7) -> None:
        if n < 1:
            raise ValueError("a Zipf sampler needs at least one item")
        self.n = n
        self._rng = random.Random(seed)
        self._ranks = range(n)
        self._cum = list(itertools.accumulate(1.0 / (k**s) for k in range(1, n + 1)))

    def share(self, rank: int) -> float:
        """The analytic probability of 0-based `rank`."""
        low = self._cum[rank - 1] if rank else 0.0
        return (self._cum[rank] - low) / self._cum[-1]

    def draw(self, count: int) -> list[int]:
        return self._rng.choices(self._ranks, cum_weights=self._cum, k=count)


def counter_totals(body: str, name: str, label: str) -> dict[str, float]:
    """A counter's values in a Prometheus text exposition, summed per value of `label` over
    every other label (one series per Ray worker: replicas each have their own)."""
    line_re = re.compile(rf"^{re.escape(name)}(?:\{{(.*)\}})?\s+(\S+)")
    label_re = re.compile(rf'(?:^|,)\s*{re.escape(label)}="((?:[^"\\]|\\.)*)"')
    totals: dict[str, float] = {}
    for line in body.splitlines():
        m = line_re.match(line)
        if m is None:
            continue
        found = label_re.search(m[1] or "")
        key = found[1] if found else ""
        totals[key] = totals.get(key, 0.0) + float(m[2])
    return totals


class CacheMeter:
    """Hit rate of the ranking index cache, from the counter on a Prometheus endpoint.

    Ray's processes push metrics to the node's agent once a report interval, so a reading is
    taken only once two scrapes more than an interval apart agree.
    """

    def __init__(self, url: str | None, name: str, interval_s: float, timeout_s: float = 60.0):
        self.url = url
        self._name = name
        self._gap = 1.5 * interval_s
        self._timeout = timeout_s

    def _scrape(self) -> dict[str, float]:
        assert self.url is not None
        body = httpx.get(self.url, timeout=30).text
        return counter_totals(body, self._name, "outcome")

    def read(self) -> dict[str, float] | None:
        """Settled counts by outcome; None without an endpoint or once it failed (a bench
        should not die for a figure on the side)."""
        if self.url is None:
            return None
        deadline = time.monotonic() + self._timeout
        try:
            last = self._scrape()
            while time.monotonic() < deadline:
                time.sleep(self._gap)
                now = self._scrape()
                if now == last:
                    break
                last = now
        except httpx.HTTPError as exc:
            print(f"  metrics at {self.url} unreadable ({exc!r}): no cache hit rate", flush=True)
            self.url = None
            return None
        return last

    @staticmethod
    def between(
        before: dict[str, float] | None, after: dict[str, float] | None, searches: int = 0
    ) -> dict[str, Any] | None:
        """Counts between two readings. A search looks its cube up more than once (its
        ranking, then the tool-memory check, which then always hits), so the hit rate over
        lookups flatters the cache: `misses_per_search` is the share of searches that
        rebuilt an index."""
        if before is None or after is None:
            return None
        hits = after.get("hit", 0.0) - before.get("hit", 0.0)
        misses = after.get("miss", 0.0) - before.get("miss", 0.0)
        rate = round(hits / (hits + misses), 4) if hits + misses else None
        out: dict[str, Any] = {"hits": int(hits), "misses": int(misses), "hit_rate": rate}
        if searches:
            out["lookups_per_search"] = round((hits + misses) / searches, 2)
            out["misses_per_search"] = round(misses / searches, 4)
        return out


def cost_curve(points: Sequence[tuple[int, float]]) -> list[dict[str, Any]]:
    """How p50 grows with the cube's size, between consecutive (memories, p50_ms) points;
    `exponent` is the slope on log-log axes (0: flat, 1: linear in the size)."""
    steps = []
    for (n0, p0), (n1, p1) in itertools.pairwise(points):
        step: dict[str, Any] = {
            "from": n0,
            "to": n1,
            "size_ratio": round(n1 / n0, 2),
            "p50_ms": [p0, p1],
            "p50_ratio": round(p1 / p0, 2),
        }
        if n1 != n0 and p0 > 0 and p1 > 0:
            step["exponent"] = round(math.log(p1 / p0) / math.log(n1 / n0), 2)
        steps.append(step)
    return steps


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

    def __init__(
        self, base_url: str, headers: dict[str, str] | None = None, timeout: float = 120
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self._timeout = timeout
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 80
        self._headers = {"content-type": "application/json", **(headers or {})}
        self._local = threading.local()

    def post(self, path: str, body: dict[str, Any]) -> bytes:
        payload = json.dumps(body)
        reused = getattr(self._local, "conn", None) is not None
        try:
            status, data = self._send(path, payload)
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            if not reused:
                raise
            # The server closed a keep-alive connection that sat idle (a long fill between
            # two searches): the request never reached it, so sending it again is safe.
            status, data = self._send(path, payload)
        if status != 200:
            raise RuntimeError(f"POST {path}: HTTP {status}: {data[:200]!r}")
        return data

    def _send(self, path: str, payload: str) -> tuple[int, bytes]:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
        try:
            conn.request("POST", path, payload, self._headers)
            response = conn.getresponse()
            return response.status, response.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            self._local.conn = None
            raise


T = TypeVar("T")


def run_load(call: Callable[[T], Any], queries: Sequence[T], concurrency: int) -> dict[str, float]:
    """Each worker sends its next query as soon as the last one answered (closed loop)."""
    latencies: list[float] = []

    def one(query: T) -> None:
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
        return _add(http, user, cube_id, chunk)

    chunks = [windows[i : i + batch] for i in range(0, len(windows), batch)]
    stored = 0
    started = time.perf_counter()
    last = started
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for done, count in enumerate(pool.map(add, chunks), start=1):
            stored += count
            now = time.perf_counter()
            if done % max(1, len(chunks) // 10) == 0 or done == len(chunks) or now - last > 30:
                last = now
                log(_progress(cube_id, done, len(chunks), "requests", stored, started))
    return stored, time.perf_counter() - started


def fill_cubes(
    http: httpx.Client,
    user: str,
    cube_ids: Sequence[str],
    windows_per_cube: int,
    batch: int = 32,
    concurrency: int = 3,
    seed: int = 1000,
    log: Callable[[str], None] = print,
) -> tuple[int, float]:
    """Create the cubes and fill each with its own generated windows; (stored, seconds).

    A cube's windows are made in the worker that sends them, so only the cubes in flight are
    held in memory (thousands of cubes would not fit otherwise).
    """

    def one(i: int) -> int:
        cube_id = cube_ids[i]
        created = http.post("/product/create_cube", json={"owner_id": user, "cube_id": cube_id})
        created.raise_for_status()
        windows = generate_windows(windows_per_cube, seed=seed + i)
        return sum(
            _add(http, user, cube_id, windows[j : j + batch]) for j in range(0, len(windows), batch)
        )

    stored = 0
    started = time.perf_counter()
    total = len(cube_ids)
    every = max(1, total // 20)
    last = started
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for done, count in enumerate(pool.map(one, range(total)), start=1):
            stored += count
            now = time.perf_counter()
            if done % every == 0 or done == total or now - last > 30:
                last = now
                log(_progress(f"{total} cubes", done, total, "cubes", stored, started))
    return stored, time.perf_counter() - started


def _add(http: httpx.Client, user: str, cube_id: str, chunk: Sequence[list[dict[str, str]]]) -> int:
    response = http.post(
        "/product/add",
        json={
            "user_id": user,
            "writable_cube_ids": [cube_id],
            "messages": [m for window in chunk for m in window],
            "async_mode": "sync",
        },
    )
    response.raise_for_status()
    return len(response.json()["data"])


def _progress(what: str, done: int, total: int, unit: str, stored: int, started: float) -> str:
    elapsed = time.perf_counter() - started
    left = elapsed / done * (total - done)
    return (
        f"  {what}: {done}/{total} {unit}, {stored} memories ({stored / elapsed:.0f}/s), "
        f"{elapsed:.0f} s, about {left:.0f} s left"
    )
