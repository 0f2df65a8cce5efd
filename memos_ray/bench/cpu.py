"""CPU time per request by process, read from Linux's /proc around a bench level.

Throughput on a small machine is bounded by CPU shared between the service's processes and
the load generator: which process spends what per search says where the next gain is (the
ingress replica, the vector actor, the embedder, Ray's own daemons). Latency alone cannot.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")
# Processes that spent less than this per request are summed into "other".
MIN_MS = 0.05
TOP = 8


@dataclass(frozen=True)
class CpuSnapshot:
    # pid -> (name, user + system CPU seconds so far)
    processes: dict[int, tuple[str, float]]
    # The machine's busy and total time (any unit, both the same) from /proc/stat.
    busy: float
    total: float


def process_name(argv: list[str]) -> str:
    """A readable name: Ray sets a worker's title to `ray::<actor or task>`; otherwise the
    program and its first argument that is not an option (a script, a subcommand), without
    their directories."""
    if not argv:
        return "?"
    if argv[0].startswith("ray::"):
        return argv[0].strip()
    words = [os.path.basename(argv[0])]
    words += [os.path.basename(a) for a in argv[1:] if a and not a.startswith("-")][:1]
    return " ".join(words)[:80]


def processes(proc: Path = PROC) -> Iterator[tuple[int, Path, list[str]]]:
    """Each live process: its pid, its /proc folder and the fields of its `stat` after the
    command name (the name may hold spaces and parentheses)."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile, or not ours to read
            continue
        yield int(entry.name), entry, fields


def cpu_seconds(fields: list[str]) -> float:
    """User + system CPU time from `stat` fields as `processes` gives them (state first:
    utime and stime are the 12th and 13th)."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def take(proc: Path = PROC) -> CpuSnapshot | None:
    """Every process's CPU time and the machine's; None where there is no /proc (not Linux)."""
    stat = proc / "stat"
    if not stat.exists():
        return None
    found: dict[int, tuple[str, float]] = {}
    for pid, entry, fields in processes(proc):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = process_name([a.decode(errors="replace") for a in argv if a])
        found[pid] = (name, cpu_seconds(fields))
    cpu = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)  # idle + iowait
    return CpuSnapshot(found, float(sum(cpu) - idle), float(sum(cpu)))


def cpu_per_request(
    before: CpuSnapshot | None, after: CpuSnapshot | None, requests: int
) -> dict[str, Any] | None:
    """Milliseconds of CPU per request by process name (processes of one name summed; one
    started meanwhile counts whole, one that ended is not seen), the machine's busy share."""
    if before is None or after is None or requests <= 0:
        return None
    by_name: dict[str, float] = {}
    for pid, (name, seconds) in after.processes.items():
        earlier = before.processes.get(pid)
        spent = seconds - (earlier[1] if earlier is not None and earlier[0] == name else 0.0)
        if spent > 0:
            by_name[name] = by_name.get(name, 0.0) + spent * 1000 / requests
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1])
    shown = [(n, ms) for n, ms in ranked[:TOP] if ms >= MIN_MS]
    other = sum(ms for _, ms in ranked) - sum(ms for _, ms in shown)
    total = after.total - before.total
    return {
        "ms_per_request": {n: round(ms, 2) for n, ms in shown},
        "other_ms": round(other, 2),
        "all_ms": round(sum(by_name.values()), 2),
        "machine_busy": round((after.busy - before.busy) / total, 3) if total > 0 else None,
    }
