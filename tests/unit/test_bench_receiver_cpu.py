"""bench/receiver_cpu.py: the rounds' arithmetic, the report's subsection from its results, and one real
in-process measurement (a fresh child, 50 webhooks) that must fail loudly on an answer other than 200.
"""

from __future__ import annotations

import base64
import secrets
import sys
from typing import Any

import pytest

from tests.unit.bench_scripts import load

bench = load("bench_receiver_cpu", "receiver_cpu.py")
report = load("bench_report", "report.py")
BenchError = sys.modules["common"].BenchError

APP_ROUNDS = {
    "receiver": [130.0, 125.0, 120.0],
    "receiver-no-telemetry": [70.0, 72.0, 68.0],
    "receiver-bare": [100.0, 104.0, 102.0],
    "noop-asgi": [25.0, 24.0, 26.0],
}
TELEMETRY_ROUNDS = [
    {"webhook": 57.0, "spans": 25.0, "attributes": 9.0, "metrics": 7.5, "context": 3.0},
    {"webhook": 60.0, "spans": 26.0, "attributes": 10.0, "metrics": 7.6, "context": 3.2},
    {"webhook": 55.0, "spans": 24.0, "attributes": 11.0, "metrics": 7.7, "context": 3.1},
]


def document(**settings: Any) -> dict[str, Any]:
    """A results document as bench/receiver_cpu.py writes it, from the rounds above."""
    return {
        "generated_at": "2026-12-02T10:00:00+00:00",
        "host": {"cpus": 2, "cpu_busy_before_run_percent": 3.0},
        "code": {"commit": "abc1234", "modified": []},
        "settings": {"requests": 20_000, "warmup": 200, "rounds": 3, "quick": False, **settings},
        **bench.summarise(APP_ROUNDS, TELEMETRY_ROUNDS),
    }


def test_a_spread_is_the_range_of_the_rounds_over_their_median() -> None:
    assert bench.spread([110.0, 90.0, 100.0]) == {"median": 100.0, "min": 90.0, "max": 110.0, "spread_pct": 20.0}
    assert bench.spread([1.0, 2.0, 3.0, 4.0])["median"] == 2.5
    assert bench.spread([42.0])["spread_pct"] == 0.0
    with pytest.raises(ValueError, match="no rounds"):
        bench.spread([])


def test_the_summary_takes_medians_and_compares_with_the_no_op_of_the_same_run() -> None:
    summary = bench.summarise(APP_ROUNDS, TELEMETRY_ROUNDS)

    assert summary["variants"]["receiver"]["median"] == 125.0
    assert summary["variants"]["receiver"]["spread_pct"] == 8.0  # (130 − 120) / 125
    assert summary["baseline_multiple"] == 5.0  # 125 / 25
    assert summary["derived_us"] == {"framework_layers": 23.0, "telemetry_on_minus_off": 55.0, "over_baseline": 100.0}
    parts = summary["telemetry"]
    assert [parts[key]["median"] for key in ("webhook", "spans", "attributes", "metrics", "context")] == [
        57.0,
        25.0,
        10.0,
        7.6,
        3.1,
    ]
    assert parts["rest"]["median"] == pytest.approx(57.0 - 25.0 - 10.0 - 7.6 - 3.1)
    assert bench.comparison_line(summary).startswith("receiver as served: 125.0 µs a webhook = 5.00× ")


def test_the_report_renders_the_variants_the_multiple_and_the_telemetry_parts() -> None:
    section = report.receiver_cpu_section(document())
    text = "\n".join(section)

    assert section[0] == "### Where the receiver's time goes, in process"
    assert "_measured 2026-12-02T10:00:00+00:00; full run; commit abc1234; CPU 3% busy before the run._" in text
    assert "| receiver as served: functions-framework, OpenTelemetry on | 125.0 | 120.0–130.0 | 5.00× |" in text
    assert "| no-op: functions-framework, bench/noop.py noop_async (baseline) | 25.0 | 24.0–26.0 | 1.00× |" in text
    assert "costs **5.00×** functions-framework's no-op in the same run (125.0 µs against 25.0 µs" in text
    assert "the receiver spent 55.0 µs less a webhook" in text
    assert "| all of it: receiver/main.py's calls and publish_span | 57.0 | 100% |" in text
    assert "| - two bare spans, nested (SERVER, PRODUCER) | 25.0 | 44% |" in text
    assert "| - the rest: " in text


def test_the_report_says_when_the_in_process_figures_are_missing_or_a_smoke_run() -> None:
    assert report.receiver_cpu_section(None)[2] == (
        "Not measured: `bench/results/receiver_cpu.json` is missing (run `bench/receiver_cpu.py`)."
    )
    assert "`--quick`" in report.receiver_cpu_section(document(quick=True))[2]


def test_a_fresh_child_measures_the_served_receiver_and_fails_on_any_answer_but_200() -> None:
    result = bench.run_child("receiver", requests=50, warmup=5)
    assert result["variant"] == "receiver"
    assert result["us_per_webhook"] > 0

    wrong = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    with pytest.raises(BenchError, match=r"answered 401 where every webhook must get 200: .*signature_mismatch"):
        bench.run_child("receiver", requests=50, warmup=5, sign_secret=wrong)
