"""bench/e2e.py's judgement: options, growth against the soak's bounds, the mix, the targets."""

from __future__ import annotations

import pytest

from tests.unit.bench_scripts import BENCH, load

e2e = load("e2e")
MIB = 1024 * 1024


def test_soak_mode_sets_its_own_load_chaos_and_results_file() -> None:
    args = e2e.parse_args(["--soak", "--minutes", "3"])
    assert (args.predictions, args.rate, args.duplicate_probability, args.reorder_probability) == (360, 2.0, 0.05, 0.1)
    assert args.results == BENCH / "results" / "soak.json"
    default = e2e.parse_args(["--rate", "1", "--predictions", "60", "--results", "bench/results/e2e-1ps.json"])
    assert (default.duplicate_probability, default.results.name) == (0.0, "e2e-1ps.json")


def test_a_given_predictions_count_wins_over_quick() -> None:
    assert e2e.parse_args(["--quick"]).predictions == 40
    assert e2e.parse_args(["--quick", "--predictions", "60"]).predictions == 60


def test_the_mix_is_fixed_by_the_index() -> None:
    kinds = [e2e.plan(index).kind for index in range(100)]
    assert (kinds.count("lost-final"), kinds.count("failed")) == (2, 10)
    assert e2e.plan(25).inputs["sim_drop_final"] is True
    assert e2e.plan(7).expected == "failed"


def steady(rise_per_s: float, base: float = 100 * MIB) -> list[tuple[float, float]]:
    return [(t, base + rise_per_s * t) for t in range(0, 1800, 10)]


@pytest.mark.parametrize(
    ("rise_per_s", "flat"),
    [(0.0, True), (2 * MIB / 1800, True), (60 * MIB / 1800, False)],
    ids=["flat", "small-rise", "leak"],
)
def test_rss_is_flat_only_under_the_bound(rise_per_s: float, flat: bool) -> None:
    grown = e2e.growth(steady(rise_per_s), 600, 1800)
    assert e2e.flat(grown, e2e.BOUND_RSS_BYTES, "fitted", "edges") is flat


def test_fds_are_judged_by_their_floor_not_their_swing() -> None:
    swinging = [(t, 40.0 + (30 if (t // 10) % 2 else 0)) for t in range(0, 1800, 10)]
    assert e2e.flat(e2e.growth(swinging, 600, 1800), e2e.BOUND_FDS, "floor") is True
    leaking = [(t, 40.0 + t / 30) for t in range(0, 1800, 10)]
    assert e2e.flat(e2e.growth(leaking, 600, 1800), e2e.BOUND_FDS, "floor") is False
    assert e2e.flat(e2e.growth([(700, 1.0)], 600, 1800), e2e.BOUND_FDS, "floor") is None


def test_every_minute_gets_a_row_even_without_jobs() -> None:
    rows = e2e.per_minute([(5, 0.1), (10, 0.3), (130, 0.2)], 3)
    assert [(row["minute"], row["count"], row["p50"]) for row in rows] == [(0, 2, 0.1), (1, 0, None), (2, 1, 0.2)]


def result(**settings: object) -> dict[str, object]:
    return {
        "settings": {"rate_per_s": 1.0, **e2e.DEFAULTS, **settings},
        "end_to_end_s": {"p50": 0.07, "p99": 0.5},
        "firestore": {"handler_commits_failed": 0},
        "problems": [],
    }


def test_targets_are_judged_and_a_quick_run_says_it_is_not_a_target_run() -> None:
    rows, why = e2e.targets(result())
    assert [row[-1] for row in rows] == ["met", "missed", "met"]
    assert why == ""
    assert "--quick" in e2e.targets(result(quick=True))[1]
