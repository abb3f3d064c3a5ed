"""The photo-restoration worker on Relay: submit every photo, learn of each end from job-events, fetch its files.

    python examples/restore_photos/worker.py PHOTOS_DIR OUT_DIR [--subscription NAME] [--timeout S]

Exit code 0 when every photo was restored, 1 when any failed or timed out, 2 on a usage or
configuration error (nothing submitted). See README.md next to this file.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

if __name__ == "__main__" and not __package__:
    # Run as a file: the folder above examples/ makes this package importable (replicate_relay is installed).
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import google.cloud.pubsub_v1 as pubsub_v1
import google.cloud.storage as storage
from google.api_core import exceptions as google_exceptions

from examples.restore_photos.photos import (
    MODEL,
    Photo,
    PhotoTooLarge,
    find_photos,
    output_names,
    output_path,
    prepare_out_dir,
)
from examples.restore_photos.report import PhotoResult, Progress, summary, write_json
from examples.restore_photos.startup import STARTUP_ERRORS, why_not
from replicate_relay import ConfigError, JobEvent, JobEventsConsumer, RelayClient, SubmitFailed

DEFAULT_SUBSCRIPTION = "restore-photos"
DEFAULT_TIMEOUT_SECONDS = 600.0
JOB_EVENTS_TOPIC = "job-events"
SUMMARY_FILE = "restore-summary.json"
# The worker needs only the end. "start" keeps the job written while the model runs, so the
# reconciler does not take a long run for a lost one; every webhook carries the input, photo included.
WEBHOOK_EVENTS = ("start", "completed")


@dataclass(frozen=True)
class Submission:
    photo: Photo
    submitted_at: float  # Unix time, just before the submit


class Announcements:
    """Every job-events message the consumer hands over (on its threads), by job id, with when it arrived.

    Kept whoever submitted the job: an announcement may come before `submit` has returned its id.
    """

    def __init__(self) -> None:
        self._arrived: dict[str, tuple[JobEvent, float]] = {}
        self._changed = threading.Condition()

    def receive(self, event: JobEvent) -> None:
        with self._changed:
            self._arrived.setdefault(event.job_id, (event, time.time()))
            self._changed.notify_all()

    def wait(self, job_ids: set[str], timeout: float) -> dict[str, tuple[JobEvent, float]]:
        """The announcements of `job_ids` there are, once there is at least one or `timeout` has passed."""
        with self._changed:
            self._changed.wait_for(lambda: not job_ids.isdisjoint(self._arrived), timeout)
            return {job_id: self._arrived[job_id] for job_id in job_ids if job_id in self._arrived}

    def others(self, job_ids: set[str]) -> int:
        """How many announcements were of jobs not in `job_ids` (another app's, an earlier run's)."""
        with self._changed:
            return len(self._arrived.keys() - job_ids)


def project_id(environ: Mapping[str, str]) -> str:
    """The Google Cloud project, from the variables RelayClient.from_env reads it from."""
    for name in ("RELAY_PROJECT", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT"):
        if value := environ.get(name, "").strip():
            return value
    raise ConfigError("RELAY_PROJECT (or GOOGLE_CLOUD_PROJECT) is required but not set")


def subscription_path(name: str, project: str) -> str:
    return name if name.startswith("projects/") else f"projects/{project}/subscriptions/{name}"


def ensure_subscription(subscriber: pubsub_v1.SubscriberClient, path: str, topic: str, *, local: bool) -> bool:
    """Check the pull subscription is on job-events; on the emulator make it if missing (returns True then).

    In production Terraform makes it (app_pull_subscriptions) and the app may not create subscriptions.
    """
    try:
        found = subscriber.get_subscription(request={"subscription": path})
    except google_exceptions.NotFound:
        if not local:
            raise ConfigError(
                f"subscription {path} does not exist; Terraform makes it: "
                f'-var \'app_pull_subscriptions={{"{path.rpartition("/")[2]}" = ["serviceAccount:…"]}}\''
            ) from None
        subscriber.create_subscription(request={"name": path, "topic": topic, "ack_deadline_seconds": 60})
        return True
    except google_exceptions.PermissionDenied:
        # roles/pubsub.subscriber, which Terraform grants the app, consumes but cannot read the
        # subscription's settings: a missing one then fails the stream (logged at its end).
        return False
    if found.topic != topic:
        raise ConfigError(f"subscription {path} is on {found.topic}, not {topic}")
    return False


def restore(
    relay: RelayClient,
    photos: Sequence[Photo],
    out_dir: Path,
    *,
    project: str,
    subscription: str = DEFAULT_SUBSCRIPTION,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    extra_inputs: Mapping[str, Any] | None = None,
    local: bool | None = None,
    progress_stream: TextIO | None = None,
) -> list[PhotoResult]:
    """Submit each photo, wait for their announcements (at most `timeout` s), download what succeeded.

    The subscription is checked (made, locally) before anything is submitted, so no announcement
    is missed; a subscription made here is deleted afterwards. `local` defaults to whether
    PUBSUB_EMULATOR_HOST is set.
    """
    local = "PUBSUB_EMULATOR_HOST" in os.environ if local is None else local
    path = subscription_path(subscription, project)
    topic = f"projects/{project}/topics/{JOB_EVENTS_TOPIC}"
    announcements = Announcements()
    subscriber = pubsub_v1.SubscriberClient()
    try:
        made = ensure_subscription(subscriber, path, topic, local=local)
        try:
            with JobEventsConsumer(path, announcements.receive, subscriber=subscriber) as consumer:
                consumer.start()
                results = _submit_and_wait(
                    relay,
                    photos,
                    announcements,
                    timeout=timeout,
                    extra_inputs=extra_inputs,
                    progress_stream=progress_stream,
                )
        finally:
            if made:
                subscriber.delete_subscription(request={"subscription": path})
    finally:
        subscriber.close()
    mine = {result.job_id for result in results if result.job_id}
    if ignored := announcements.others(mine):
        print(f"(acknowledged {ignored} announcement(s) of jobs this run did not submit)", file=sys.stderr)
    with closing(storage.Client(project=project)) as client:
        _download_all(client, results, photos, out_dir)
    return results


def _submit_and_wait(
    relay: RelayClient,
    photos: Sequence[Photo],
    announcements: Announcements,
    *,
    timeout: float,
    extra_inputs: Mapping[str, Any] | None,
    progress_stream: TextIO | None,
) -> list[PhotoResult]:
    progress = Progress(len(photos), "restoring", progress_stream)
    results: dict[str, PhotoResult] = {}
    pending: dict[str, Submission] = {}
    deadline = time.monotonic() + timeout
    for photo in photos:
        try:
            inputs = photo.inputs(extra_inputs)
        except (PhotoTooLarge, OSError) as error:
            results[photo.name] = PhotoResult(photo.name, "not submitted", reason=str(error))
            progress.advance(f"{photo.name} not submitted")
            continue
        began = time.time()
        try:
            job = relay.submit(MODEL, inputs, metadata={"photo": photo.name}, webhook_events=WEBHOOK_EVENTS)
        except SubmitFailed as error:
            results[photo.name] = PhotoResult(photo.name, "failed", job_id=error.job.job_id, reason=f"submit: {error}")
            progress.advance(f"{photo.name} refused")
            continue
        pending[job.job_id] = Submission(photo, began)
    while pending and (remaining := deadline - time.monotonic()) > 0:
        for job_id, (event, known_at) in announcements.wait(set(pending), remaining).items():
            submission = pending.pop(job_id)
            results[submission.photo.name] = _announced(submission, event, known_at)
            progress.advance(f"{submission.photo.name} {event.state}")
    progress.close()
    for job_id, submission in pending.items():
        results[submission.photo.name] = PhotoResult(
            submission.photo.name, "timed out", job_id=job_id, reason=f"not announced within {timeout:g} s"
        )
    return [results[photo.name] for photo in photos]


def _announced(submission: Submission, event: JobEvent, known_at: float) -> PhotoResult:
    reason = None if event.state == "succeeded" else f"{event.error_code or event.state}: {event.error or '-'}"
    return PhotoResult(
        photo=submission.photo.name,
        state=event.state,
        job_id=event.job_id,
        prediction_id=event.prediction_id,
        seconds=known_at - submission.submitted_at,
        files=[output.gs_uri for output in event.outputs],  # replaced by the local names once downloaded
        reason=reason,
        known_at=known_at,
        completed_at=event.completed_at.timestamp() if event.completed_at else None,
    )


def _download_all(
    client: storage.Client, results: Sequence[PhotoResult], photos: Sequence[Photo], out_dir: Path
) -> None:
    """Copy each succeeded job's archived files from Cloud Storage into `out_dir`, named after the photo."""
    stems = output_names(photos)
    for result in results:
        if not result.succeeded:
            continue
        uris, result.files = result.files, []
        for index, uri in enumerate(uris):
            target = output_path(out_dir, stems[result.photo], index=index, count=len(uris), source=uri)
            bucket, _, name = uri.removeprefix("gs://").partition("/")
            try:
                client.bucket(bucket).blob(name).download_to_filename(str(target))
            except google_exceptions.GoogleAPICallError as error:
                result.state, result.reason = "failed", f"download of {uri}: {error}"
                break
            result.files.append(target.name)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="worker.py",
        description="Restore every photo in PHOTOS_DIR with flux-kontext-apps/restore-image through Relay.",
    )
    parser.add_argument("photos_dir", type=Path, metavar="PHOTOS_DIR", help="the photos (PHOTO.json: extra inputs)")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="where the restored photos are written")
    parser.add_argument(
        "--subscription",
        default=DEFAULT_SUBSCRIPTION,
        help=f"the pull subscription of job-events, a name or a full path (default {DEFAULT_SUBSCRIPTION})",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="seconds to wait for all (default 600)"
    )
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error(f"--timeout must be more than 0, got {args.timeout:g}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)  # exits 2 on a usage error
    try:
        photos = find_photos(args.photos_dir)
        out_dir = prepare_out_dir(args.out_dir)
        project = project_id(os.environ)
        with RelayClient.from_env() as relay:
            results = restore(
                relay, photos, out_dir, project=project, subscription=args.subscription, timeout=args.timeout
            )
    except STARTUP_ERRORS as error:
        print(why_not("worker.py", error), file=sys.stderr)
        return 2
    write_json(results, out_dir / SUMMARY_FILE)
    print(summary(results))
    return 0 if all(result.succeeded for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
