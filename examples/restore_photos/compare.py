"""Both workers on the simulator, same photos: Replicate API calls and how late each learnt of every end.

    python examples/restore_photos/compare.py PHOTOS_DIR [--interval 2] [--duration 6] [--out DIR]

Counts come from the simulator's GET /_sim/stats; a delay is from the prediction's `completed_at`
to the moment the worker knew it had ended.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:
    # Run as a file: the folder above examples/ makes this package importable (replicate_relay is installed).
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx
from replicate.client import Client as ReplicateClient

from examples.restore_photos.photos import Photo, UsageError, find_photos
from examples.restore_photos.polling_worker import DEFAULT_INTERVAL_SECONDS, connect, poll
from examples.restore_photos.report import PhotoResult, table
from examples.restore_photos.startup import STARTUP_ERRORS, why_not
from examples.restore_photos.worker import DEFAULT_SUBSCRIPTION, project_id, restore
from replicate_relay import RelayClient


@dataclass(frozen=True)
class Way:
    """One worker's run: what it did to each photo, and the Replicate calls it cost."""

    label: str
    results: list[PhotoResult]
    creates: int
    gets: int  # GET /v1/predictions/{id} of this run's predictions

    @property
    def delays(self) -> list[float]:
        return [r.known_at - r.completed_at for r in self.results if r.known_at and r.completed_at]


def simulator_stats(simulator_url: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{simulator_url}/_sim/stats", timeout=10).raise_for_status().json()
    return stats


def _way(label: str, results: list[PhotoResult], before: dict[str, Any], after: dict[str, Any]) -> Way:
    creates = after["calls"].get("create_prediction", 0) - before["calls"].get("create_prediction", 0)
    by_prediction = after["calls_by_prediction"]
    gets = sum(by_prediction.get(r.prediction_id, {}).get("get_prediction", 0) for r in results if r.prediction_id)
    return Way(label, results, creates=creates, gets=gets)


def steered(photos: Sequence[Photo], *, duration: float, interval: float) -> list[Photo]:
    """Each photo's prediction made to run `duration` s plus a different part of one polling interval.

    Real predictions end anywhere between two polls; equal durations would all end at the same
    point of the polling cycle and measure that point, not the average.
    """
    count = len(photos)
    return [
        replace(photo, extra={**photo.extra, "sim_duration": round(duration + interval * (i + 0.5) / count, 3)})
        for i, photo in enumerate(photos)
    ]


def measure(
    relay: RelayClient,
    replicate_client: ReplicateClient,
    photos: Sequence[Photo],
    out_dir: Path,
    *,
    simulator_url: str,
    project: str,
    interval: float = 2.0,
    duration: float = 6.0,
    subscription: str = DEFAULT_SUBSCRIPTION,
    timeout: float = 120.0,
) -> list[Way]:
    """Run worker.py's restore, then the polling loop, on the same photos, steered by `steered`."""
    same = steered(photos, duration=duration, interval=interval)
    relay_dir, polling_dir = out_dir / "relay", out_dir / "polling"
    relay_dir.mkdir(parents=True, exist_ok=True)
    polling_dir.mkdir(parents=True, exist_ok=True)
    start = simulator_stats(simulator_url)
    relayed = restore(relay, same, relay_dir, project=project, subscription=subscription, timeout=timeout)
    middle = simulator_stats(simulator_url)
    polled = poll(replicate_client, same, polling_dir, interval=interval, timeout=timeout)
    end = simulator_stats(simulator_url)
    return [
        _way("relay (job-events)", relayed, start, middle),
        _way(f"polling every {interval:g} s", polled, middle, end),
    ]


def render(ways: Sequence[Way], *, interval: float, duration: float) -> str:
    """The comparison table, and what polling predicts for the interval used and for production's 30 s."""
    rows = []
    for way in ways:
        count = len(way.results)
        delays = way.delays
        rows.append(
            [
                way.label,
                str(count),
                str(way.creates),
                str(way.gets),
                f"{way.gets / max(count, 1):.1f}",
                f"{statistics.mean(delays):.2f} s" if delays else "-",
                f"{max(delays):.2f} s" if delays else "-",
            ]
        )
    headers = ["worker", "predictions", "creates", "GETs", "GETs/prediction", "delay mean", "delay max"]
    production = DEFAULT_INTERVAL_SECONDS
    notes = [
        f"each prediction ran {duration:g} s plus a different part of {interval:g} s on the simulator;",
        "GETs: GET /v1/predictions/{id} of those predictions, counted by the simulator (GET /_sim/stats);",
        "delay: from the prediction's completed_at to the moment the worker knew it had ended (relay: archived too).",
        f"polling every {interval:g} s expects ≈ {interval / 2:g} s of delay on average (at most {interval:g} s) and "
        f"one GET per interval a prediction runs, ⌈run time / interval⌉ ≈ {math.ceil(duration / interval + 0.5)} each.",
        f"production polled every {production:g} s: ≈ {production / 2:g} s of delay on average, "
        f"up to {production:g} s, and duration / {production:g} GETs per prediction, at least 1.",
    ]
    return table(headers, rows, right=range(1, 7)) + "\n\n" + "\n".join(notes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compare.py", description=__doc__.splitlines()[0])
    parser.add_argument("photos_dir", type=Path, metavar="PHOTOS_DIR")
    parser.add_argument("--interval", type=float, default=2.0, help="the polling worker's interval (default 2)")
    parser.add_argument("--duration", type=float, default=6.0, help="each simulated prediction's seconds (default 6)")
    parser.add_argument("--out", type=Path, help="where both workers write (default: a temporary folder)")
    parser.add_argument("--subscription", default=DEFAULT_SUBSCRIPTION)
    args = parser.parse_args(argv)
    simulator_url = os.environ.get("RELAY_REPLICATE_BASE_URL", "")
    try:
        photos = find_photos(args.photos_dir)
        if not simulator_url.startswith("http://"):
            raise UsageError("compare.py measures on the local simulator: export the dev stack's variables first")
        project = project_id(os.environ)
        replicate_client, transport = connect()
        with transport, RelayClient.from_env() as relay, tempfile.TemporaryDirectory() as scratch:
            ways = measure(
                relay,
                replicate_client,
                photos,
                args.out or Path(scratch),
                simulator_url=simulator_url,
                project=project,
                interval=args.interval,
                duration=args.duration,
                subscription=args.subscription,
            )
    except STARTUP_ERRORS as error:
        print(why_not("compare.py", error), file=sys.stderr)
        return 2
    print(render(ways, interval=args.interval, duration=args.duration))
    return 0 if all(result.succeeded for way in ways for result in way.results) else 1


if __name__ == "__main__":
    sys.exit(main())
