"""Submitting through Replicate's client to the simulator, and the reconciler's safety net."""

from __future__ import annotations

import concurrent.futures
import json
import time
from typing import Any

import httpx
import pytest
from google.cloud import firestore

from replicate_relay.devstack.stack import LocalStack
from replicate_relay.jobs import Job
from replicate_relay.jobstore import EVENTS, JOBS, JobStore
from replicate_relay.replicate_api import ModelRef, ReplicateAPI, ReplicateAPIError
from replicate_relay.submit import SubmitFailed, Submitter
from tests.integration.conftest import Tap, announcements, read_job, wait_for, wait_for_job

MODEL = ModelRef.parse("flux-kontext-apps/restore-image")
FAST = {"input_image": "https://example.com/old.jpg", "seed": 1, "sim_duration": 0.5}


@pytest.fixture
def submitter(stack: LocalStack, db: firestore.Client, replicate_api: ReplicateAPI) -> Submitter:
    return Submitter(store=JobStore(db), replicate=replicate_api, webhook_url=stack.receiver_url + "/")


def test_official_client_creates_and_reads_predictions_on_the_simulator(replicate_api: ReplicateAPI) -> None:
    prediction_id = replicate_api.create_prediction(
        MODEL, FAST, webhook="http://127.0.0.1:9/unused", events_filter=["completed"]
    )
    body = wait_for(
        lambda: (p := json.loads(replicate_api.get_prediction(prediction_id)))["status"] == "succeeded" and p,
        what="the simulated prediction to succeed",
    )
    assert body["id"] == prediction_id
    assert body["model"] == str(MODEL)
    assert body["output"]


def test_submitted_prediction_ends_succeeded_with_its_files_in_storage(
    submitter: Submitter, db: firestore.Client, job_events: Tap
) -> None:
    job = submitter.submit(MODEL, {**FAST, "sim_files": 2}, metadata={"order": "A-17"})
    assert job.prediction_id is not None
    final = wait_for_job(db, job.job_id, "succeeded")
    assert final.source == "submit"
    assert final.metadata == {"order": "A-17"}
    assert len([e for e in final.outputs if e.get("gs_uri")]) == 2
    assert db.collection("predictions").document(job.prediction_id).get().get("job_id") == job.job_id
    events = announcements(job_events, job.job_id)
    assert [e["metadata"] for e in events] == [{"order": "A-17"}]


def test_refused_create_leaves_the_job_failed_with_replicates_error(submitter: Submitter, db: firestore.Client) -> None:
    with pytest.raises(SubmitFailed) as raised:
        submitter.submit(MODEL, {**FAST, "sim_outcome": "no-such-outcome"})
    job = read_job(db, raised.value.job.job_id)
    assert job is not None
    assert (job.state, job.error_code) == ("failed", "submit_failed")
    assert "sim_outcome" in (job.error or "")


def test_crash_between_create_and_link_loses_nothing(
    stack: LocalStack, replicate_api: ReplicateAPI, db: firestore.Client
) -> None:
    store = JobStore(db)
    orphan = Job(job_id=f"orphan{time.time_ns()}", source="submit", model=str(MODEL))
    store.create_submitted(orphan)
    # The process "crashes" here: the prediction is created but never linked to the job.
    prediction_id = replicate_api.create_prediction(
        MODEL, {**FAST, "sim_files": 1}, webhook=stack.receiver_url + "/", events_filter=["start", "completed"]
    )
    webhook_job = wait_for_job(db, prediction_id, "succeeded")  # its first webhook created a job
    assert webhook_job.source == "webhook"
    assert webhook_job.outputs

    time.sleep(3.5)  # RELAY_RECONCILE_SUBMITTED_SECONDS in the test stack
    stack.reconcile()
    aborted = wait_for_job(db, orphan.job_id, "aborted")
    assert aborted.error_code == "submit_incomplete"


def test_dropped_final_webhook_is_recovered_by_the_reconciler(
    stack: LocalStack, submitter: Submitter, db: firestore.Client
) -> None:
    job = submitter.submit(MODEL, {**FAST, "sim_files": 1, "sim_drop_final": True})
    stuck = wait_for(lambda: (j := read_job(db, job.job_id)) and j.state == "processing" and j, what="processing")
    time.sleep(3.5)  # RELAY_RECONCILE_QUIET_SECONDS in the test stack
    assert read_job(db, job.job_id).state == "processing"  # type: ignore[union-attr]

    summary = stack.reconcile()
    assert summary["recovered"] >= 1  # type: ignore[operator]
    final = wait_for_job(db, job.job_id, "succeeded")
    assert final.outputs[0]["gs_uri"].startswith("gs://")
    # archive-outputs may finish the job before job-status records the event: wait for the record.
    recorded = wait_for(lambda: _succeeded_events(db, job.job_id), what="job-status to record the event")
    assert {e["source"] for e in recorded} == {"reconciler"}
    assert stuck.updated_at is not None


def test_every_job_is_recovered_after_the_receiver_was_down_longer_than_replicates_retries(
    stack: LocalStack, simulator: httpx.Client, submitter: Submitter, db: firestore.Client
) -> None:
    simulator.post("/_sim/config", json={"retry_delays": [0.2, 0.2, 0.2]}).raise_for_status()
    stack.stop_function("receiver")
    try:
        jobs = [submitter.submit(MODEL, {**FAST, "sim_files": 1}) for _ in range(3)]
        for job in jobs:
            wait_for(
                lambda pid=job.prediction_id: _final_delivery_gave_up(simulator, pid),
                timeout=30,
                what="the simulator to give up on the final webhook",
            )
    finally:
        stack.start_function("receiver")
    assert all(read_job(db, job.job_id).state == "submitted" for job in jobs)  # type: ignore[union-attr]

    time.sleep(3.5)
    summary = stack.reconcile()
    assert summary["recovered"] >= 3  # type: ignore[operator]
    for job in jobs:
        assert wait_for_job(db, job.job_id, "succeeded").outputs


def test_two_reconcilers_at_once_make_one_set_of_transitions(
    stack: LocalStack, submitter: Submitter, db: firestore.Client, job_events: Tap
) -> None:
    jobs = [submitter.submit(MODEL, {**FAST, "sim_drop_final": True}) for _ in range(2)]
    for job in jobs:
        wait_for(lambda jid=job.job_id: (j := read_job(db, jid)) and j.state == "processing", what="processing")
    time.sleep(3.5)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        summaries = list(pool.map(lambda _: stack.reconcile(), range(2)))
    assert sum(s["recovered"] for s in summaries) >= 2  # type: ignore[misc]
    for job in jobs:
        wait_for_job(db, job.job_id, "succeeded")
        # archive-outputs may finish the job before job-status records the event: wait for the record.
        wait_for(lambda jid=job.job_id: _succeeded_events(db, jid), what="job-status to record the event")
        time.sleep(1.5)
        assert len(_succeeded_events(db, job.job_id)) == 1  # the second reconciler's publish was a duplicate
        assert len(announcements(job_events, job.job_id)) == 1


def _succeeded_events(db: firestore.Client, job_id: str) -> list[dict[str, Any]]:
    return [e for e in _events(db, job_id) if e["status"] == "succeeded"]


def _events(db: firestore.Client, job_id: str) -> list[dict[str, Any]]:
    return [s.to_dict() for s in db.collection(JOBS).document(job_id).collection(EVENTS).stream()]


def _final_delivery_gave_up(simulator: httpx.Client, prediction_id: str | None) -> bool:
    return bool(simulator.get(f"/_sim/predictions/{prediction_id}/deliveries").json()["final"] == "gave_up")


def test_replicate_api_reports_unknown_predictions_as_permanent(replicate_api: ReplicateAPI) -> None:
    with pytest.raises(ReplicateAPIError) as raised:
        replicate_api.get_prediction("doesnotexist")
    assert (raised.value.status, raised.value.transient) == (404, False)


def test_reconciler_on_an_empty_database_checks_nothing_and_succeeds(stack: LocalStack) -> None:
    # Clear the Firestore emulator (every test uses its own ids, so nothing later depends on it).
    host = stack.emulator_env["FIRESTORE_EMULATOR_HOST"]
    url = f"http://{host}/emulator/v1/projects/{stack.config.project}/databases/(default)/documents"
    # The emulator refuses (409) while a transaction holds a lock; handlers may still be finishing.
    wait_for(lambda: httpx.delete(url, timeout=10).status_code == 200, what="the emulator to clear its data")
    summary = stack.reconcile()
    assert {key: summary[key] for key in ("checked", "recovered", "aborted", "announced", "errors")} == {
        "checked": 0,
        "recovered": 0,
        "aborted": 0,
        "announced": 0,
        "errors": 0,
    }


@pytest.mark.parametrize(
    "metadata", [{"": "x"}, {"__x__": "reserved"}, {"order": "\ud800"}], ids=["empty key", "reserved key", "surrogate"]
)
def test_metadata_a_job_cannot_keep_is_refused_before_anything_is_written(
    submitter: Submitter, db: firestore.Client, stack: LocalStack, metadata: dict[str, str]
) -> None:
    with httpx.Client(base_url=stack.simulator_url) as simulator:
        before = simulator.get("/_sim/stats").json()["calls"]
        with pytest.raises(ValueError, match="metadata"):
            submitter.submit(MODEL, FAST, metadata=metadata)
        assert simulator.get("/_sim/stats").json()["calls"] == before  # no prediction created


def test_any_input_shape_is_submitted_and_kept_exactly(submitter: Submitter, db: firestore.Client) -> None:
    given = {**FAST, "boxes": [[1, 2], [3, 4]], "": 1, "deep": [[[{"k": [[0.1]]}]]], "big": 2**70}
    job = submitter.submit(MODEL, given)
    assert job.input == given
    final = wait_for_job(db, job.job_id, "succeeded")
    assert final.input == given
