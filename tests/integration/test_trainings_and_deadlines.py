"""Trainings through the pipeline (weights archived, the new version announced, webhooks larger than a
Pub/Sub message), and the reconciler ending what webhooks did not: a lost final webhook, a deadline
passed, Replicate unreachable."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from google.cloud import firestore, storage

from handlers.reconcile import Reconciler, ReconcileSettings
from replicate_relay.devstack.stack import LocalStack
from replicate_relay.jobs import Job
from replicate_relay.jobstore import JobStore, utcnow
from replicate_relay.publisher import TopicPublisher
from replicate_relay.replicate_api import ModelRef, ReplicateAPI
from replicate_relay.submit import Submitter
from replicate_relay.values import ValueStore
from tests.integration.conftest import (
    DOWNLOAD_CAP,
    Post,
    Sign,
    Tap,
    announcements,
    read_job,
    unique_id,
    wait_for,
    wait_for_job,
)
from tests.integration.fileserver import Answer, FileServer

MODEL = ModelRef.parse("flux-kontext-apps/restore-image")
VERSION = ModelRef.parse(f"{MODEL}:{'a' * 64}")
DESTINATION = "acme/restore-tuned"
FAST = {"input_image": "https://example.com/old.jpg", "sim_duration": 0.5}
MiB = 1024 * 1024


@pytest.fixture
def submitter(stack: LocalStack, db: firestore.Client, replicate_api: ReplicateAPI) -> Submitter:
    return Submitter(store=JobStore(db), replicate=replicate_api, webhook_url=stack.receiver_url + "/")


def stored_object(bucket: storage.Bucket, gs_uri: str) -> storage.Blob:
    blob = bucket.get_blob(gs_uri.removeprefix(f"gs://{bucket.name}/"))
    assert blob is not None, gs_uri
    return blob


# ---- trainings ----


def test_a_trainings_weights_land_in_the_bucket_and_its_job_event_names_the_new_version(
    submitter: Submitter, db: firestore.Client, bucket: storage.Bucket, job_events: Tap
) -> None:
    # Larger than the stack's cap on a prediction's files (RELAY_DOWNLOAD_MAX_BYTES): weights have their own.
    weights_bytes = DOWNLOAD_CAP + MiB
    job = submitter.submit_training(
        VERSION, destination=DESTINATION, input={**FAST, "sim_weights_bytes": weights_bytes}, metadata={"run": "t1"}
    )
    assert job.kind == "training"

    final = wait_for_job(db, job.job_id, "succeeded")
    assert final.kind == "training"
    assert final.output["weights"].endswith("weights.tar")
    assert final.trained_version == final.output["version"]
    assert str(final.trained_version).startswith(f"{DESTINATION}:")
    [weights] = final.outputs
    assert weights["size"] == weights_bytes
    assert stored_object(bucket, weights["gs_uri"]).size == weights_bytes
    [event] = announcements(job_events, job.job_id)
    assert (event["type"], event["kind"], event["trained_version"]) == (
        "job.succeeded",
        "training",
        final.trained_version,
    )
    assert event["metadata"] == {"run": "t1"}
    assert [entry["gs_uri"] for entry in event["outputs"]] == [weights["gs_uri"]]


def training_body(training_id: str, files: FileServer, logs: str, **fields: Any) -> dict[str, Any]:
    """A succeeded training as Replicate's webhook carries it; its weights served by the file server."""
    weights = files.serve(f"/{training_id}/weights.tar", Answer(body=b"w" * 4096, content_type="application/x-tar"))
    return {
        "id": training_id,
        "status": "succeeded",
        "model": str(MODEL),
        "version": VERSION.version,
        "input": {"steps": 1000},
        "output": {"version": f"{DESTINATION}:{training_id}v2", "weights": weights},
        "logs": logs,
        "error": None,
        "created_at": "2026-12-06T01:00:00.000Z",
        "started_at": "2026-12-06T01:00:02.000Z",
        "completed_at": "2026-12-06T04:00:00.000Z",
        "metrics": {"predict_time": 10798.0},
        "urls": {
            "get": f"https://api.replicate.com/v1/trainings/{training_id}",
            "cancel": f"https://api.replicate.com/v1/trainings/{training_id}/cancel",
        },
        **fields,
    }


def published(tap: Tap, prediction_id: str) -> Any:
    """The first message on replicate-events about `prediction_id`, once it has arrived."""
    tap()
    return next((m.message for m in tap.received if m.message.attributes["prediction_id"] == prediction_id), None)


def hours_of_logs(size: int) -> str:
    line = "step 000000: loss 0.1234 lr 1.0e-04 it/s 2.31\n"
    text = "".join(line.replace("000000", f"{i:06d}") for i in range(size // len(line) + 1))
    return text[:size]


@pytest.mark.parametrize("size", [9 * MiB, 30 * MiB], ids=["9MiB", "30MiB"])
def test_a_training_final_webhook_larger_than_a_pubsub_message_is_accepted_and_applied_whole(
    size: int,
    sign: Sign,
    post: Post,
    files: FileServer,
    db: firestore.Client,
    bucket: storage.Bucket,
    tap: Tap,
) -> None:
    training_id = unique_id()
    logs = hours_of_logs(size)
    webhook = sign(training_body(training_id, files, logs))
    assert len(webhook.body) > size

    response = post(webhook)

    assert response.status_code == 200, response.text
    # On the topic: a pointer to the body in the bucket, not the body (Pub/Sub takes 10 MB at most).
    message = wait_for(lambda: published(tap, training_id), what="the published event")
    assert message.data == b""
    assert int(message.attributes["body_size"]) == len(webhook.body)
    assert stored_object(bucket, message.attributes["body_uri"]).size == len(webhook.body)
    job = wait_for_job(db, training_id, "succeeded")
    assert (job.kind, job.source, job.trained_version) == ("training", "webhook", f"{DESTINATION}:{training_id}v2")
    assert job.logs_length == len(logs)
    assert job.outputs[0]["size"] == 4096
    # The whole logs, in the bucket (stored_values), as any value too large for the job document.
    assert "logs" in job.stored_values
    whole = JobStore(db, values=ValueStore(bucket)).load(training_id)
    assert whole is not None
    assert whole.logs == logs


def test_a_webhook_past_the_stored_body_limit_is_413_and_its_job_waits_for_the_reconciler(
    sign: Sign, post: Post, files: FileServer, db: firestore.Client
) -> None:
    training_id = unique_id()
    webhook = sign(training_body(training_id, files, hours_of_logs(33 * MiB)))
    response = post(webhook)
    assert (response.status_code, response.json()["error"]) == (413, "body_too_large")
    assert read_job(db, training_id) is None


# ---- the reconciler ----


def test_a_training_whose_final_webhook_is_lost_is_recovered_by_the_reconciler(
    stack: LocalStack, submitter: Submitter, db: firestore.Client, bucket: storage.Bucket
) -> None:
    job = submitter.submit_training(
        VERSION, destination=DESTINATION, input={**FAST, "sim_duration": 0.3, "sim_drop_final": True}
    )
    wait_for(lambda: (j := read_job(db, job.job_id)) and j.state == "processing", what="processing")
    time.sleep(3.5)  # RELAY_RECONCILE_QUIET_SECONDS in the test stack
    assert read_job(db, job.job_id).state == "processing"  # type: ignore[union-attr]

    summary = stack.reconcile()

    assert summary["recovered"] >= 1  # type: ignore[operator]
    final = wait_for_job(db, job.job_id, "succeeded")
    assert str(final.trained_version).startswith(f"{DESTINATION}:")
    assert stored_object(bucket, final.outputs[0]["gs_uri"]).size == final.outputs[0]["size"]


def test_a_prediction_whose_final_webhook_is_lost_and_deadline_passes_is_ended_by_the_reconciler(
    stack: LocalStack, submitter: Submitter, db: firestore.Client, job_events: Tap
) -> None:
    # Replicate (the simulator) cancels it at its Cancel-After deadline, and the `canceled` webhook is lost.
    job = submitter.submit(MODEL, {**FAST, "sim_duration": 60, "sim_drop_final": True}, deadline=timedelta(seconds=2))
    assert job.deadline_at is not None
    wait_for(lambda: (j := read_job(db, job.job_id)) and j.replicate_status is not None, what="a first webhook")
    wait_for(lambda: utcnow() > job.deadline_at, what="the deadline to pass")  # type: ignore[operator]
    time.sleep(1)  # for the simulator's cancel at Cancel-After, whose webhook it drops
    stuck = read_job(db, job.job_id)
    assert stuck is not None
    assert stuck.state in {"starting", "processing"}

    summary = stack.reconcile()

    assert summary["canceled"] >= 1  # type: ignore[operator]
    final = wait_for_job(db, job.job_id, "canceled")
    assert (final.error_code, final.cancel_attempts) == ("deadline_exceeded", 1)
    assert final.cancel_requested_at is not None
    [event] = announcements(job_events, job.job_id)
    assert (event["type"], event["error_code"]) == ("job.canceled", "deadline_exceeded")


@pytest.fixture
def elsewhere(stack: LocalStack) -> JobStore:
    """A job store in a project of its own on the same emulator: the reconciler run against it sees
    no other test's jobs."""
    return JobStore(firestore.Client(project=f"{stack.config.project}-deadlines-{unique_id()}"))


def test_replicate_unreachable_ends_a_job_past_its_deadline_aborted_after_the_bounded_tries(
    stack: LocalStack, elsewhere: JobStore, job_events: Tap
) -> None:
    past = utcnow() - timedelta(minutes=1)
    job = Job(job_id=unique_id(), prediction_id=unique_id(), source="submit", state="processing", deadline_at=past)
    elsewhere.create_submitted(job)
    # Nothing listens on port 9 (discard): every call to "Replicate" is refused, a real network fault.
    unreachable = ReplicateAPI.connect("r8_unused", base_url="http://127.0.0.1:9", timeout=2)
    topics = f"projects/{stack.config.project}/topics"
    reconciler = Reconciler(
        store=elsewhere,
        replicate=unreachable,
        events=TopicPublisher(f"{topics}/replicate-events", deadline_seconds=10),
        job_events=TopicPublisher(f"{topics}/job-events", deadline_seconds=10),
        settings=ReconcileSettings(cancel_tries=2, requests_per_second=100),
    )
    try:
        first = reconciler.run()
        marked = elsewhere.get(job.job_id)
        assert marked is not None
        assert (first.errors, marked.state, marked.error_code, marked.cancel_attempts) == (
            1,
            "processing",
            "deadline_exceeded",
            1,
        )
        second = reconciler.run()
    finally:
        unreachable.close()

    assert second.aborted == 1
    ended = elsewhere.get(job.job_id)
    assert ended is not None
    assert (ended.state, ended.error_code, ended.cancel_attempts) == ("aborted", "deadline_exceeded", 2)
    assert "Replicate could not be reached" in str(ended.error)
    [event] = announcements(job_events, job.job_id)
    assert (event["type"], event["error_code"]) == ("job.aborted", "deadline_exceeded")
    assert json.dumps(event["error"]) == json.dumps(ended.error)
