"""bench/soak.py's arithmetic: the judged window, growth and its bound, latency per minute, the mix.

The soak itself runs the whole stack for 30 minutes (`make soak`); what it concludes from its
samples is tested here.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.unit.bench_scripts import load

MIB = 1024 * 1024


soak = load("bench_soak", "soak.py")


def test_linear_slope_is_the_least_squares_slope() -> None:
    assert soak.linear_slope([(0, 1.0), (10, 21.0), (20, 41.0)]) == pytest.approx(2.0)
    # Noise around a flat line averages out: the slope is that of the fitted line, not of the ends.
    assert soak.linear_slope([(0, 10.0), (1, 12.0), (2, 8.0), (3, 10.0)]) == pytest.approx(-0.4)


def test_linear_slope_needs_two_distinct_times() -> None:
    assert soak.linear_slope([]) is None
    assert soak.linear_slope([(5, 1.0)]) is None
    assert soak.linear_slope([(5, 1.0), (5, 2.0)]) is None


def test_the_judged_window_is_the_last_two_thirds_of_the_load() -> None:
    assert soak.judged_window(1800) == pytest.approx((600, 1800))  # 30 minutes: the last 20
    assert soak.judged_window(180) == pytest.approx((60, 180))  # the 3-minute smoke: the last 2


def test_growth_of_a_steady_leak() -> None:
    # 100 MiB rising 1 MiB a minute, sampled every 10 s over 30 minutes; judged over the last 20.
    points = [(float(t), 100 * MIB + t / 60 * MIB) for t in range(0, 1801, 10)]
    grown = soak.growth(points, 600, 1800)
    assert grown.samples == 121
    assert grown.per_minute == pytest.approx(MIB)
    assert grown.fitted == pytest.approx(20 * MIB)
    # The first and last sixths (200 s each) by median: 110 MiB + 100/60 and 130 MiB − 100/60.
    assert grown.first == pytest.approx(110 * MIB + 100 / 60 * MIB)
    assert grown.last == pytest.approx(130 * MIB - 100 / 60 * MIB)
    assert grown.relative == pytest.approx(20 * MIB / grown.first)
    assert soak.within_bound(grown, fraction=0.05, absolute=10 * MIB) is False


def test_growth_ignores_samples_outside_the_window_and_one_spike() -> None:
    # Warm-up growth before the window, then flat at 50 MiB with one GC spike in the last sixth.
    points = [(float(t), (10 + t / 6) * MIB) for t in range(0, 240, 10)]
    points += [(float(t), 50.0 * MIB) for t in range(240, 721, 10)]
    points[-3] = (points[-3][0], 90.0 * MIB)
    grown = soak.growth(points, 240, 720)
    assert grown.first == grown.last == 50 * MIB
    assert grown.first_to_last == 0
    assert soak.within_bound(grown, fraction=0.05, absolute=10 * MIB) is True


def test_growth_with_one_sample_per_edge_still_compares() -> None:
    grown = soak.growth([(60.0, 10.0), (120.0, 11.0), (180.0, 12.0)], 60, 180)
    assert (grown.first, grown.last, grown.first_to_last) == (10.0, 12.0, 2.0)
    assert grown.fitted == pytest.approx(2.0)


def test_growth_of_an_empty_window() -> None:
    grown = soak.growth([(0.0, 1.0)], 60, 180)
    assert grown.samples == 0
    assert soak.within_bound(grown, fraction=0.05, absolute=1) is None


@pytest.mark.parametrize(
    ("first_mib", "grown_mib", "flat"),
    [
        (100, 9.9, True),  # under 10 MiB, though 9.9%
        (400, 19.9, True),  # over 10 MiB, but under 5% (20 MiB)
        (100, 10.0, False),  # 10% and 10 MiB: neither
        (400, 20.0, False),
        (100, -30.0, True),  # shrinking is flat
    ],
)
def test_the_bound_is_five_percent_or_ten_mib(first_mib: float, grown_mib: float, flat: bool) -> None:
    points = [(60.0, first_mib * MIB), (180.0, (first_mib + grown_mib) * MIB)]
    grown = soak.growth(points, 60, 180)
    assert soak.within_bound(grown, fraction=0.05, absolute=10 * MIB) is flat


def test_the_bound_takes_the_worse_of_fit_and_edges() -> None:
    # A late step: the last sixth's median is 30 MiB up, while the fitted line rises less.
    points = [(float(t), 100.0 * MIB) for t in range(60, 170, 10)] + [(170.0, 130.0 * MIB), (180.0, 130.0 * MIB)]
    grown = soak.growth(points, 60, 180)
    assert grown.first_to_last == 30 * MIB
    assert grown.fitted is not None
    assert grown.fitted < grown.first_to_last
    # An absolute bound the fit alone would meet: the edges still fail it.
    assert soak.within_bound(grown, fraction=0.0, absolute=grown.fitted + 1) is False
    assert soak.within_bound(grown, fraction=0.0, absolute=30 * MIB + 1) is True


def test_per_minute_percentiles_are_nearest_rank_per_minute() -> None:
    points = [(float(i) * 0.5, float(i + 1)) for i in range(100)]  # minute 0: latencies 1..100
    points += [(61.0, 7.0), (119.9, 3.0)]  # minute 1: two jobs
    rows = soak.per_minute(points)
    assert rows == [
        {"minute": 0, "count": 100, "p50": 50.0, "p99": 99.0},
        {"minute": 1, "count": 2, "p50": 3.0, "p99": 7.0},
    ]


def test_per_minute_shows_empty_minutes_and_skips_negative_times() -> None:
    rows = soak.per_minute([(-1.0, 9.0), (130.0, 2.0)], minutes=4)
    assert [row["count"] for row in rows] == [0, 0, 1, 0]
    assert rows[0]["p50"] is None
    assert rows[0]["p99"] is None
    assert rows[2]["p99"] == 2.0


def test_per_minute_extends_past_the_load_for_late_jobs() -> None:
    assert len(soak.per_minute([(200.0, 1.0)], minutes=3)) == 4


def test_the_mix_is_fixed_by_the_index() -> None:
    kinds = Counter(soak.plan(index).kind for index in range(3600))
    assert kinds == {"lost-final": 72, "failed": 360, "files": 3168}  # 2%, 10%, the rest
    lost = soak.plan(25)
    assert lost.expected == "succeeded"
    assert lost.inputs["sim_drop_final"] is True
    failed = soak.plan(7)
    assert (failed.expected, failed.files, failed.inputs["sim_outcome"]) == ("failed", 0, "failed")
    assert {soak.plan(index).files for index in (0, 1, 2, 3)} == {1, 2}
    assert all(soak.plan(index).inputs["sim_files"] == soak.plan(index).files for index in (0, 1, 25))


def test_processes_are_judged_by_kind() -> None:
    assert soak.kind_of("receiver") == "relay"
    assert soak.kind_of("archive-outputs") == "relay"
    assert soak.kind_of("api") == "relay"  # a function added to the stack later is relay's too
    assert soak.kind_of("firestore") == "emulator"
    assert soak.kind_of("simulator") == "simulator"
    series = soak.Series(group="pubsub", role="java", pid=1, kind="emulator")
    series.samples = [(60.0, 100 * MIB, 50, 30, 10.0), (180.0, 300 * MIB, 50, 30, 70.0)]
    judged = soak.judge_series(series, 60, 180)
    assert judged["judged"] is False  # reported, judged apart
    assert judged["rss_within_bound"] is False
    assert judged["fds_within_bound"] is True
    assert judged["cores"] == 0.5  # 60 CPU seconds in 120 s


def test_cores_used_over_the_window() -> None:
    samples = [(0.0, 1, 1, 1, 0.0), (60.0, 1, 1, 1, 3.0), (120.0, 1, 1, 1, 33.0), (180.0, 1, 1, 1, 63.0)]
    assert soak.cores_used(samples, 60, 180) == 0.5
    assert soak.cores_used(samples, 200, 300) is None


def test_machine_busy_between_two_readings() -> None:
    assert soak.busy_between((1000, 400), (2000, 650)) == 75.0  # 1000 jiffies, 250 of them idle
    assert soak.busy_between((1000, 400), (1000, 400)) is None


def test_fds_are_judged_by_their_floor() -> None:
    # The smoke run's job-status worker: connections in flight swing fds from 20 to 84 and back.
    swinging = [41, 42, 39, 20, 22, 31, 34, 24, 84, 46, 43, 40, 40]
    points = [(60.0 + 10 * i, float(fds)) for i, fds in enumerate(swinging)]
    grown = soak.growth(points, 60, 180)
    assert grown.fitted is not None
    assert grown.fitted > 10  # a fitted line calls it growth
    assert grown.floor_growth == 1  # the floor hardly moved: 41, 42, 39 → 43, 40, 40
    assert soak.floor_within_bound(grown, fraction=0.05, absolute=10) is True


def test_a_leak_raises_the_floor() -> None:
    # Two descriptors leaked every 10 s, under swings of 30: the floor rises with the leak.
    points = [(60.0 + 10 * i, float(20 + 2 * i + (30 if i % 3 == 0 else 0))) for i in range(13)]
    grown = soak.growth(points, 60, 180)
    assert grown.floor_growth == 18  # the first sixth's minimum 22 (50, 22, 24), the last's 40 (40, 42, 74)
    assert soak.floor_within_bound(grown, fraction=0.05, absolute=10) is False
    assert soak.floor_within_bound(soak.growth([], 60, 180), fraction=0.05, absolute=10) is None
