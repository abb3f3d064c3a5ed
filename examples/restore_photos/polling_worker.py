"""The polling worker Relay replaces: create each prediction without a webhook, then ask every INTERVAL s.

    python examples/restore_photos/polling_worker.py PHOTOS_DIR OUT_DIR [--interval 30] [--timeout S]

Needs REPLICATE_API_TOKEN; REPLICATE_BASE_URL (or the dev stack's RELAY_REPLICATE_BASE_URL) points
it at the simulator. Kept to compare with worker.py (compare.py): production asked every 30 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

if __name__ == "__main__" and not __package__:
    # Run as a file: the repository root makes this package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx
from replicate.client import Client as ReplicateClient
from replicate.exceptions import ReplicateError
from replicate.prediction import Prediction

from examples.restore_photos import photos as album
from examples.restore_photos.report import PhotoResult, Progress, summary

FINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
DEFAULT_INTERVAL_SECONDS = 30.0  # what production used


def poll(
    client: ReplicateClient,
    photos: Sequence[album.Photo],
    out_dir: Path,
    *,
    interval: float = DEFAULT_INTERVAL_SECONDS,
    timeout: float = 600.0,
    extra_inputs: Mapping[str, Any] | None = None,
    progress_stream: TextIO | None = None,
) -> list[PhotoResult]:
    """The old loop: create all, then every `interval` s GET each unfinished one; download what succeeded."""
    stems = album.output_names(photos)
    progress = Progress(len(photos), f"polling every {interval:g} s", progress_stream)
    results: dict[str, PhotoResult] = {}
    running: dict[str, tuple[album.Photo, float]] = {}
    for photo in photos:
        try:
            created = client.predictions.create(model=album.MODEL, input=photo.inputs(extra_inputs))  # no webhook
        except (album.PhotoTooLarge, OSError, ReplicateError) as error:
            results[photo.name] = PhotoResult(photo.name, "not submitted", reason=str(error))
            progress.advance(f"{photo.name} not submitted")
            continue
        running[created.id] = (photo, time.time())
    deadline = time.monotonic() + timeout
    while running and time.monotonic() < deadline:
        time.sleep(interval)
        for prediction_id in list(running):
            prediction = client.predictions.get(prediction_id)
            if prediction.status in FINAL:
                photo, submitted_at = running.pop(prediction_id)
                results[photo.name] = _ended(prediction, photo.name, submitted_at, out_dir / stems[photo.name])
                progress.advance(f"{photo.name} {prediction.status}")
    progress.close()
    for prediction_id, (photo, _) in running.items():
        results[photo.name] = PhotoResult(photo.name, "timed out", prediction_id=prediction_id)
    return [results[photo.name] for photo in photos]


def _ended(prediction: Prediction, photo: str, submitted_at: float, stem: Path) -> PhotoResult:
    known_at = time.time()
    result = PhotoResult(
        photo=photo,
        state=prediction.status,
        prediction_id=prediction.id,
        seconds=known_at - submitted_at,
        reason=None if prediction.status == "succeeded" else f"{prediction.status}: {prediction.error or '-'}",
        known_at=known_at,
        completed_at=datetime.fromisoformat(prediction.completed_at).timestamp() if prediction.completed_at else None,
    )
    if result.succeeded:
        # Straight from Replicate's URLs, which it deletes an hour after the prediction ends.
        urls = prediction.output if isinstance(prediction.output, list) else [prediction.output]
        for index, url in enumerate(urls):
            target = album.output_path(stem.parent, stem.name, index=index, count=len(urls), source=url)
            target.write_bytes(httpx.get(url, follow_redirects=True, timeout=60).raise_for_status().content)
            result.files.append(target.name)
    return result


def connect() -> tuple[ReplicateClient, httpx.HTTPTransport]:
    """Replicate's client from the environment, and its transport to close (the client has no close())."""
    token = os.environ.get("REPLICATE_API_TOKEN")
    if not token:
        raise album.UsageError("REPLICATE_API_TOKEN is not set")
    base_url = os.environ.get("REPLICATE_BASE_URL") or os.environ.get("RELAY_REPLICATE_BASE_URL")
    transport = httpx.HTTPTransport()
    return ReplicateClient(api_token=token, base_url=base_url, transport=transport), transport


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="polling_worker.py", description=__doc__.splitlines()[0])
    parser.add_argument("photos_dir", type=Path, metavar="PHOTOS_DIR")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_SECONDS, help="seconds between checks")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for all")
    args = parser.parse_args(argv)
    try:
        photos = album.find_photos(args.photos_dir)
        out_dir = album.prepare_out_dir(args.out_dir)
        client, transport = connect()
    except album.UsageError as error:
        print(f"polling_worker.py: {error}", file=sys.stderr)
        return 2
    with transport:
        results = poll(client, photos, out_dir, interval=args.interval, timeout=args.timeout)
    print(summary(results))
    return 0 if all(result.succeeded for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
