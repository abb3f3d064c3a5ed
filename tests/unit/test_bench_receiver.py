"""bench/receiver.py's arithmetic: load-tool output parsing, the CPU accounting and the budget it prints.

The benchmark itself needs wrk, hey and the emulator (`make bench`); what it concludes from their
numbers is tested here.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

from tests.unit.bench_scripts import load

bench = load("bench_receiver", "receiver.py")
common = sys.modules["common"]


def load(rps: float, requests: int = 10_000) -> object:
    return bench.LoadResult(
        tool="wrk",
        command="",
        duration_s=requests / rps,
        connections=32,
        requests=requests,
        requests_per_s=rps,
        p50_ms=1.0,
        p99_ms=2.0,
        non_2xx=0,
        socket_errors=0,
    )


def result(key: str, rps: float, server_us: float, emulator_us: float = 0.0) -> object:
    cpu = bench.CpuUse(
        server_cores=rps * server_us / 1e6,
        server_us_per_request=server_us,
        emulator_cores=rps * emulator_us / 1e6,
        emulator_us_per_request=emulator_us,
    )
    return bench.ServerResult(key, key, "asgi", load(rps), load(rps / 2), cpu)


RESULTS = [
    result("noop-asgi", 7000, 140),
    result("receiver", 1100, 800, 300),
    result("receiver-no-pubsub", 1700, 600),
    result("receiver-no-telemetry", 1650, 570, 200),
    result("noop-flask", 1000, 1000),
]


def test_the_budget_is_one_core_shared_by_every_request_at_the_target_rate() -> None:
    budget = bench.summarise(RESULTS)["budget"]

    assert budget["target_rps"] == 4200  # 60% of 7,000
    assert budget["server_us_per_request_allowed"] == pytest.approx(1e6 / 4200, abs=0.1)
    assert set(budget["rows"]) == {"noop-asgi", "receiver", "receiver-no-pubsub", "receiver-no-telemetry"}
    assert budget["rows"]["receiver"]["vs_ceiling"] == pytest.approx(1100 / 7000, abs=0.001)


def test_the_receivers_cpu_is_split_by_difference_between_the_rows() -> None:
    split = bench.summarise(RESULTS)["budget"]["split_us"]

    assert split == {"framework": 140, "publishing": 200, "telemetry": 230, "the_rest": 230}
    assert sum(split.values()) == 800


def test_no_split_without_every_row() -> None:
    budget = bench.summarise([r for r in RESULTS if r.key != "receiver-no-telemetry"])["budget"]

    assert budget["split_us"] is None
    assert not any("by difference" in line for line in bench.budget_lines(budget))


def test_the_printed_budget_says_how_far_over_each_row_is() -> None:
    lines = bench.budget_lines(bench.summarise(RESULTS)["budget"])

    assert lines[0].startswith("60% of the ceiling is 4,200 req/s")
    assert "server 140 µs a request (within)" in lines[1]
    assert "server 800 µs a request (3.4× over), emulator 300 µs" in lines[2]
    assert lines[-1].startswith("The receiver's 800 µs")


def test_cpu_use_is_per_request_over_the_peak_run() -> None:
    cpu = bench.cpu_use((10.0, 3.0), (18.0, 6.0), load(1000, requests=10_000))

    assert cpu.server_cores == 0.8
    assert cpu.server_us_per_request == 800
    assert cpu.emulator_us_per_request == 300


def test_a_process_groups_cpu_seconds_grow_with_the_work_it_does() -> None:
    group = os.getpgid(0)
    before = common.group_cpu_seconds(group)
    spent = time.process_time()
    while time.process_time() - spent < 0.3:
        pass

    assert common.group_cpu_seconds(group) - before >= 0.25  # /proc counts in 10 ms ticks
    assert common.group_cpu_seconds(None) == 0.0


def test_hey_csv_percentiles_are_nearest_rank_over_the_2xx_answers() -> None:
    lines = ["response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset"]
    lines += [f"{ms / 1000:.4f},0,0,0,0,0,200,{i * 0.01:.4f}" for i, ms in enumerate(range(1, 101))]
    lines.append("0.5000,0,0,0,0,0,503,1.0000")

    parsed = bench.parse_hey_csv("\n".join(lines), sent=103)

    assert (parsed["p50_ms"], parsed["p99_ms"], parsed["max_ms"]) == (50.0, 99.0, 100.0)
    assert parsed["status_codes"] == {"200": 100, "503": 1}
    assert parsed["errors"] == {"no answer (socket error or timeout; hey's CSV omits them)": 2}
