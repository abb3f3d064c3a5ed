"""Operator commands (`replay`, `jobs`, `reprocess`, `status`) against the emulators and simulator."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.api_core import exceptions as google_exceptions
from google.cloud import firestore, pubsub_v1, storage

from replicate_relay import cli
from replicate_relay.bodies import BodyStore
from replicate_relay.devstack.processes import free_port
from replicate_relay.devstack.stack import LocalStack
from replicate_relay.events import EventAttributes
from replicate_relay.jobs import Job, JobState
from replicate_relay.jobstore import EVENTS, JOBS, PREDICTIONS, JobStore
from replicate_relay.ops.context import OpsSettings
from replicate_relay.ops.replay import pull
from replicate_relay.ops.reprocess import reprocess
from replicate_relay.publisher import TopicPublisher
from replicate_relay.replicate_api import ModelRef, ReplicateAPI
from replicate_relay.testing import prediction_lifecycle, sign_webhook
from tests.integration.conftest import Tap, read_job, unique_id, wait_for, wait_for_job
from tests.integration.fileserver import Answer, FileServer

DEAD_LETTER = "job-status-dead-letter"
DELIVERY_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def relay(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """`relay ARGS` through cli.main, capturing what it prints."""

    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def subscriber(stack: LocalStack) -> Iterator[pubsub_v1.SubscriberClient]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


@pytest.fixture
def dead_letters(stack: LocalStack, subscriber: pubsub_v1.SubscriberClient) -> Callable[..., str]:
    """Empties the job-status dead-letter subscription, then returns a function that dead-letters
    a real prediction's final event there, as Pub/Sub would after the last delivery attempt."""
    project = stack.config.project
    path = subscriber.subscription_path(project, DEAD_LETTER)
    while received := pull(subscriber, path, OpsSettings.from_env(os.environ), max_messages=100):
        ack_ids = [m.ack_id for m in received]
        subscriber.acknowledge(request={"subscription": path, "ack_ids": ack_ids})
    publisher = pubsub_v1.PublisherClient()

    def dead_letter(prediction_id: str, *, output: Any = "restored text", deliveries: int = 10) -> str:
        body = prediction_lifecycle(prediction_id, output=output)[-1]
        attributes = EventAttributes(
            prediction_id=prediction_id,
            status="succeeded",
            webhook_id=f"msg_{prediction_id}",
            webhook_timestamp=int(time.time()),
        ).to_message()
        attributes[DELIVERY_COUNT] = str(deliveries)
        attributes["CloudPubSubDeadLetterSourceSubscription"] = "job-status"
        data = json.dumps(body).encode()
        future = publisher.publish(publisher.topic_path(project, DEAD_LETTER), data, **attributes)
        return str(future.result(timeout=10))

    return dead_letter


def _events(db: firestore.Client, job_id: str) -> list[dict[str, Any]]:
    return [e.to_dict() or {} for e in db.collection(JOBS).document(job_id).collection(EVENTS).stream()]


def _dead_letter_backlog(relay: Callable[..., Run]) -> int:
    run = relay("replay", "--from", DEAD_LETTER, "--dry-run", "--json", "--timeout", "3")
    assert run.code == 0, run.err
    return int(run.json()["pulled"])


def test_replay_republishes_a_dead_lettered_event_once_with_source_replay_and_acknowledges_it(
    relay: Callable[..., Run], dead_letters: Callable[..., str], tap: Tap, db: firestore.Client
) -> None:
    prediction_id = unique_id()
    dead_letters(prediction_id)

    run = relay("replay", "--from", DEAD_LETTER)

    assert run.code == 0, run.err
    assert "pulled 1, republished 1, acknowledged 1, failed 0" in run.out
    job = wait_for_job(db, prediction_id, "succeeded")
    assert job.output_value == "restored text"
    assert [(e["source"], e["webhook_id"]) for e in _events(db, prediction_id)] == [("replay", f"msg_{prediction_id}")]
    copies = wait_for(tap, what="the republished message")
    assert len(copies) == 1
    assert copies[0].message.attributes["source"] == "replay"
    assert DELIVERY_COUNT not in copies[0].message.attributes
    assert _dead_letter_backlog(relay) == 0


def test_replay_interrupted_after_one_message_and_rerun_applies_each_event_once_and_empties_the_subscription(
    relay: Callable[..., Run], dead_letters: Callable[..., str], db: firestore.Client
) -> None:
    first, second = unique_id(), unique_id()
    dead_letters(first)
    dead_letters(second)

    partial = relay("replay", "--from", DEAD_LETTER, "--limit", "1", "--json")
    assert partial.code == 0, partial.err
    assert {key: partial.json()[key] for key in ("pulled", "republished", "acknowledged", "failed")} == {
        "pulled": 1,
        "republished": 1,
        "acknowledged": 1,
        "failed": 0,
    }
    rest = relay("replay", "--from", DEAD_LETTER, "--json")

    assert rest.code == 0, rest.err
    assert rest.json()["acknowledged"] == 1
    for prediction_id in (first, second):
        wait_for_job(db, prediction_id, "succeeded")
        assert [e["source"] for e in _events(db, prediction_id)] == ["replay"]
    assert _dead_letter_backlog(relay) == 0


def test_a_message_republished_but_never_acknowledged_is_replayed_again_and_absorbed_as_a_duplicate(
    relay: Callable[..., Run],
    dead_letters: Callable[..., str],
    subscriber: pubsub_v1.SubscriberClient,
    stack: LocalStack,
    db: firestore.Client,
) -> None:
    prediction_id = unique_id()
    dead_letters(prediction_id)
    assert relay("replay", "--from", DEAD_LETTER).code == 0
    wait_for_job(db, prediction_id, "succeeded")
    # As if that run had died between Pub/Sub confirming the copy and acknowledging the original.
    dead_letters(prediction_id)

    run = relay("replay", "--from", DEAD_LETTER)

    assert run.code == 0, run.err
    assert "acknowledged 1" in run.out
    log = stack.functions["job-status"].log_path

    def duplicate_logged() -> bool:
        lines = [json.loads(line) for line in log.read_text().splitlines() if prediction_id in line]
        return any(line.get("outcome") == "duplicate" and line.get("source") == "replay" for line in lines)

    wait_for(duplicate_logged, what="job-status to log the replayed copy as a duplicate")
    assert len(_events(db, prediction_id)) == 1
    assert read_job(db, prediction_id).state == "succeeded"  # type: ignore[union-attr]
    assert _dead_letter_backlog(relay) == 0


def test_dry_run_shows_each_message_with_its_delivery_count_and_acknowledges_nothing(
    relay: Callable[..., Run], dead_letters: Callable[..., str], db: firestore.Client
) -> None:
    ids = [unique_id(), unique_id()]
    for prediction_id in ids:
        dead_letters(prediction_id, deliveries=10)

    text = relay("replay", "--from", DEAD_LETTER, "--dry-run")
    again = relay("replay", "--from", DEAD_LETTER, "--dry-run", "--json")

    assert text.code == 0, text.err
    assert text.out.startswith(f"Dry run: 2 message(s) in {DEAD_LETTER} would be republished")
    for prediction_id in ids:
        assert prediction_id in text.out
        assert f"msg_{prediction_id}" in text.out
    assert "deliveries" in text.out
    listed = again.json()
    assert listed["pulled"] == 2
    assert listed["acknowledged"] == 0
    assert {m["prediction_id"] for m in listed["messages"]} == set(ids)
    assert {m[DELIVERY_COUNT] for m in listed["messages"]} == {"10"}
    assert all(read_job(db, prediction_id) is None for prediction_id in ids)


@pytest.mark.parametrize(
    ("subscription", "says"),
    [("job-status", "is not a dead-letter subscription"), ("no-such-thing", "is not a dead-letter subscription")],
)
def test_replay_from_anything_but_a_dead_letter_subscription_exits_2_with_one_sentence(
    relay: Callable[..., Run], subscription: str, says: str
) -> None:
    run = relay("replay", "--from", subscription)

    assert run.code == 2
    assert run.out == ""
    assert run.err.count("\n") == 1
    assert says in run.err
    assert "job-status-dead-letter, archive-outputs-dead-letter" in run.err


@pytest.fixture(scope="module")
def archived_job(stack: LocalStack, files: FileServer) -> Job:
    """A job that went through the receiver and both handlers: succeeded, one file archived."""
    db = firestore.Client(project=stack.config.project)
    prediction_id = unique_id()
    url = files.serve(f"/{prediction_id}/restored.png", Answer(body=b"\x89PNG restored", content_type="image/png"))
    with httpx.Client(timeout=15) as http:
        for body in prediction_lifecycle(prediction_id, output=[url]):
            webhook = sign_webhook(body, stack.config.webhook_secrets)
            assert http.post(stack.receiver_url, content=webhook.body, headers=webhook.headers).status_code == 200
            time.sleep(0.2)  # in order, so the events read as a lifecycle
    return wait_for_job(db, prediction_id, "succeeded")


def test_jobs_show_prints_the_job_its_gs_outputs_its_events_and_the_trace_hint(
    relay: Callable[..., Run], archived_job: Job
) -> None:
    run = relay("jobs", "show", archived_job.job_id)

    assert run.code == 0, run.err
    assert f"job              {archived_job.job_id}   (found by job id)" in run.out
    assert "state            succeeded   (Replicate: succeeded)" in run.out
    uri = archived_job.outputs[0]["gs_uri"]
    assert uri.startswith("gs://")
    assert uri in run.out
    for status in ("starting", "processing", "succeeded"):
        assert f"{status}" in run.out.split("events (last 20")[1]
    assert run.out.rstrip().endswith(
        f"trace: relay trace {archived_job.job_id}   (--html FILE for a page, --gcp for Cloud Trace)"
    )


def test_jobs_show_json_carries_the_job_document_and_events_oldest_first(
    relay: Callable[..., Run], archived_job: Job
) -> None:
    run = relay("jobs", "show", archived_job.job_id, "--json")

    assert run.code == 0, run.err
    shown = run.json()
    assert shown["job"]["job_id"] == archived_job.job_id
    assert shown["job"]["outputs"][0]["gs_uri"] == archived_job.outputs[0]["gs_uri"]
    assert [e["status"] for e in shown["events"]] == ["starting", "processing", "succeeded"]
    assert shown["trace"] == f"relay trace {archived_job.job_id}"


def test_a_finished_job_shows_its_predict_time_an_estimate_only_with_prices_and_is_counted_once(
    relay: Callable[..., Run], stack: LocalStack, db: firestore.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    prediction_id, model = unique_id(), f"usage/{unique_id()}"  # a model of its own: its own counter series
    with httpx.Client(timeout=15) as http:
        for body in prediction_lifecycle(prediction_id, model=model):
            webhook = sign_webhook(body, stack.config.webhook_secrets)
            assert http.post(stack.receiver_url, content=webhook.body, headers=webhook.headers).status_code == 200
    wait_for_job(db, prediction_id, "succeeded")

    plain = relay("jobs", "show", prediction_id)
    monkeypatch.setenv("RELAY_PRICE_TABLE", json.dumps({"models": {model: 0.0005}}))
    priced = relay("jobs", "show", prediction_id)
    priced_json = relay("jobs", "show", prediction_id, "--json")
    monkeypatch.setenv("RELAY_PRICE_TABLE", json.dumps({"models": {"no-slash": 0.0005}}))
    refused = relay("jobs", "show", prediction_id)

    assert plain.code == 0, plain.err
    assert "predict time     2.000 s" in plain.out
    assert "estimate" not in plain.out
    assert priced.code == 0, priced.err
    assert "cost estimate    $0.001   (estimate: predict time × $0.0005/s from RELAY_PRICE_TABLE)" in priced.out
    assert priced_json.json()["usage"]["estimate_usd"] == pytest.approx(0.001)
    assert refused.code == 2
    assert refused.err == "relay: RELAY_PRICE_TABLE: models entry 'no-slash' is not \"owner/name\"\n"
    # The job-status handler counted its GPU seconds once, when it announced the job.
    labels = {"model": model, "deployment": "none", "kind": "prediction", "state": "succeeded"}
    counted = wait_for(lambda: _counter_total(stack.metrics_file, "relay.job.predict_time", labels), what="the count")
    assert counted == 2.0


def _counter_total(path: Path, name: str, labels: dict[str, str]) -> float | None:
    """The latest cumulative value of a counter's series with exactly `labels`, summed over the
    processes that export to the stack's metrics file; None before any has."""
    latest: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        for resource in json.loads(line)["resourceMetrics"]:
            instance = next(
                a["value"]["stringValue"]
                for a in resource["resource"]["attributes"]
                if a["key"] == "service.instance.id"
            )
            for scope in resource["scopeMetrics"]:
                for metric in (m for m in scope["metrics"] if m["name"] == name):
                    for point in metric["sum"]["dataPoints"]:
                        found = {a["key"]: a["value"].get("stringValue") for a in point.get("attributes", [])}
                        if found == labels:
                            latest[instance] = float(point.get("asDouble", point.get("asInt", 0)))
    return sum(latest.values()) if latest else None


@pytest.fixture
def open_jobs(db: firestore.Client) -> Iterator[Callable[..., Job]]:
    """Makes `submitted` jobs written directly to Firestore, and deletes them (and their prediction
    links) afterwards: left behind, the reconciler tests of this session would find them."""
    made: list[Job] = []

    def make(job: Job, *, linked_to: str | None = None, written_ago: timedelta = timedelta(0)) -> Job:
        JobStore(db, clock=lambda: datetime.now(UTC) - written_ago).create_submitted(job)
        if linked_to:
            JobStore(db).attach_prediction(job.job_id, linked_to)
        made.append(job.model_copy(update={"prediction_id": linked_to or job.prediction_id}))
        return job

    yield make
    for job in made:
        _delete(db.collection(JOBS).document(job.job_id))
        if job.prediction_id:
            _delete(db.collection(PREDICTIONS).document(job.prediction_id))


def _delete(document: firestore.DocumentReference) -> None:
    """Delete, waiting out the emulator's lock on a document a handler's transaction still holds
    (it answers 'Transaction lock timeout' rather than queueing the write)."""
    for attempt in range(5):
        try:
            document.delete()
            return
        except google_exceptions.Aborted:
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))


def test_jobs_show_finds_a_submitted_job_by_its_prediction_id(
    relay: Callable[..., Run], open_jobs: Callable[..., Job]
) -> None:
    job_id, prediction_id = f"job-{unique_id()}", unique_id()
    open_jobs(Job(job_id=job_id, source="submit", metadata={"order": "A-1042"}), linked_to=prediction_id)

    run = relay("jobs", "show", prediction_id)

    assert run.code == 0, run.err
    assert f"job              {job_id}   (found by prediction id)" in run.out
    assert "order=A-1042" in run.out
    assert "none recorded" in run.out


def test_jobs_show_unknown_id_exits_2_with_one_sentence(relay: Callable[..., Run]) -> None:
    run = relay("jobs", "show", "no-such-job")

    assert run.code == 2
    assert run.err == "relay: no job or prediction no-such-job in project local-project\n"


def test_jobs_list_shows_the_known_job_in_text_and_json(relay: Callable[..., Run], archived_job: Job) -> None:
    text = relay("jobs", "list", "--since", "1h", "--limit", "500")
    listed = relay("jobs", "list", "--state", "succeeded", "--since", "1h", "--limit", "500", "--json")

    assert text.code == 0, text.err
    headers = ["job", "state", "replicate", "prediction", "model", "predict", "s", "updated"]
    assert text.out.splitlines()[0].split()[:8] == headers
    row = next(line for line in text.out.splitlines() if line.startswith(archived_job.job_id))
    assert row.split()[1:4] == ["succeeded", "succeeded", archived_job.prediction_id]
    assert row.split()[5] == "2.00"  # Replicate's metrics.predict_time
    assert "1 file(s)" in row
    assert listed.code == 0, listed.err
    jobs = {job["job_id"]: job for job in listed.json()}
    assert jobs[archived_job.job_id]["outputs"][0]["gs_uri"] == archived_job.outputs[0]["gs_uri"]
    assert {job["state"] for job in jobs.values()} == {"succeeded"}


def test_jobs_list_stuck_shows_open_jobs_quiet_for_longer_than_the_reconcilers_threshold(
    relay: Callable[..., Run], open_jobs: Callable[..., Job]
) -> None:
    quiet = open_jobs(Job(job_id=f"quiet-{unique_id()}"), written_ago=timedelta(hours=2)).job_id
    fresh = open_jobs(Job(job_id=f"fresh-{unique_id()}")).job_id

    stuck = {job["job_id"] for job in relay("jobs", "list", "--stuck", "--limit", "500", "--json").json()}
    recent = {job["job_id"] for job in relay("jobs", "list", "--state", "submitted", "--since", "10m", "--json").json()}

    assert quiet in stuck
    assert fresh not in stuck
    assert fresh in recent
    assert quiet not in recent


def test_jobs_list_rejects_a_stuck_final_state_and_a_malformed_since(relay: Callable[..., Run]) -> None:
    final = relay("jobs", "list", "--stuck", "--state", "succeeded")
    malformed = relay("jobs", "list", "--since", "yesterday")

    assert (final.code, malformed.code) == (2, 2)
    assert "a succeeded job is final, so never stuck" in final.err
    assert "--since takes a duration such as 2h" in malformed.err


def test_reprocess_publishes_what_replicate_knows_and_the_handlers_apply_it(
    relay: Callable[..., Run], replicate_api: ReplicateAPI, db: firestore.Client
) -> None:
    # The webhook goes nowhere, so only the reprocessed event can create the job.
    prediction_id = replicate_api.create_prediction(
        ModelRef.parse("flux-kontext-apps/restore-image"),
        {"input_image": "https://example.com/old.jpg", "sim_duration": 0.2, "sim_files": 1},
        webhook=f"http://127.0.0.1:{free_port()}/",
        events_filter=["completed"],
    )
    wait_for(lambda: json.loads(replicate_api.get_prediction(prediction_id))["status"] == "succeeded", what="done")

    run = relay("reprocess", prediction_id, "--json")

    assert run.code == 0, run.err
    result = run.json()
    assert result["prediction_id"] == prediction_id
    assert result["status"] == "succeeded"
    assert result["message_id"]
    assert result["webhook_id"].startswith(f"reprocess:{prediction_id}:succeeded:")
    job = wait_for_job(db, prediction_id, "succeeded")
    assert job.outputs[0]["gs_uri"].startswith("gs://")
    # archive-outputs may finish the job before job-status records the event: wait for the record.
    events = wait_for(lambda: _events(db, prediction_id), what="job-status to record the event")
    assert [(e["source"], e["webhook_id"]) for e in events] == [("reconciler", result["webhook_id"])]


def test_reprocess_sends_a_body_too_large_for_a_message_through_the_bucket(
    stack: LocalStack, replicate_api: ReplicateAPI, db: firestore.Client, bucket: storage.Bucket
) -> None:
    """As the receiver and the reconciler do: the body is stored, the message carries a pointer, and
    the handlers read it back (here with an inline limit of 100 bytes, so any body goes that way)."""
    prediction_id = replicate_api.create_prediction(
        ModelRef.parse("flux-kontext-apps/restore-image"),
        {"input_image": "https://example.com/old.jpg", "sim_duration": 0.2},
        webhook=f"http://127.0.0.1:{free_port()}/",
        events_filter=["completed"],
    )
    wait_for(lambda: json.loads(replicate_api.get_prediction(prediction_id))["status"] == "succeeded", what="done")
    topic = pubsub_v1.PublisherClient.topic_path(stack.config.project, "replicate-events")
    publisher = TopicPublisher(topic, deadline_seconds=10)

    result = reprocess(
        replicate_api, publisher, prediction_id, now=datetime.now(UTC), bodies=BodyStore(bucket, inline_bytes=100)
    )

    assert result.message_id
    assert list(bucket.list_blobs(prefix=f"bodies/{prediction_id}/")), "the body was not stored"
    assert wait_for_job(db, prediction_id, "succeeded").replicate_status == "succeeded"


def test_reprocess_reads_a_training_at_its_own_endpoint(
    relay: Callable[..., Run], replicate_api: ReplicateAPI, db: firestore.Client
) -> None:
    """A training's id is unknown to GET /v1/predictions: reprocess asks GET /v1/trainings/{id}."""
    training_id = replicate_api.create_training(
        ModelRef.parse(f"ostris/flux-dev-lora-trainer:{'a' * 64}"),
        destination="acme/flux-my-style",
        input={"input_images": "https://example.com/photos.zip", "sim_duration": 0.2},
        webhook=f"http://127.0.0.1:{free_port()}/",
        events_filter=["completed"],
    )
    wait_for(lambda: json.loads(replicate_api.get_training(training_id))["status"] == "succeeded", what="done")

    run = relay("reprocess", training_id, "--json")

    assert run.code == 0, run.err
    job = wait_for_job(db, training_id, "succeeded")
    assert (job.kind, job.trained_version) == (
        "training",
        json.loads(replicate_api.get_training(training_id))["output"]["version"],
    )


def test_reprocess_takes_a_job_id_for_its_prediction_and_refuses_a_job_without_one(
    relay: Callable[..., Run], replicate_api: ReplicateAPI, open_jobs: Callable[..., Job]
) -> None:
    prediction_id = replicate_api.create_prediction(
        ModelRef.parse("flux-kontext-apps/restore-image"),
        {"input_image": "https://example.com/old.jpg", "sim_duration": 0.1},
        webhook=f"http://127.0.0.1:{free_port()}/",
        events_filter=["completed"],
    )
    linked = open_jobs(Job(job_id=f"job-{unique_id()}", prediction_id=prediction_id)).job_id
    unlinked = open_jobs(Job(job_id=f"job-{unique_id()}")).job_id

    by_job = relay("reprocess", linked, "--json")
    without = relay("reprocess", unlinked)

    assert by_job.code == 0, by_job.err
    assert (by_job.json()["job_id"], by_job.json()["prediction_id"]) == (linked, prediction_id)
    assert without.code == 2
    assert without.err == (f"relay: job {unlinked} has no prediction yet, so there is nothing to ask Replicate about\n")


def test_reprocess_without_a_token_names_the_variable_and_an_unknown_prediction_exits_2(
    relay: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    unknown = relay("reprocess", "nosuchprediction")
    monkeypatch.delenv("REPLICATE_API_TOKEN")
    no_token = relay("reprocess", "nosuchprediction")

    assert unknown.code == 2
    assert unknown.err == "relay: Replicate has no prediction or training nosuchprediction\n"
    assert no_token.code == 2
    assert no_token.err == "relay: REPLICATE_API_TOKEN is required but not set\n"


def test_status_json_counts_dead_letters_without_acknowledging_them_and_jobs_by_state(
    relay: Callable[..., Run],
    dead_letters: Callable[..., str],
    db: firestore.Client,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("RELAY_METRICS_FILE", str(tmp_path / "absent.jsonl"))
    dead_letters(unique_id())
    dead_letters(unique_id())

    first = relay("status", "--json")
    second = relay("status", "--json")

    assert first.code == 0, first.err
    status = first.json()
    subscriptions = {s["name"]: s for s in status["subscriptions"] if s["kind"] != "push"}
    assert subscriptions[DEAD_LETTER]["backlog"] == 2
    assert subscriptions[DEAD_LETTER]["oldest_age_seconds"] >= 0
    assert subscriptions["archive-outputs-dead-letter"]["backlog"] == 0
    push = [s for s in status["subscriptions"] if s["kind"] == "push"]
    assert {s["name"] for s in push} == {"job-status", "archive-outputs"}
    assert all(s["backlog"] is None and s["note"] == "n/a locally (Cloud Monitoring in production)" for s in push)
    assert {s["name"]: s["backlog"] for s in second.json()["subscriptions"]}[DEAD_LETTER] == 2
    assert set(status["jobs_by_state"]) == {state.value for state in JobState}
    assert status["last_event_at"] is not None
    assert status["verification_failures"].startswith("n/a: no local metrics file (dev stack not running?)")
    assert status["verification_failures_by_reason"] is None

    def counted_by_reading_every_job() -> dict[str, int]:
        counts = dict.fromkeys(status["jobs_by_state"], 0)
        for snapshot in db.collection(JOBS).stream():
            counts[(snapshot.to_dict() or {})["state"]] += 1
        return counts

    wait_for(
        lambda: relay("status", "--json").json()["jobs_by_state"] == counted_by_reading_every_job(),
        what="status counts to match a full read of jobs",
    )


def test_status_watch_redraws_the_screen_each_interval(
    relay: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RELAY_METRICS_FILE", str(tmp_path / "absent.jsonl"))
    run = relay("status", "--watch", "0.2", "--iterations", "2")

    assert run.code == 0, run.err
    assert run.out.count("Relay status: project local-project") == 2
    assert "n/a locally (Cloud Monitoring in production)" in run.out
    assert "verification failures  n/a: no local metrics file (dev stack not running?)" in run.out


@pytest.mark.parametrize(
    ("argv", "variable"),
    [
        (["status"], "PUBSUB_EMULATOR_HOST"),
        (["replay", "--from", DEAD_LETTER], "PUBSUB_EMULATOR_HOST"),
        (["jobs", "list"], "FIRESTORE_EMULATOR_HOST"),
        (["jobs", "show", "anything"], "FIRESTORE_EMULATOR_HOST"),
    ],
)
def test_an_emulator_that_is_not_running_is_one_sentence_naming_its_host_and_exit_2(
    relay: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, argv: list[str], variable: str
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv(variable, closed)
    started = time.monotonic()

    run = relay(*argv, "--timeout", "1")

    assert run.code == 2
    assert time.monotonic() - started < 10
    assert run.err.count("\n") == 1
    assert f"at {closed} ({variable})" in run.err
