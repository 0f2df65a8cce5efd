"""Graph soak: the embedded FalkorDB server under a sustained mixed write load.

Threads upsert memory nodes (with sources and info, as adds write them), link them, read
them back, filter, and delete some, for `--minutes`, through the same store the service
uses. The server must stay up the whole time (its pid unchanged, no restart), every node
written and not deleted must be there at the end with its text intact, and none deleted
may be. It then survives a SIGKILL with AOF: everything acknowledged is still there after
the restart.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from memos_ray.bench.common import machine, write_report
from memos_ray.core.filters import parse_filter
from memos_ray.domain.memory import Edge, EdgeType, MemoryItem, MemoryMetadata, memory_id_for
from memos_ray.embedded.falkordb_server import FalkorDBServer
from memos_ray.stores.graph.falkordb import falkordb_graph_store


def _item(cube: str, n: int, rng: random.Random) -> MemoryItem:
    text = f"Soak memory {n}: " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 60)))
    return MemoryItem(
        id=memory_id_for(cube, text),
        memory=text,
        cube_id=cube,
        metadata=MemoryMetadata(
            user_id=cube,
            session_id=f"s{n // 50}",
            tags=[f"t{n % 7}"],
            info={"n": n, "batch": n // 100, "note": "x" * rng.randint(0, 400)},
        ),
    )


_WORDS = ("cat", "tea", "Porto", "violin", "hiking", "June", "report", "café", "用户", "it's")


def run_soak(
    minutes: float, threads: int, data_dir: Path, keep: int = 20_000, log: Any = print
) -> dict[str, Any]:

    server = FalkorDBServer(data_dir)
    server.start()
    pid = server.pid
    store = falkordb_graph_store(server.address)
    stop = threading.Event()
    lock = threading.Lock()
    live: dict[str, tuple[str, str]] = {}  # id -> (cube, text)
    # A 2 % sample of the deleted ids, checked for ghosts at the end.
    deleted: dict[str, str] = {}
    counts = {"upserted": 0, "edges": 0, "reads": 0, "filters": 0, "deleted": 0, "errors": 0}
    errors: list[str] = []

    def worker(index: int) -> None:
        rng = random.Random(index)
        cube = f"soak-{index}"
        n = index * 10_000_000
        previous: list[str] = []
        while not stop.is_set():
            try:
                batch = [_item(cube, n + i, rng) for i in range(rng.randint(1, 50))]
                n += len(batch)
                store.upsert_nodes(cube, batch)
                ids = [i.id for i in batch]
                edges = [
                    Edge(source=a, target=b, type=EdgeType.FOLLOWING)
                    for a, b in itertools.pairwise(ids)
                ]
                if previous:
                    edges.append(Edge(source=previous[-1], target=ids[0], type=EdgeType.FOLLOWING))
                store.add_edges(cube, edges)
                with lock:
                    for item in batch:
                        live[item.id] = (cube, item.memory)
                    counts["upserted"] += len(batch)
                    counts["edges"] += len(edges)
                got = store.get_nodes([cube], ids)
                assert [g.memory for g in got] == [b.memory for b in batch]
                store.find_ids(cube, parse_filter({"batch": {"gte": n // 100 - 2}}))
                previous += ids
                # Churn: a share of the newest go again at once; beyond `keep`, the oldest.
                gone = previous[-rng.randint(1, len(ids)) :] if rng.random() < 0.3 else []
                gone += previous[: max(0, len(previous) - len(gone) - keep)]
                if gone:
                    store.delete_nodes(cube, gone)
                    dropped = set(gone)
                    previous = [p for p in previous if p not in dropped]
                    with lock:
                        for memory_id in gone:
                            live.pop(memory_id, None)
                            if rng.random() < 0.02:  # a sample, so memory stays flat
                                deleted[memory_id] = cube
                        counts["deleted"] += len(gone)
                with lock:
                    counts["reads"] += 1
                    counts["filters"] += 1
            except Exception as exc:  # counted and shown: the soak's point is that none occur
                with lock:
                    counts["errors"] += 1
                    errors.append(repr(exc)[:300])
                time.sleep(0.1)

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    started = time.monotonic()
    for thread in pool:
        thread.start()
    deadline = started + minutes * 60
    while time.monotonic() < deadline:
        time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
        with lock:
            up = server.is_running()
            log(f"  {time.monotonic() - started:6.0f} s: {counts}, server up: {up}")
    stop.set()
    for thread in pool:
        thread.join(timeout=60)
    seconds = time.monotonic() - started
    same_process = server.is_running() and server.pid == pid

    def check() -> tuple[int, int, int]:
        missing = wrong = ghosts = 0
        lost: list[str] = []
        by_cube: dict[str, list[str]] = {}
        for memory_id, (cube, _) in live.items():
            by_cube.setdefault(cube, []).append(memory_id)
        for cube, ids in by_cube.items():
            for start in range(0, len(ids), 5000):
                chunk = ids[start : start + 5000]
                got = {g.id: g.memory for g in store.get_nodes([cube], chunk)}
                missing += sum(1 for i in chunk if i not in got)
                lost += [i for i in chunk if i not in got]
                wrong += sum(1 for i in chunk if i in got and got[i] != live[i][1])
        for memory_id, cube in deleted.items():
            ghosts += len(store.existing_ids(cube, [memory_id]))
        if lost:
            log(f"  missing: {[live[i][1][:40] for i in lost[:5]]}")
        return missing, wrong, ghosts

    missing, wrong, ghosts = check()
    log("killing the server (SIGKILL) and restarting it from its AOF ...")
    os.kill(server.pid or 0, signal.SIGKILL)
    time.sleep(0.5)
    restart_error = None
    try:
        server.start()
        after_kill: tuple[int, int, int] | list[int] = check()
    except Exception as exc:  # the store did not come back: that is the finding
        restart_error = str(exc)[-2000:]
        after_kill = [-1, -1, -1]
    store.close()
    server.stop()
    return {
        "bench": "graph-soak",
        "minutes": round(seconds / 60, 1),
        "threads": threads,
        **counts,
        "writes_per_s": round((counts["upserted"] + counts["edges"] + counts["deleted"]) / seconds),
        "server_stayed_up": same_process,
        "missing": missing,
        "wrong_text": wrong,
        "ghosts_after_delete": ghosts,
        "after_sigkill_missing_wrong_ghosts": list(after_kill),
        "restart_error": restart_error,
        "error_examples": errors[:5],
    }


def cmd_graph_soak(args: argparse.Namespace) -> int:

    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="memos-soak-"))
    figures = run_soak(args.minutes, args.threads, data_dir)
    figures["machine"] = machine()
    write_report(figures, Path(args.out))
    bad = (
        figures["errors"]
        or not figures["server_stayed_up"]
        or figures["missing"]
        or figures["wrong_text"]
        or figures["ghosts_after_delete"]
        or any(figures["after_sigkill_missing_wrong_ghosts"])
        or figures["restart_error"]
    )
    print("graph soak: " + ("FAILED" if bad else "the server stayed up and kept every write"))
    return 1 if bad else 0


def add_graph_soak_parser(kinds: Any) -> None:
    p = kinds.add_parser("graph-soak", help="the embedded graph server under sustained writes")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--data-dir", help="the server's data dir (default: a new temp dir)")
    p.add_argument("--out", default="bench-results/graph-soak.json")
    p.set_defaults(func=cmd_graph_soak)
