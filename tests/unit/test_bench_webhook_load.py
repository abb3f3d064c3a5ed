"""bench/webhook_load.py reading its load generators: wrk's output with the Lua hook's percentiles, hey's CSV."""

from __future__ import annotations

from tests.unit.bench_scripts import load

webhook_load = load("webhook_load")

WRK = """Running 10s test @ http://127.0.0.1:8080/
  Latency Distribution
     50%    1.03ms
     99%    2.13ms
  297850 requests in 10.00s, 40.00MB read
  Non-2xx or 3xx responses: 3
Requests/sec:  29785.00
relay-bench percentile 50 1031
relay-bench percentile 99.9 4090
"""


def test_wrk_output_gives_rate_and_the_hooks_percentiles_first() -> None:
    parsed = webhook_load.parse_wrk(WRK)
    assert (parsed["requests"], parsed["requests_per_s"], parsed["non_2xx"]) == (297850, 29785.0, 3)
    assert (parsed["p50_ms"], parsed["p99_ms"], parsed["p999_ms"]) == (1.031, 2.13, 4.09)


def test_hey_csv_counts_requests_it_left_out_as_failed() -> None:
    lines = ["response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset"]
    lines += [f"0.00{i},0,0,0,0,0,200,{i / 10}" for i in range(1, 10)] + ["0.5,0,0,0,0,0,503,1.0"]
    parsed = webhook_load.parse_hey_csv("\n".join(lines), sent=12)
    assert parsed["status_codes"] == {"200": 9, "503": 1}
    assert parsed["p50_ms"] == 5.0
    assert sum(parsed["errors"].values()) == 2
