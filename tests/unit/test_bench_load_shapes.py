"""The latency bench's load shapes: Zipf cube popularity, the cache hit rate read from
Prometheus text, the cost curve and the chat turns (pure functions, no service)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from memos_ray.bench.cli import repeated
from memos_ray.bench.load import (
    CacheMeter,
    LeanPoster,
    ZipfSampler,
    chat_turns,
    cost_curve,
    counter_totals,
    generate_windows,
)


def _harmonic(n: int, s: float) -> float:
    return sum(1 / k**s for k in range(1, n + 1))


def test_zipf_rank_shares_match_the_analytic_law() -> None:
    n, s, draws = 100, 1.1, 20_000
    sampler = ZipfSampler(n, s, seed=3)
    counts = Counter(sampler.draw(draws))
    expected_top = 1 / _harmonic(n, s)
    assert sampler.share(0) == pytest.approx(expected_top)
    assert sampler.share(9) == pytest.approx(10**-s / _harmonic(n, s))
    assert sum(sampler.share(r) for r in range(n)) == pytest.approx(1)
    # About 0.234; 20k draws put the sample within ~0.003 of it (one standard deviation).
    assert counts[0] / draws == pytest.approx(expected_top, abs=0.02)
    top10 = sum(counts[r] for r in range(10)) / draws
    assert top10 == pytest.approx(sum(sampler.share(r) for r in range(10)), abs=0.03)
    # Skewed: the most popular is drawn far more than the tenth, which beats the last.
    assert counts[0] > 5 * counts[9] > 0 and counts[9] > counts[n - 1]
    assert set(counts) <= set(range(n))


def test_zipf_draws_are_reproducible_and_zero_exponent_is_uniform() -> None:
    assert ZipfSampler(50, 1.1, seed=5).draw(200) == ZipfSampler(50, 1.1, seed=5).draw(200)
    assert ZipfSampler(50, 1.1, seed=5).draw(200) != ZipfSampler(50, 1.1, seed=6).draw(200)
    uniform = ZipfSampler(4, 0.0, seed=1)
    assert [uniform.share(r) for r in range(4)] == pytest.approx([0.25] * 4)
    counts = Counter(uniform.draw(8000))
    assert all(counts[r] / 8000 == pytest.approx(0.25, abs=0.03) for r in range(4))
    assert ZipfSampler(1, 2.0).draw(3) == [0, 0, 0]
    with pytest.raises(ValueError):
        ZipfSampler(0, 1.1)


# As Ray's metrics agent exposes a counter: one series per worker, Ray's own labels first.
EXPOSITION = """\
# HELP ray_memos_search_index_cache_total Ranking index lookups of a search, by outcome.
# TYPE ray_memos_search_index_cache_total counter
ray_memos_search_index_cache_total{Component="core_worker",NodeAddress="127.0.0.1",\
SessionName="s",Version="2.60.0",WorkerId="aa",outcome="hit"} 120.0
ray_memos_search_index_cache_total{Component="core_worker",NodeAddress="127.0.0.1",\
SessionName="s",Version="2.60.0",WorkerId="bb",outcome="hit"} 1.5e+01
ray_memos_search_index_cache_total{Component="core_worker",WorkerId="aa",outcome="miss"} 7.0
ray_memos_search_index_cache_totally_else{outcome="hit"} 999.0
ray_memos_search_seconds_count{mode="fast",outcome="ok"} 135.0
"""


def test_counter_totals_sums_a_counter_over_workers_by_label() -> None:
    name = "ray_memos_search_index_cache_total"
    assert counter_totals(EXPOSITION, name, "outcome") == {"hit": 135.0, "miss": 7.0}
    assert counter_totals(EXPOSITION, "ray_memos_search_seconds_count", "outcome") == {"ok": 135.0}
    assert counter_totals(EXPOSITION, "ray_memos_absent_total", "outcome") == {}
    # A series without the label is counted under "".
    assert counter_totals('x_total 3\nx_total{a="b"} 1\n', "x_total", "outcome") == {"": 4.0}


def test_cache_meter_between_two_readings() -> None:
    # The hit series may not exist yet before the first search that hits.
    before = {"miss": 10.0}
    after = {"hit": 90.0, "miss": 20.0}
    assert CacheMeter.between(before, after) == {"hits": 90, "misses": 10, "hit_rate": 0.9}
    assert CacheMeter.between(before, after, searches=50) == {
        "hits": 90,
        "misses": 10,
        "hit_rate": 0.9,
        "lookups_per_search": 2.0,
        "misses_per_search": 0.2,
    }
    assert CacheMeter.between(after, after) == {"hits": 0, "misses": 0, "hit_rate": None}
    assert CacheMeter.between(None, after) is None
    assert CacheMeter(None, "x", 1.0).read() is None


def test_cost_curve_steps_between_consecutive_sizes() -> None:
    steps = cost_curve([(1000, 10.0), (10_000, 20.0), (100_000, 200.0)])
    assert [(s["from"], s["to"], s["size_ratio"], s["p50_ratio"]) for s in steps] == [
        (1000, 10_000, 10.0, 2.0),
        (10_000, 100_000, 10.0, 10.0),
    ]
    assert steps[0]["exponent"] == pytest.approx(0.3, abs=0.01)
    assert steps[1]["exponent"] == 1.0
    assert cost_curve([(1000, 10.0)]) == []


def test_chat_turns_are_new_single_messages() -> None:
    turns = chat_turns(20)
    stored = {m["content"] for w in generate_windows(50) for m in w}
    assert len({t["content"] for t in turns}) == 20
    assert not stored & {t["content"] for t in turns}
    assert [t["role"] for t in turns[:2]] == ["user", "assistant"]
    assert len({t["message_id"] for t in turns}) == 20


def test_repeated_runs_report_medians_and_spread() -> None:
    runs = [
        {"p50_ms": p50, "p95_ms": p50 + 1, "p99_ms": p50 + 5, "qps": 1000 / p50, "n": 10}
        for p50 in (9.0, 12.0, 10.0)
    ]
    figures = repeated(runs)
    assert figures["p50_ms"] == 10.0 and figures["p50_ms_spread"] == [9.0, 12.0]
    assert figures["p99_ms"] == 15.0 and figures["n"] == 30 and figures["runs"] == runs
    assert repeated(runs[:1]) == runs[0]


def test_lean_poster_resends_once_over_a_connection_the_server_closed() -> None:
    """A real HTTP server that closes each connection after one answer, as an idle keep-alive
    timeout does: the next POST goes out again on a fresh connection."""
    import http.server
    import threading

    seen: list[bytes] = []

    class OneShot(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            seen.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.send_header("connection", "keep-alive")  # says so, then closes anyway
            self.end_headers()
            self.wfile.write(b"ok")
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OneShot)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        poster = LeanPoster(f"http://127.0.0.1:{server.server_address[1]}")
        assert poster.post("/x", {"n": 1}) == b"ok"
        assert poster.post("/x", {"n": 2}) == b"ok"
        assert poster.post("/x", {"n": 3}) == b"ok"
        assert [json.loads(b)["n"] for b in seen] == [1, 2, 3]  # each sent exactly once
    finally:
        server.shutdown()
        server.server_close()
