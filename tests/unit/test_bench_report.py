"""bench/report.py's section on issue #14's targets: each target judged from the e2e results, only a
target run counting, and the committed history of target runs growing by one row per pair of runs.

The report itself needs the benchmarks' results (`make bench`); what it concludes from them is tested here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.unit.bench_scripts import load

report = load("bench_report", "report.py")


def results(
    rate: float,
    predictions: int,
    *,
    p50: float,
    p99: float,
    commits_failed: int | None = 0,
    archive_p50_ms: float = 60.0,
    generated_at: str = "2026-12-02T10:00:00+00:00",
    **settings: Any,
) -> dict[str, Any]:
    """The part of a bench/e2e.py results document the targets read."""
    firestore = {} if commits_failed is None else {"handler_commits_failed": commits_failed}
    return {
        "generated_at": generated_at,
        "host": {"cpu_busy_before_run_percent": 2.0},
        "code": {"commit": "abc1234", "modified": []},
        "settings": {
            "predictions": predictions,
            "rate_per_s": rate,
            **report.TARGET_SETTINGS,
            "quick": False,
            **settings,
        },
        "jobs": {"final": predictions},
        "end_to_end_s": {"p50": p50, "p90": p99, "p99": p99, "max": p99},
        "firestore": firestore,
        "archive_outputs_spans": {"message": {"count": predictions, "p50_ms": archive_p50_ms}},
        "lost": {"lost": 0},
        "problems": [],
    }


def both(**five: Any) -> dict[str, dict[str, Any] | None]:
    """A 1/s run meeting its targets, and a 5/s run with `five` changed from one that meets its own."""
    return {
        "1/s": results(1, 60, p50=0.08, p99=0.3, archive_p50_ms=50.0, generated_at="2026-12-02T10:00:00+00:00"),
        "5/s": results(5, 200, **{"p50": 0.1, "p99": 0.9, "generated_at": "2026-12-02T10:03:00+00:00", **five}),
    }


def verdicts(runs: dict[str, dict[str, Any] | None]) -> dict[str, str]:
    return {target.key: report.judge(target, runs)[1] for target in report.TARGETS}


def lines(section: list[str]) -> list[str]:
    return "\n".join(section).splitlines()


def table_rows(section: list[str]) -> dict[str, list[str]]:
    """The targets table, by its first column."""
    rows = [line.strip("| ").split(" | ") for line in lines(section) if line.startswith("| ")]
    return {row[0]: row for row in rows}


def test_every_target_met_when_each_figure_is_at_or_under_its_limit() -> None:
    runs = both(archive_p50_ms=120.0)  # at the limit: met
    assert set(verdicts(runs).values()) == {"met"}
    rows = table_rows(report.targets_section(runs, []))
    assert rows["1/s, 60 predictions: end-to-end p50"][1:] == ["≤ 120 ms", "80 ms", "met"]
    assert rows["5/s, 200 predictions: end-to-end p99"][1:] == ["≤ 1.5 s", "900 ms", "met"]
    archive = next(row for label, row in rows.items() if label.startswith("archive-outputs"))
    assert archive[2:] == ["120.0 ms (1/s run: 50.0 ms)", "met"]


def test_a_figure_over_its_limit_is_missed_in_bold() -> None:
    runs = both(p99=1.51)
    runs["1/s"]["firestore"]["handler_commits_failed"] = 3  # type: ignore[index]
    judged = verdicts(runs)
    assert judged["p99_5ps_s"] == "missed"
    assert judged["commits_failed_1ps"] == "missed"
    assert judged["p50_5ps_s"] == "met"
    rows = table_rows(report.targets_section(runs, []))
    assert rows["5/s, 200 predictions: end-to-end p99"][2:] == ["1.51 s", "**missed**"]
    assert rows["1/s, 60 predictions: handler Commits failed"][2:] == ["3", "**missed**"]


def test_missing_results_or_figures_are_not_measured_never_met() -> None:
    runs = both(commits_failed=None)
    runs["1/s"] = None
    judged = verdicts(runs)
    assert judged["p50_1ps_s"] == judged["p99_1ps_s"] == judged["commits_failed_1ps"] == "not measured"
    assert judged["p50_5ps_s"] == "met"  # the 5/s run is judged on its own
    section = report.targets_section(runs, [])
    rows = table_rows(section)
    assert rows["1/s, 60 predictions: end-to-end p50"][2:] == ["not measured", "not measured"]
    assert any("1/s: not measured, `bench/results/e2e-1ps.json` is missing" in line for line in section)
    # Results written before the 5/s run had archive spans: that target is not measured either.
    runs = both()
    del runs["5/s"]["archive_outputs_spans"]  # type: ignore[union-attr]
    assert verdicts(runs)["archive_p50_ms"] == "not measured"
    assert report.history_row({}) is None


def test_quick_and_other_settings_are_not_target_runs() -> None:
    one_per_s = report.TARGET_RUNS[0]
    assert report.not_target_run(results(1, 60, p50=0.08, p99=0.3), one_per_s) == []
    # make bench BENCH_FLAGS=--quick: the 1/s run keeps its 60 predictions but is still a smoke run.
    assert report.not_target_run(results(1, 60, p50=0.08, p99=0.3, quick=True), one_per_s) == ["`--quick`"]
    assert report.not_target_run(results(5, 40, p50=0.08, p99=0.3, files=1), one_per_s) == [
        "rate per s 5, not 1.0",
        "predictions 40, not 60",
        "files 1, not 2",
    ]
    lossy = results(1, 60, p50=0.08, p99=0.3)
    lossy["problems"] = ["1 acknowledged webhook(s) lost"]
    assert report.not_target_run(lossy, one_per_s) == [
        "1 problem(s) reported (webhooks lost, or jobs not submitted or not final)"
    ]

    runs = both(quick=True)
    judged = verdicts(runs)
    assert {judged[key] for key in ("p50_5ps_s", "p99_5ps_s", "archive_p50_ms")} == {"not a target run"}
    assert judged["p50_1ps_s"] == "met"
    assert report.history_row(runs) is None  # a pair with a smoke run is not recorded
    section = "\n".join(report.targets_section(runs, []))
    assert "5/s: `bench/results/e2e.json`" in section
    assert "**not a target run**: `--quick`" in section
    assert "None yet." in section


def test_the_history_records_a_pair_of_target_runs_once(tmp_path: Path) -> None:
    path = tmp_path / "bench" / report.HISTORY_FILE
    assert report.recorded_runs(path, None) == []
    assert not path.exists()  # nothing to record: nothing written

    runs = both(p50=0.5)
    row = report.history_row(runs)
    assert row is not None
    assert row["figures"]["p50_5ps_s"] == 0.5
    assert row["not_met"] == ["p50_5ps_s"]
    assert row["runs"]["1/s"] == {
        "generated_at": "2026-12-02T10:00:00+00:00",
        "commit": "abc1234",
        "modified": [],
        "cpu_busy_before_run_percent": 2.0,
    }
    assert report.recorded_runs(path, row) == [row]
    # The report written again from the same results adds nothing.
    assert report.recorded_runs(path, report.history_row(runs)) == [row]
    assert json.loads(path.read_text(encoding="utf-8")) == [row]

    second = both(generated_at="2026-12-03T09:00:00+00:00")
    later = report.history_row(second)
    assert report.recorded_runs(path, later) == [row, later]
    assert len(json.loads(path.read_text(encoding="utf-8"))) == 2


def test_recorded_runs_are_rendered_one_row_each() -> None:
    met = report.history_row(both())
    missed = report.history_row(both(p50=0.5, generated_at="2026-12-03T09:00:00+00:00"))
    missed["runs"]["5/s"]["commit"] = "def5678"  # type: ignore[index]
    missed["runs"]["5/s"]["modified"] = ["bench/e2e.py"]  # type: ignore[index]
    section = report.targets_section(both(), [met, missed])
    rows = [line for line in lines(section) if line.startswith("| abc1234")]
    assert rows[0] == (
        "| abc1234 | 2026-12-02 10:00, 10:03 | 2%, 2% | 80 ms | 300 ms | 0 | 100 ms | 900 ms | 60.0 ms | yes |"
    )
    assert rows[1] == (
        "| abc1234 / def5678 (tree modified) | 2026-12-02 10:00, 2026-12-03 09:00 | 2%, 2% | 80 ms | 300 ms | 0 "
        "| 500 ms | 900 ms | 60.0 ms | no: 5/s p50 |"
    )
