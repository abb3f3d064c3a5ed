"""handlers/archive_outputs.py: which failure is retried under which reason, with fakes of the
store and the archiver (the real ones run against the emulators in tests/integration/test_archive.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from google.api_core import exceptions as google_exceptions

from handlers.archive_outputs import archive
from handlers.errors import TransientError
from replicate_relay.downloads import DownloadFailed
from replicate_relay.events import EventAttributes, Prediction, PredictionEvent, Source
from replicate_relay.jobs import Failure, Job, Outcome
from replicate_relay.jobstore import Applied, JobStore, Located
from replicate_relay.outputs import ArchivedObject, OutputFile

URL = "https://replicate.delivery/xezq/abc/out-0.png"


def succeeded(output: Any = URL, **extra: Any) -> PredictionEvent:
    prediction = Prediction.model_validate({"id": "p1", "status": "succeeded", "output": output, **extra})
    attributes = EventAttributes("p1", "succeeded", "msg_1", 1_780_000_000, Source.WEBHOOK)
    return PredictionEvent(attributes=attributes, prediction=prediction)


@dataclass
class FakeStore:
    """JobStore's two calls archive() makes; `finish_error` is what finish_archive raises."""

    finish_error: BaseException | None = None
    finished: list[tuple[list[dict[str, Any]], Failure | None]] = field(default_factory=list)

    def locate(self, prediction_id: str) -> Located | None:
        return Located(job_id=prediction_id, mapped=True, job=None)

    absorbed = JobStore.absorbed  # the real rule: it reads nothing

    def finish_archive(
        self, _: PredictionEvent, outputs: list[dict[str, Any]], failure: Failure | None, **__: Any
    ) -> Applied:
        if self.finish_error is not None:
            raise self.finish_error
        self.finished.append((outputs, failure))
        job = Job(job_id="p1", prediction_id="p1", source="webhook", state="succeeded")
        return Applied(Outcome.APPLIED, "p1", job)


@dataclass
class FakeArchiver:
    """Copies every file, or raises `error` for each."""

    error: BaseException | None = None
    weights_max_bytes: int = 10 * 1024**3
    caps: list[int | None] = field(default_factory=list)  # the max_bytes each copy was given

    def archive_file(self, prediction_id: str, output: OutputFile, *, max_bytes: int | None = None) -> ArchivedObject:
        self.caps.append(max_bytes)
        if self.error is not None:
            raise self.error
        return ArchivedObject(
            index=output.index,
            source_url=URL,
            gs_uri=f"gs://bucket/predictions/{prediction_id}/{output.index}-out-0.png",
            content_type="image/png",
            size=3,
            crc32c="AAAAAA==",
            already_archived=False,
        )


def run(store: FakeStore, archiver: FakeArchiver, event: PredictionEvent | None = None) -> TransientError:
    with pytest.raises(TransientError) as raised:
        archive(event or succeeded(), store=store, archiver=archiver)  # type: ignore[arg-type]
    assert raised.value.status == 503  # not acknowledged: Pub/Sub redelivers
    return raised.value


def test_files_copied_then_the_job_finished_is_applied() -> None:
    store = FakeStore()
    result = archive(succeeded(), store=store, archiver=FakeArchiver())  # type: ignore[arg-type]
    assert result.outcome == "applied"
    [(outputs, failure)] = store.finished
    assert ([entry["gs_uri"] for entry in outputs], failure) == (["gs://bucket/predictions/p1/0-out-0.png"], None)


@pytest.mark.parametrize(
    "error",
    [
        google_exceptions.ServiceUnavailable("firestore is away"),
        google_exceptions.DeadlineExceeded("commit timed out"),
        ConnectionError("reset"),
    ],
    ids=["unavailable", "deadline", "connection"],
)
def test_a_firestore_failure_finishing_the_job_is_firestore_unavailable(error: BaseException) -> None:
    failed = run(FakeStore(finish_error=error), FakeArchiver())
    assert failed.reason == "firestore_unavailable"
    assert type(error).__name__ in failed.message


@pytest.mark.parametrize(
    "error",
    [google_exceptions.ServiceUnavailable("storage is away"), requests.ConnectionError("reset")],
    ids=["google-api", "requests"],
)
def test_a_cloud_storage_failure_copying_a_file_is_storage_unavailable(error: BaseException) -> None:
    store = FakeStore()
    assert run(store, FakeArchiver(error=error)).reason == "storage_unavailable"
    assert store.finished == []  # the job is not finished without its files


def test_a_download_failure_is_download_failed() -> None:
    error = DownloadFailed("timeout", f"{URL}: ReadTimeout", url=URL)
    assert run(FakeStore(), FakeArchiver(error=error)).reason == "download_failed"


def test_a_firestore_failure_failing_a_job_whose_outputs_expired_is_firestore_unavailable() -> None:
    event = succeeded(output=None, data_removed=True)
    failed = run(FakeStore(finish_error=google_exceptions.ServiceUnavailable("away")), FakeArchiver(), event)
    assert failed.reason == "firestore_unavailable"


def test_a_trainings_weights_are_copied_under_the_weights_cap_and_a_predictions_under_the_default() -> None:
    training = succeeded(
        {"version": "acme/tuned:v2", "weights": "https://replicate.delivery/xezq/abc/weights.tar"},
        urls={"get": "https://api.replicate.com/v1/trainings/p1"},
    )
    archiver = FakeArchiver(weights_max_bytes=123)
    archive(training, store=FakeStore(), archiver=archiver)  # type: ignore[arg-type]
    archive(succeeded(), store=FakeStore(), archiver=archiver)  # type: ignore[arg-type]
    assert archiver.caps == [123, None]
