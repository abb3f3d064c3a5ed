"""bench/package.py's arithmetic and bench/report.py's "The package" section, from a results document
of the shape bench/package.py writes (the measurement itself installs the wheel: `bench/package.py`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.unit.bench_scripts import load

report = load("bench_report", "report.py")
package = load("bench_package", "package.py")


def results(generated_at: str = "2026-12-06T00:00:00+00:00") -> dict[str, Any]:
    timing = {"median_ms": 400.0, "min_ms": 380.0, "max_ms": 450.0}
    return {
        "generated_at": generated_at,
        "host": {"cpu_busy_before_run_percent": 3.0},
        "code": {"commit": "abc1234", "modified": []},
        "settings": {"rounds": 9, "quick": False},
        "wheel_bytes": 219_000,
        "installs": {
            "plain": {
                "site_packages_bytes": 82_500_000,
                "distributions": 39,
                "own_bytes": 1_589_000,
                "by_distribution_bytes": {"grpcio": 19_100_000, "cryptography": 15_600_000},
            },
            "services": {
                "site_packages_bytes": 118_400_000,
                "distributions": 75,
                "own_bytes": 1_589_000,
                "by_distribution_bytes": {},
            },
        },
        "import_ms": {
            "python -c pass": {"median_ms": 12.0, "min_ms": 10.0, "max_ms": 16.0},
            "import replicate_relay": {"median_ms": 9.0, "min_ms": 8.0, "max_ms": 10.0},
            "from replicate_relay import RelayClient": timing,
            "from replicate_relay import *": timing,
        },
        "client_heaviest_imports": [{"package": "google.cloud.firestore_v1", "ms": 46.0, "share": 0.11}],
    }


def test_the_section_shows_both_installs_the_import_times_and_where_the_clients_time_goes() -> None:
    text = "\n".join(report.package_section(results(), [report.package_history_row(results())]))
    assert "## The package" in text
    assert "82.5" in text
    assert "118.4" in text
    assert "grpcio 19.1 MB" in text
    assert "`from replicate_relay import RelayClient`" in text
    assert "380–450" in text
    assert "google.cloud.firestore_v1 46 ms (11%)" in text
    assert "### Every package measurement" in text


def test_without_results_the_section_says_so_and_keeps_the_recorded_measurements() -> None:
    text = "\n".join(report.package_section(None, [report.package_history_row(results())]))
    assert "Not measured: `bench/results/package.json` is missing" in text
    assert "2026-12-06 00:00" in text


def test_the_history_records_each_measurement_once(tmp_path: Path) -> None:
    path = tmp_path / "package-history.json"
    row = report.package_history_row(results())
    assert len(report.recorded_runs(path, row, identity=report.by_generated_at)) == 1
    assert len(report.recorded_runs(path, row, identity=report.by_generated_at)) == 1  # the same run seen again
    later = report.package_history_row(results(generated_at="2026-12-07T00:00:00+00:00"))
    assert len(report.recorded_runs(path, later, identity=report.by_generated_at)) == 2
    assert json.loads(path.read_text())[0]["import_ms"]["from replicate_relay import RelayClient"] == 400.0


def test_modules_are_counted_under_the_package_a_reader_would_name() -> None:
    assert package.package_of("google.cloud.firestore_v1._helpers") == "google.cloud.firestore_v1"
    assert package.package_of("google.api_core.gapic_v1.config") == "google.api_core"
    assert package.package_of("grpc._cython.cygrpc") == "grpc"
    assert package.package_of("replicate_relay") == "replicate_relay"
