"""handlers/reconcile.py's decisions: which call it makes for which job, and when it gives up, with
fakes of the store, Replicate and Pub/Sub (the real ones: tests/integration/test_trainings_and_deadlines.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from handlers.reconcile import Reconciler, ReconcileSettings
from replicate_relay.jobs import Job
from replicate_relay.replicate_api import ReplicateAPIError

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SETTINGS = ReconcileSettings(requests_per_second=1000.0, cancel_tries=3)


@dataclass
class FakeStore:
    """The JobStore calls the reconciler makes, over a dict of jobs."""

    jobs: dict[str, Job] = field(default_factory=dict)

    def find_past_deadline(self, states: list[str], now: datetime, *, limit: int) -> list[Job]:
        due = [j for j in self.jobs.values() if j.state in states and j.deadline_at and j.deadline_at < now]
        return sorted(due, key=lambda job: job.deadline_at or now)[:limit]

    def find_quiet(
        self, states: list[str], quiet_since: datetime, *, limit: int, source: str | None = None
    ) -> list[Job]:
        return [
            job
            for job in self.jobs.values()
            if job.state in states
            and (source is None or job.source == source)
            and job.updated_at
            and job.updated_at < quiet_since
        ][:limit]

    def find_unannounced(self, states: list[str], quiet_since: datetime, *, limit: int) -> list[Job]:
        return []

    def now(self) -> datetime:
        return NOW

    def abort(
        self, job_id: str, *, error_code: str, error: str, only_if: Callable[[Job], bool] = lambda _: True
    ) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None or job.is_terminal or not only_if(job):
            return None
        update = {"state": "aborted", "error_code": error_code, "error": error, "announcer": "reconciler"}
        self.jobs[job_id] = job.model_copy(update=update)
        return self.jobs[job_id]

    def abort_unsubmitted(self, job_id: str) -> Job | None:
        return self.abort(job_id, error_code="submit_incomplete", error="never linked")

    def record_cancel(self, job_id: str, *, error_code: str | None, error: str | None) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None or job.is_terminal:
            return None
        update: dict[str, Any] = {
            "cancel_attempts": job.cancel_attempts + 1,
            "cancel_requested_at": job.cancel_requested_at or NOW,
            "updated_at": NOW,
        }
        if error_code is not None:
            update.update(error_code=error_code, error=error)
        self.jobs[job_id] = job.model_copy(update=update)
        return self.jobs[job_id]

    def update_if(
        self, _: str, job_id: str, decide: Callable[[Job | None, datetime], dict[str, Any] | None]
    ) -> Job | None:
        job = self.jobs.get(job_id)
        fields = decide(job, NOW)
        if fields is None or job is None:
            return None
        self.jobs[job_id] = job.model_copy(update=fields)
        return job

    def update_fields(self, job_id: str, fields: dict[str, Any]) -> None:
        self.jobs[job_id] = self.jobs[job_id].model_copy(update=fields)


@dataclass
class FakeReplicate:
    """Answers every call with `status` (or raises `error`), recording the calls."""

    status: str = "canceled"
    error: ReplicateAPIError | None = None
    calls: list[tuple[str, str]] = field(default_factory=list)

    def _answer(self, call: str, replicate_id: str) -> bytes:
        self.calls.append((call, replicate_id))
        if self.error is not None:
            raise self.error
        return json.dumps({"id": replicate_id, "status": self.status}).encode()

    def get_prediction(self, prediction_id: str) -> bytes:
        return self._answer("get_prediction", prediction_id)

    def get_training(self, training_id: str) -> bytes:
        return self._answer("get_training", training_id)

    def cancel(self, kind: str, replicate_id: str) -> bytes:
        return self._answer(f"cancel {kind}", replicate_id)


@dataclass
class FakePublisher:
    published: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

    def publish(self, data: bytes, attributes: dict[str, str]) -> str:
        self.published.append((data, dict(attributes)))
        return str(len(self.published))


def reconciler(store: FakeStore, replicate: FakeReplicate) -> tuple[Reconciler, FakePublisher, FakePublisher]:
    events, job_events = FakePublisher(), FakePublisher()
    run = Reconciler(
        store=store,  # type: ignore[arg-type]
        replicate=replicate,  # type: ignore[arg-type]
        events=events,  # type: ignore[arg-type]
        job_events=job_events,  # type: ignore[arg-type]
        settings=SETTINGS,
        clock=lambda: NOW,
    )
    return run, events, job_events


def job(**fields: Any) -> Job:
    base: dict[str, Any] = {
        "job_id": "j1",
        "prediction_id": "p1",
        "source": "submit",
        "state": "processing",
        "replicate_status": "processing",
        "updated_at": NOW - timedelta(seconds=30),
    }
    return Job(**{**base, **fields})


def test_a_quiet_training_is_read_as_a_training_and_a_prediction_as_a_prediction() -> None:
    store = FakeStore(
        {
            "j1": job(kind="training", updated_at=NOW - timedelta(hours=1)),
            "j2": job(job_id="j2", prediction_id="p2", updated_at=NOW - timedelta(hours=1)),
        }
    )
    replicate = FakeReplicate(status="succeeded")
    run, events, _ = reconciler(store, replicate)
    assert run.run().recovered == 2
    assert sorted(replicate.calls) == [("get_prediction", "p2"), ("get_training", "p1")]
    assert {attributes["status"] for _, attributes in events.published} == {"succeeded"}


@pytest.mark.parametrize("kind", ["prediction", "training"])
def test_an_open_job_past_its_deadline_is_canceled_at_replicate_and_marked(kind: str) -> None:
    store = FakeStore({"j1": job(kind=kind, deadline_at=NOW - timedelta(minutes=1))})
    replicate = FakeReplicate(status="canceled")
    run, events, _ = reconciler(store, replicate)
    summary = run.run()
    assert (summary.canceled, summary.aborted) == (1, 0)
    assert replicate.calls == [(f"cancel {kind}", "p1")]
    [(body, attributes)] = events.published
    assert (json.loads(body)["status"], attributes["source"]) == ("canceled", "reconciler")
    marked = store.jobs["j1"]
    assert (marked.error_code, marked.cancel_attempts, marked.cancel_requested_at) == ("deadline_exceeded", 1, NOW)


def test_a_job_before_its_deadline_or_archiving_past_it_is_not_canceled() -> None:
    store = FakeStore(
        {
            "j1": job(deadline_at=NOW + timedelta(minutes=1)),
            "j2": job(job_id="j2", prediction_id="p2", state="archiving", deadline_at=NOW - timedelta(minutes=1)),
        }
    )
    replicate = FakeReplicate()
    run, _, _ = reconciler(store, replicate)
    run.run()
    assert replicate.calls == []


def test_a_job_past_its_deadline_without_a_prediction_is_aborted_and_announced() -> None:
    store = FakeStore({"j1": job(prediction_id=None, state="submitted", deadline_at=NOW - timedelta(minutes=1))})
    replicate = FakeReplicate()
    run, _, job_events = reconciler(store, replicate)
    assert run.run().aborted == 1
    assert replicate.calls == []
    assert (store.jobs["j1"].state, store.jobs["j1"].error_code) == ("aborted", "deadline_exceeded")
    assert [attributes["type"] for _, attributes in job_events.published] == ["job.aborted"]


def test_replicate_unreachable_aborts_the_job_on_the_last_of_the_bounded_tries() -> None:
    store = FakeStore({"j1": job(deadline_at=NOW - timedelta(minutes=1))})
    replicate = FakeReplicate(error=ReplicateAPIError("cannot reach Replicate: ConnectError", status=None))
    run, events, job_events = reconciler(store, replicate)
    outcomes = [run.run() for _ in range(SETTINGS.cancel_tries)]
    assert [(s.errors, s.aborted) for s in outcomes] == [(1, 0)] * (SETTINGS.cancel_tries - 1) + [(0, 1)]
    ended = store.jobs["j1"]
    assert (ended.state, ended.error_code, ended.cancel_attempts) == ("aborted", "deadline_exceeded", 3)
    assert "Replicate could not be reached" in ended.error
    assert len(replicate.calls) == SETTINGS.cancel_tries
    assert events.published == []
    assert [attributes["type"] for _, attributes in job_events.published] == ["job.aborted"]
    run.run()  # final now: nothing more is asked of Replicate
    assert len(replicate.calls) == SETTINGS.cancel_tries


def test_a_run_replicate_keeps_reporting_running_is_aborted_on_the_last_try() -> None:
    store = FakeStore({"j1": job(deadline_at=NOW - timedelta(minutes=1))})
    run, _, _ = reconciler(store, FakeReplicate(status="processing"))
    for _ in range(SETTINGS.cancel_tries):
        run.run()
    assert (store.jobs["j1"].state, store.jobs["j1"].error_code) == ("aborted", "deadline_exceeded")
    assert "still reported it processing" in store.jobs["j1"].error


def test_a_requested_cancel_whose_webhook_was_lost_is_asked_again_and_its_answer_published() -> None:
    requested = NOW - SETTINGS.quiet_after - timedelta(seconds=1)
    store = FakeStore({"j1": job(kind="training", cancel_requested_at=requested, updated_at=requested)})
    replicate = FakeReplicate(status="canceled")
    run, events, _ = reconciler(store, replicate)
    assert run.run().canceled == 1
    assert replicate.calls == [("cancel training", "p1")]
    assert [json.loads(body)["status"] for body, _ in events.published] == ["canceled"]
    assert store.jobs["j1"].error_code is None  # a requested cancel is not a deadline


def test_a_requested_cancel_replicate_never_confirms_ends_aborted_cancel_unconfirmed() -> None:
    requested = NOW - timedelta(hours=1)
    store = FakeStore({"j1": job(cancel_requested_at=requested, updated_at=requested, cancel_attempts=2)})
    run, _, _ = reconciler(store, FakeReplicate(error=ReplicateAPIError("HTTP 500", status=500)))
    assert run.run().aborted == 1
    assert (store.jobs["j1"].state, store.jobs["j1"].error_code) == ("aborted", "cancel_unconfirmed")
