"""What a job used at Replicate: its predict and total time, and the counter of GPU seconds.

Replicate reports them in the prediction's (or training's) `metrics`, which the job keeps as sent:
`predict_time`, the seconds the model ran (what public models are billed by, at the price of their
hardware), and `total_time`, from creation to completion (queueing and setup included), where
Replicate gives it. Replicate has no cost API, so a cost is only ever an operator's estimate
(replicate_relay/ops/usage.py).
"""

from __future__ import annotations

import math
from typing import Final

from replicate_relay import telemetry
from replicate_relay.jobs import Job

PREDICT_TIME: Final = "predict_time"
TOTAL_TIME: Final = "total_time"
NO_DEPLOYMENT: Final = "none"  # the counter's `deployment` for a job made through a model or version
UNKNOWN_MODEL: Final = "unknown"


def metric_seconds(job: Job, name: str) -> float | None:
    """`job.metrics[name]` as seconds: None unless Replicate sent a finite, non-negative number."""
    value = (job.metrics or {}).get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def predict_time(job: Job) -> float | None:
    return metric_seconds(job, PREDICT_TIME)


def total_time(job: Job) -> float | None:
    return metric_seconds(job, TOTAL_TIME)


def counter_attributes(job: Job) -> dict[str, str]:
    """The labels of `relay.job.predict_time`: always the same four, so that every series of the
    metric carries the labels its descriptor declares."""
    return {
        "model": job.model or UNKNOWN_MODEL,
        "deployment": job.deployment or NO_DEPLOYMENT,
        "kind": job.kind,
        "state": str(job.state),
    }


def count_final(job: Job) -> None:
    """Add a final job's predict_time to `relay.job.predict_time`. Called once per job, where its
    final state is announced (replicate_relay/announcements.py); a job without one adds nothing."""
    seconds = predict_time(job)
    if job.is_terminal and seconds is not None:
        telemetry.METRICS.predict_time.add(seconds, counter_attributes(job))
