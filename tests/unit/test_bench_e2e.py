"""bench/e2e.py's options: where a run's results and its stack's logs go, and how --quick and
--predictions combine (`make bench` runs it twice, the 1/s run with results of its own)."""

from __future__ import annotations

from tests.unit.bench_scripts import BENCH, load

e2e = load("bench_e2e", "e2e.py")


def test_the_default_run_writes_e2e_json_and_logs_to_logs_e2e() -> None:
    args = e2e.parse_args([])
    assert (args.predictions, args.rate) == (200, 5.0)
    assert args.results == BENCH / "results" / "e2e.json"
    assert e2e.stack_log_dir(args.results) == BENCH / "results" / "logs" / "e2e"


def test_another_results_file_keeps_its_logs_apart() -> None:
    args = e2e.parse_args(["--rate", "1", "--predictions", "60", "--results", "bench/results/e2e-1ps.json"])
    assert args.results.is_absolute()
    assert args.results.name == "e2e-1ps.json"
    assert e2e.stack_log_dir(args.results).name == "e2e-1ps"


def test_a_given_predictions_count_wins_over_quick() -> None:
    assert e2e.parse_args(["--quick"]).predictions == 40
    assert e2e.parse_args(["--predictions", "60", "--quick"]).predictions == 60
    assert e2e.parse_args(["--quick", "--predictions", "60"]).quick is True  # still recorded as a smoke run
