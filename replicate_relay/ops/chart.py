"""The status page's latency chart: per-job latency of recent finished jobs, laid out for inline SVG.

Latency here is Relay's own: Replicate's `completed_at` to the job's final write (`updated_at` of a
final job), which includes archiving the outputs. Pure geometry; the page's template draws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from replicate_relay.jobs import Job

WIDTH, HEIGHT = 1100, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 36  # margins: room for the y axis labels and the x caption
MAX_BAR_WIDTH = 40
STATE_COLOURS = {"succeeded": "#2e7d32", "failed": "#c62828", "canceled": "#757575", "aborted": "#ef6c00"}
OTHER_COLOUR = "#1565c0"


@dataclass(frozen=True)
class LatencyPoint:
    job_id: str
    state: str
    completed_at: datetime
    seconds: float


def latency_points(jobs: list[Job]) -> list[LatencyPoint]:
    """The final jobs that carry both times, oldest completion first."""
    points = [
        LatencyPoint(job.job_id, str(job.state), job.completed_at, job_latency(job.completed_at, job.updated_at))
        for job in jobs
        if job.is_terminal and job.completed_at is not None and job.updated_at is not None
    ]
    return sorted(points, key=lambda point: point.completed_at)


def job_latency(completed_at: datetime, final_at: datetime) -> float:
    """Seconds from Replicate's completion to the job's final write; 0 if the clocks disagree."""
    return max(0.0, (final_at - completed_at).total_seconds())


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    label: str  # the bar's tooltip: job, state, latency


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class LegendEntry:
    x: float
    colour: str
    label: str


@dataclass(frozen=True)
class LatencyChart:
    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    bars: list[Bar]
    ticks: list[Tick]
    summary: str  # "12 jobs · p50 0.21 s · p95 1.40 s · max 2.94 s", or why there is nothing to draw
    legend: list[LegendEntry]


def latency_chart(points: list[LatencyPoint]) -> LatencyChart:
    plot_right, plot_bottom = WIDTH - RIGHT, HEIGHT - BOTTOM
    plot_width, plot_height = plot_right - LEFT, plot_bottom - TOP
    values = [point.seconds for point in points]
    step = nice_step(max(values, default=0.0))
    top_value = step * max(1, math.ceil(max(values, default=0.0) / step))
    ticks = [
        Tick(y=plot_bottom - plot_height * (i * step) / top_value, label=seconds_text(i * step, axis=True))
        for i in range(round(top_value / step) + 1)
    ]
    slot = plot_width / max(1, len(points))
    bar_width = min(MAX_BAR_WIDTH, slot * 0.8)
    bars = []
    for i, point in enumerate(points):
        height = plot_height * point.seconds / top_value
        bars.append(
            Bar(
                x=LEFT + slot * i + (slot - bar_width) / 2,
                y=plot_bottom - height,
                width=bar_width,
                height=height,
                colour=STATE_COLOURS.get(point.state, OTHER_COLOUR),
                label=f"{point.job_id}: {point.state}, {seconds_text(point.seconds)}",
            )
        )
    legend = [
        LegendEntry(x=plot_right - 90 * (len(STATE_COLOURS) - i), colour=colour, label=state)
        for i, (state, colour) in enumerate(STATE_COLOURS.items())
    ]
    return LatencyChart(WIDTH, HEIGHT, LEFT, plot_right, TOP, plot_bottom, bars, ticks, summary(values), legend)


def summary(values: list[float]) -> str:
    if not values:
        return "no finished jobs among the recent ones yet"
    ordered = sorted(values)
    return (
        f"{len(ordered)} job{'s' if len(ordered) != 1 else ''} · p50 {seconds_text(percentile(ordered, 50))}"
        f" · p95 {seconds_text(percentile(ordered, 95))} · max {seconds_text(ordered[-1])}"
    )


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def nice_step(largest: float, ticks: int = 4) -> float:
    """A 1, 2 or 5 times a power of ten step that covers `largest` in about `ticks` steps."""
    if largest <= 0:
        return 0.25
    raw = largest / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)


def seconds_text(seconds: float, *, axis: bool = False) -> str:
    if axis:
        return f"{seconds:g} s"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 100:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"
