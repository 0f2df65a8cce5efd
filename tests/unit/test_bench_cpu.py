"""CPU per request by process (`memos-ray bench latency --cpu`): names, sums, and a reading of
this machine's real /proc around work this test does itself."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from memos_ray.bench.cpu import CpuSnapshot, cpu_per_request, process_name, take


def test_process_names_are_ray_titles_or_program_and_first_argument() -> None:
    assert process_name(["ray::ServeReplica:memos:MemosIngress", ""]) == (
        "ray::ServeReplica:memos:MemosIngress"
    )
    assert process_name(["/opt/venv/bin/python", "/tmp/x/harness.py", "--fast"]) == (
        "python harness.py"
    )
    assert process_name(["/usr/bin/redis-server"]) == "redis-server"
    assert process_name(["/x/gcs_server", "--log_dir=/tmp/logs"]) == "gcs_server"
    assert process_name(["python3", "-u", "/a/b/run.py", "x"]) == "python3 run.py"
    assert process_name([]) == "?"


def test_processes_of_one_name_are_summed_and_small_ones_are_other() -> None:
    before = CpuSnapshot(
        {1: ("ray::Ingress", 10.0), 2: ("ray::Worker", 1.0), 3: ("ray::Worker", 2.0)},
        busy=100.0,
        total=400.0,
    )
    after = CpuSnapshot(
        {
            1: ("ray::Ingress", 12.0),  # 2 s over 200 requests: 10 ms each
            2: ("ray::Worker", 1.5),
            3: ("ray::Worker", 2.5),  # together 1 s: 5 ms each
            4: ("python bench", 0.2),  # started meanwhile: counted whole, 1 ms each
            5: ("tiny", 0.001),  # 0.005 ms each: below the line, in "other"
        },
        busy=300.0,
        total=800.0,
    )
    figures = cpu_per_request(before, after, 200)
    assert figures is not None
    expected = {"ray::Ingress": 10.0, "ray::Worker": 5.0, "python bench": 1.0}
    assert figures["ms_per_request"] == expected
    assert figures["other_ms"] == pytest.approx(0.01, abs=0.01)
    assert figures["all_ms"] == pytest.approx(16.0, abs=0.01)
    assert figures["machine_busy"] == 0.5
    # A pid reused by a new process (another name) counts whole too.
    reused = CpuSnapshot({2: ("ray::Other", 0.3)}, busy=300.0, total=800.0)
    again = cpu_per_request(before, reused, 100)
    assert again is not None and again["ms_per_request"] == {"ray::Other": 3.0}
    assert cpu_per_request(None, after, 200) is None
    assert cpu_per_request(before, after, 0) is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")
def test_a_reading_around_real_work_finds_it_in_this_process() -> None:
    before = take()
    assert before is not None
    me = before.processes[os.getpid()][0]
    started = time.process_time()
    total = 0
    while time.process_time() - started < 0.3:
        total += sum(range(10_000))
    spent_ms = (time.process_time() - started) * 1000
    after = take()
    assert after is not None and after.processes[os.getpid()][0] == me
    figures = cpu_per_request(before, after, 10)
    assert figures is not None
    mine = figures["ms_per_request"][me]
    # /proc counts in clock ticks (10 ms): within two ticks of the process's own clock, per
    # request, and other processes of the same name can only add to it.
    assert mine >= (spent_ms - 20) / 10
    assert 0 < figures["machine_busy"] <= 1
    assert total > 0


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")
def test_the_ingest_jobs_session_reading_finds_this_process_with_its_own_cpu_time() -> None:
    from memos_ray.bench.ingest_job import _session_cpu

    earlier = time.process_time()
    found = _session_cpu(os.getsid(0))
    later = time.process_time()
    # /proc counts in clock ticks (10 ms): within two of the process's own clock.
    assert earlier - 0.02 <= found[os.getpid()] <= later + 0.02
    assert all(seconds >= 0 for seconds in found.values())
