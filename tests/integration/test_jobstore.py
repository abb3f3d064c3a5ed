"""JobStore on the Firestore emulator: which writer makes a job final, and the announcement claimed with it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core import exceptions as google_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from replicate_relay import announcements
from replicate_relay.events import EventAttributes, Prediction, PredictionEvent, Source
from replicate_relay.jobs import TERMINAL_STATES, Job, Outcome
from replicate_relay.jobstore import EVENTS, JOBS, PREDICTIONS, JobStore, event_key
from replicate_relay.testing import prediction_lifecycle
from tests.integration.conftest import read_job, unique_id
from tests.outputs import ARCHIVED, FILE


@pytest.fixture
def store(db: firestore.Client) -> Iterator[JobStore]:
    """A JobStore whose final jobs are marked announced afterwards: these tests publish nothing, and
    the reconciler of later tests (same database) would otherwise announce them."""
    made = JobStore(db)
    yield made
    unannounced = db.collection(JOBS).where(filter=FieldFilter("announced_at", "==", None))
    for snapshot in unannounced.where(filter=FieldFilter("job_id", "in", sorted(_MADE) or ["-"])).stream():
        if snapshot.get("state") in TERMINAL_STATES:
            made.update_fields(snapshot.id, {"announced_at": made.now()})
    _MADE.clear()


_MADE: set[str] = set()


def events(prediction_id: str, output: Any) -> list[PredictionEvent]:
    """starting, processing, succeeded: one event each, as job-status and archive-outputs get them."""
    now = int(datetime.now(UTC).timestamp())
    _MADE.add(prediction_id)
    return [
        PredictionEvent(
            attributes=EventAttributes(
                prediction_id, body["status"], f"msg_{prediction_id}_{i}", now + i, Source.WEBHOOK
            ),
            prediction=Prediction.model_validate(body),
        )
        for i, body in enumerate(prediction_lifecycle(prediction_id, output=output))
    ]


def record(db: firestore.Client, job_id: str, event: PredictionEvent) -> dict[str, Any] | None:
    ref = db.collection(JOBS).document(job_id).collection(EVENTS).document(event_key(event.attributes.webhook_id))
    return ref.get().to_dict()


def test_succeeded_event_with_files_is_recorded_but_the_job_is_left_to_archive_outputs(
    db: firestore.Client, store: JobStore
) -> None:
    prediction_id = unique_id()
    starting, processing, succeeded = events(prediction_id, [FILE])
    assert store.apply(starting).outcome == Outcome.CREATED
    assert store.apply(processing).outcome == Outcome.APPLIED

    deferred = store.apply(succeeded)
    assert (deferred.outcome, deferred.state, deferred.claimed) == (Outcome.DEFERRED, "processing", False)
    assert read_job(db, prediction_id).state == "processing"  # type: ignore[union-attr]
    assert (record(db, prediction_id, succeeded) or {})["outcome"] == "deferred"
    assert store.apply(succeeded).outcome == Outcome.DUPLICATE


def test_the_write_that_makes_a_job_final_claims_its_announcement_once(db: firestore.Client, store: JobStore) -> None:
    prediction_id = unique_id()
    starting, _, succeeded = events(prediction_id, [FILE])
    store.apply(starting)

    finished = store.finish_archive(succeeded, [], None)
    assert (finished.outcome, finished.state, finished.claimed) == (Outcome.APPLIED, "succeeded", True)
    assert finished.job is not None
    assert finished.job.announce_claimed_at is not None
    assert announcements.claim(store, prediction_id) is None  # held: no second announcer

    again = store.finish_archive(succeeded, [], None)
    assert (again.outcome, again.claimed) == (Outcome.ABSORBED, False)
    assert store.apply(succeeded).outcome == Outcome.DEFERRED  # recorded; the job stays final
    assert read_job(db, prediction_id).updated_at == finished.job.updated_at  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("output", "created_as", "announcer"),
    [
        pytest.param("a short text", "succeeded", "job-status", id="no-files-final-at-once"),
        pytest.param([FILE], "archiving", "archive-outputs", id="files-archiving-until-archived"),
    ],
)
def test_a_succeeded_event_for_no_known_job_creates_it_and_the_final_write_claims_the_announcement(
    output: Any, created_as: str, announcer: str, store: JobStore
) -> None:
    """Without files, job-status makes the job final in the write that creates it. With files (while
    archive-outputs is down or behind) the job exists, archiving, for the reconciler to find, and
    archive-outputs' write makes it final. Either way that write claims the announcement."""
    prediction_id = unique_id()
    *_, succeeded = events(prediction_id, output)
    created = store.apply(succeeded)
    assert (created.outcome, created.state, created.claimed) == (Outcome.CREATED, created_as, created_as == "succeeded")
    final = created if created.state == "succeeded" else store.finish_archive(succeeded, [], None)
    assert (final.state, final.claimed) == ("succeeded", True)
    assert final.job is not None
    assert final.job.announcer == announcer
    assert announcements.claim(store, prediction_id) is None  # held: no second announcer


def test_claim_lapses_after_its_lease_when_the_announcement_was_not_marked(
    db: firestore.Client, store: JobStore
) -> None:
    prediction_id = unique_id()
    *_, succeeded = events(prediction_id, "text")
    store.apply(succeeded)  # final and claimed, never marked announced (a publish that failed)
    time.sleep(0.2)
    assert announcements.claim(store, prediction_id, lease=timedelta(milliseconds=100)) is not None


def test_first_webhooks_racing_the_submitters_link_leave_one_job_holding_every_event(
    db: firestore.Client, store: JobStore
) -> None:
    """Replicate sends `starting` as it creates the prediction, so the first webhooks and the
    submitter's attach_prediction each try to write `predictions/{id}` first: whoever loses
    (their batch's create fails whole) goes on through a transaction that finds the mapping."""
    prediction_id = unique_id()
    submitted = Job(job_id=f"sub{prediction_id}", source="submit", metadata={"order": "42"})
    store.create_submitted(submitted)
    starting, processing, _ = events(prediction_id, [FILE])

    with ThreadPoolExecutor(max_workers=3) as pool:
        applied = [pool.submit(store.apply, event) for event in (starting, processing)]
        attached = pool.submit(store.attach_prediction, submitted.job_id, prediction_id)
        outcomes = {future.result().outcome for future in applied}
        job_id = attached.result()

    mapping = db.collection(PREDICTIONS).document(prediction_id).get()
    assert mapping.get("job_id") == job_id
    job = read_job(db, job_id)
    assert job is not None
    assert (job.state, job.metadata) == ("processing", {"order": "42"})
    assert outcomes <= {Outcome.CREATED, Outcome.APPLIED, Outcome.STALE}
    assert all(record(db, job_id, event) for event in (starting, processing))
    others = {submitted.job_id, prediction_id} - {job_id}
    assert all(read_job(db, other) is None for other in others)  # the loser's job was merged away


def test_finish_written_on_a_stale_read_is_decided_again_in_a_transaction(
    db: firestore.Client, store: JobStore
) -> None:
    """archive-outputs reads the job while it copies, then writes the final state only if the job
    is unchanged since; a write in between (here: metadata) sends it through the transaction,
    which keeps that write."""
    prediction_id = unique_id()
    starting, _, succeeded = events(prediction_id, [FILE])
    store.apply(starting)
    located = store.locate(prediction_id)
    db.collection(JOBS).document(prediction_id).update({"metadata": {"late": "write"}})

    finished = store.finish_archive(succeeded, [], None, located=located)
    assert (finished.state, finished.claimed) == ("succeeded", True)
    job = read_job(db, prediction_id)
    assert job is not None
    assert (job.state, job.metadata) == ("succeeded", {"late": "write"})


def test_finish_on_an_unchanged_read_is_one_conditional_write(db: firestore.Client, store: JobStore) -> None:
    prediction_id = unique_id()
    starting, _, succeeded = events(prediction_id, [FILE])
    store.apply(starting)
    located = store.locate(prediction_id)
    finished = store.finish_archive(succeeded, [ARCHIVED], None, located=located)
    assert (finished.outcome, finished.state, finished.claimed) == (Outcome.APPLIED, "succeeded", True)
    job = read_job(db, prediction_id)
    assert job is not None
    assert (job.state, job.outputs, job.announcer) == (
        "succeeded",
        [ARCHIVED],
        "archive-outputs",
    )
    # A second finish on the same (now stale) read changes nothing: the transaction absorbs it.
    again = store.finish_archive(succeeded, [], None, located=located)
    assert (again.outcome, again.claimed) == (Outcome.ABSORBED, False)
    assert read_job(db, prediction_id) == job


@contextmanager
def lock_held(db: firestore.Client, job_id: str) -> Iterator[threading.Event]:
    """A transaction that has read the job (so holds its lock) and writes it only once released,
    as a slow writer would; the context ends with that write committed."""
    release, locked = threading.Event(), threading.Event()
    ref = db.collection(JOBS).document(job_id)

    def hold(transaction: firestore.Transaction) -> None:
        ref.get(transaction=transaction)
        locked.set()
        release.wait(timeout=60)
        transaction.update(ref, {"metadata": {"held": "yes"}})

    with ThreadPoolExecutor(max_workers=1) as pool:
        holder = pool.submit(firestore.transactional(hold), db.transaction(max_attempts=1))
        assert locked.wait(timeout=30), "the holder never read the job"
        try:
            yield release
        finally:
            release.set()
            holder.result(timeout=60)


def test_contention_that_outlasts_the_budget_is_aborted_and_changes_nothing(db: firestore.Client) -> None:
    """The emulator aborts each attempt held off by another transaction's lock after 2 s: with a
    3 s budget the apply gives up (a handler's 503, and a redelivery) instead of retrying for
    as long as the other holds on."""
    prediction_id = unique_id()
    starting, processing, _ = events(prediction_id, [FILE])
    store = JobStore(db, contention_budget=timedelta(seconds=3))
    store.apply(starting)

    with lock_held(db, prediction_id), pytest.raises(google_exceptions.Aborted) as aborted:
        store.apply(processing)
    assert "still contended after" in str(aborted.value)
    assert "budget 3 s" in str(aborted.value)
    job = read_job(db, prediction_id)
    assert job is not None
    assert (job.state, job.metadata) == ("starting", {"held": "yes"})  # the holder's write, not ours
    assert record(db, prediction_id, processing) is None  # not deduplicated: the redelivery applies it

    assert store.apply(processing).outcome == Outcome.APPLIED
    assert read_job(db, prediction_id).state == "processing"  # type: ignore[union-attr]


def test_contention_within_the_budget_waits_for_the_other_writer_then_applies(db: firestore.Client) -> None:
    prediction_id = unique_id()
    starting, processing, _ = events(prediction_id, [FILE])
    store = JobStore(db)
    store.apply(starting)

    with ThreadPoolExecutor(max_workers=1) as pool, lock_held(db, prediction_id) as release:
        applying = pool.submit(store.apply, processing)
        time.sleep(1.0)  # the apply is now waiting on the holder's lock
        release.set()
        assert applying.result(timeout=60).outcome == Outcome.APPLIED
    job = read_job(db, prediction_id)
    assert job is not None
    assert (job.state, job.metadata) == ("processing", {"held": "yes"})  # both writes, neither lost


def test_a_job_written_in_the_first_form_still_reads_and_moves_on(store: JobStore, db: firestore.Client) -> None:
    """Documents written before values were JSON text (input a map with long strings cut,
    output_value beside it, no stored_values) read back as they were, and the next event rewrites
    the job in today's form with the prediction's values whole."""
    prediction_id = unique_id()
    starting, *_, succeeded = events(prediction_id, [[0.1, 0.2], [0.3, 0.4]])
    first_form = {
        "job_id": prediction_id,
        "prediction_id": prediction_id,
        "source": "webhook",
        "model": "flux-kontext-apps/restore-image",
        "version": "0" * 64,
        "input": {"input_image": "data:image/png;base64… [5022 characters cut]", "seed": 42},
        "state": "processing",
        "replicate_status": "processing",
        "outputs": [],
        "output_value": "partial text",
        "output_value_too_large": False,
        "error": None,
        "error_code": None,
        "logs_tail": "step 1/1\n",
        "logs_length": 9,
        "metrics": {"predict_time": 1.5},
        "metadata": {"order": "A-1"},
        "created_at": datetime.now(UTC),
        "updated_at": datetime.now(UTC) - timedelta(minutes=1),
        "last_event_at": datetime.fromtimestamp(starting.attributes.webhook_timestamp, UTC),
        "announcer": None,
        "announced_at": None,
        "announce_claimed_at": None,
    }
    db.collection(JOBS).document(prediction_id).set(first_form)
    db.collection(PREDICTIONS).document(prediction_id).set({"job_id": prediction_id, "created_at": datetime.now(UTC)})

    old = store.get(prediction_id)
    assert old is not None
    assert (old.input, old.output_value, old.metrics, old.output, old.stored_values) == (
        first_form["input"],
        "partial text",
        {"predict_time": 1.5},
        None,
        {},
    )

    assert store.apply(succeeded).outcome == Outcome.APPLIED
    raw = db.collection(JOBS).document(prediction_id).get().to_dict() or {}
    assert "stored_values" in raw
    assert raw["output_json"] == "[[0.1,0.2],[0.3,0.4]]"
    new = store.get(prediction_id)
    assert new is not None
    assert (new.state, new.output, new.input, new.metadata) == (
        "succeeded",
        [[0.1, 0.2], [0.3, 0.4]],
        succeeded.prediction.input,
        {"order": "A-1"},
    )
