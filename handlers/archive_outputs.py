"""The archive-outputs subscriber: copies a succeeded prediction's outputs to Cloud Storage, then
makes its job final. Replicate deletes the files an hour after completion; this keeps them."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from handlers.errors import TRANSIENT_ERRORS, TransientError, unavailable
from replicate_relay.archive import ArchiveConflict, Archiver
from replicate_relay.downloads import DownloadError, DownloadFailed, DownloadGone
from replicate_relay.events import PredictionEvent
from replicate_relay.jobs import Failure, plan_archive
from replicate_relay.jobstore import Applied, JobStore, Located
from replicate_relay.outputs import ArchivedObject, FailedOutput

ACTOR = "archive-outputs"
# A job's files are copied side by side (their latencies overlap), on one pool per process, so at
# most COPY_THREADS copies stream at once whatever the number of messages and files: what the
# service's memory is sized for (infra/terraform/run.tf). Threads start on the first copy, in the
# serving process (after gunicorn's fork).
COPY_THREADS = 8
_COPIES = ThreadPoolExecutor(max_workers=COPY_THREADS, thread_name_prefix="archive-copy")


@dataclass(frozen=True)
class ArchiveResult:
    outcome: str
    applied: Applied | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    failure: Failure | None = None


def archive(event: PredictionEvent, *, store: JobStore, archiver: Archiver) -> ArchiveResult:
    """Archive every output of a succeeded prediction, then finish its job in one transaction.

    Download errors that time cannot fix (expired, refused) end the job `failed`; network errors,
    5xx and storage outages raise TransientError so Pub/Sub redelivers the message. Files stored
    by an earlier attempt are found by name and not copied again.
    """
    plan = plan_archive(event)
    if plan.skip is not None:
        return ArchiveResult(plan.skip)
    if plan.failure is not None:  # nothing left to copy
        return _finish(store, event, [], plan.failure, None)
    files = plan.files

    # The copies run on the shared pool while this thread looks the job up: neither waits for the other.
    # A training's output files are its weights, under their own size cap.
    max_bytes = archiver.weights_max_bytes if event.prediction.kind == "training" else None
    copies = [_copy(archiver.archive_file, event.prediction.id, output, max_bytes=max_bytes) for output in files]
    try:
        located: Located | None = store.locate(event.prediction.id)
    except TRANSIENT_ERRORS:
        located = None  # the transaction reads it again, and raises if Firestore is still away
    wait(copies)
    if (absorbed := store.absorbed(located)) is not None:
        # A redelivery of a job already final: whatever the copies found changes nothing.
        return ArchiveResult(absorbed.outcome.value, absorbed)

    outputs: list[dict[str, Any]] = []
    failure: Failure | None = None
    with unavailable("storage"):
        for output, copy in zip(files, copies, strict=False):
            try:
                outputs.append(copy.result().to_document())
            except DownloadFailed as error:
                raise TransientError("download_failed", error.message) from error
            except (DownloadError, ArchiveConflict) as error:
                code, message = _permanent(error)
                failure = failure or Failure(code, f"output {output.index}: {message}")
                failed = FailedOutput(index=output.index, source_url=_source_url(error), error_code=code, error=message)
                outputs.append(failed.to_document())
    return _finish(store, event, outputs, failure, located)


def _copy(copy: Callable[..., ArchivedObject], *args: Any, **kwargs: Any) -> Future[ArchivedObject]:
    # In a copy of this context, so each copy's spans stay in the message's trace.
    return _COPIES.submit(contextvars.copy_context().run, copy, *args, **kwargs)


def _finish(
    store: JobStore,
    event: PredictionEvent,
    outputs: list[dict[str, Any]],
    failure: Failure | None,
    located: Located | None,
) -> ArchiveResult:
    """Make the job final; the job store being unavailable (Firestore, and the bucket for a value
    too large for the document, as in job-status) is a TransientError."""
    with unavailable("firestore"):
        applied = store.finish_archive(event, outputs, failure, located=located)
    return ArchiveResult(applied.outcome.value, applied, outputs, failure)


def _permanent(error: DownloadError | ArchiveConflict) -> tuple[str, str]:
    if isinstance(error, DownloadGone):
        return "output_expired", error.message
    if isinstance(error, ArchiveConflict):
        return "archive_conflict", str(error)
    return "output_refused", f"{error.reason}: {error.message}"


def _source_url(error: DownloadError | ArchiveConflict) -> str | None:
    return error.url if isinstance(error, DownloadError) else None
