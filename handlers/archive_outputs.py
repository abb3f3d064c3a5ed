"""The archive-outputs subscriber: copies a succeeded prediction's outputs to Cloud Storage, then
makes its job final. Replicate deletes the files an hour after completion; this keeps them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from handlers.errors import TRANSIENT_ERRORS, TransientError
from relay.archive import ArchiveConflict, Archiver
from relay.downloads import DownloadError, DownloadFailed, DownloadGone
from relay.events import PredictionEvent, PredictionStatus
from relay.jobs import Failure, Outcome, Policy, needs_archive, outputs_removed
from relay.jobstore import Applied, JobStore
from relay.outputs import FailedOutput, find_files, plain_value

ACTOR = "archive-outputs"


@dataclass(frozen=True)
class ArchiveResult:
    outcome: str
    applied: Applied | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    failure: Failure | None = None


def archive(event: PredictionEvent, *, store: JobStore, archiver: Archiver, policy: Policy) -> ArchiveResult:
    """Archive every output of a succeeded prediction, then finish its job in one transaction.

    Download errors that time cannot fix (expired, refused) end the job `failed`; network errors,
    5xx and storage outages raise TransientError so Pub/Sub redelivers the message. Files stored
    by an earlier attempt are found by name and not copied again.
    """
    if event.attributes.status != PredictionStatus.SUCCEEDED:
        return ArchiveResult("ignored")  # the production subscription filters these out already
    prediction = event.prediction
    try:
        current = store.find_by_prediction(prediction.id)
    except TRANSIENT_ERRORS as error:
        raise TransientError("firestore_unavailable", _describe(error)) from error
    if current is not None and current.is_terminal:
        return ArchiveResult(Outcome.ABSORBED.value, Applied(Outcome.ABSORBED, current.job_id, current))
    if outputs_removed(event):
        return _expired(event, store)

    files = find_files(prediction.output)
    if not files and not needs_archive(prediction.output, policy):
        return ArchiveResult("nothing_to_archive")  # job-status makes such a job final by itself

    outputs: list[dict[str, Any]] = []
    failure: Failure | None = None
    try:
        for output in files:
            try:
                outputs.append(archiver.archive_file(prediction.id, output).to_document())
            except DownloadFailed as error:
                raise TransientError("download_failed", error.message) from error
            except (DownloadError, ArchiveConflict) as error:
                code, message = _permanent(error)
                failure = failure or Failure(code, f"output {output.index}: {message}")
                failed = FailedOutput(index=output.index, source_url=_source_url(error), error_code=code, error=message)
                outputs.append(failed.to_document())
        if not files:
            outputs.append(archiver.archive_value(prediction.id, plain_value(prediction.output)).to_document())
        applied = store.finish_archive(event, outputs, failure)
    except TRANSIENT_ERRORS as error:
        raise TransientError("storage_unavailable", _describe(error)) from error
    return ArchiveResult(applied.outcome.value, applied, outputs, failure)


def _expired(event: PredictionEvent, store: JobStore) -> ArchiveResult:
    """A succeeded prediction whose outputs Replicate had already removed: nothing to fetch, the job fails."""
    failure = Failure("output_expired", "Replicate had removed the outputs (data_removed) before Relay read them")
    try:
        applied = store.finish_archive(event, [], failure)
    except TRANSIENT_ERRORS as error:
        raise TransientError("firestore_unavailable", _describe(error)) from error
    return ArchiveResult(applied.outcome.value, applied, [], failure)


def _permanent(error: DownloadError | ArchiveConflict) -> tuple[str, str]:
    if isinstance(error, DownloadGone):
        return "output_expired", error.message
    if isinstance(error, ArchiveConflict):
        return "archive_conflict", str(error)
    return "output_refused", f"{error.reason}: {error.message}"


def _source_url(error: DownloadError | ArchiveConflict) -> str | None:
    return error.url if isinstance(error, DownloadError) else None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:500]
