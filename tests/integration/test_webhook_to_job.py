"""A signed webhook goes receiver → Pub/Sub → push subscription → job-status → Firestore, for real."""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from google.cloud import firestore, pubsub_v1

from replicate_relay.devstack.stack import LocalStack
from replicate_relay.jobstore import EVENTS, JOBS
from replicate_relay.testing import SignedWebhook, prediction_lifecycle
from tests.integration.conftest import read_job, unique_id, wait_for, wait_for_job, wait_for_status

Post = Callable[[SignedWebhook], httpx.Response]
Sign = Callable[..., SignedWebhook]


def test_signed_lifecycle_reaches_succeeded_through_the_push_subscription(
    post: Post, sign: Sign, db: firestore.Client
) -> None:
    prediction_id = unique_id()
    for body in prediction_lifecycle(prediction_id, output=["Restored", " photo"]):
        response = post(sign(body))
        assert response.status_code == 200, response.text
        wait_for_status(db, prediction_id, body["status"])

    job = wait_for_job(db, prediction_id, "succeeded")
    assert job.output_value == "Restored photo"
    assert job.source == "webhook"
    assert job.completed_at is not None
    mapping = db.collection("predictions").document(prediction_id).get()
    assert mapping.get("job_id") == prediction_id


def test_shuffled_and_duplicated_deliveries_end_in_the_same_document(
    post: Post, sign: Sign, db: firestore.Client
) -> None:
    base = int(time.time()) - 30
    started = datetime.fromtimestamp(base, UTC)
    documents = []
    for shuffle in (False, True):
        prediction_id = unique_id()
        webhooks = [
            sign(body, timestamp=base + offset)
            for offset, body in enumerate(prediction_lifecycle(prediction_id, progress_events=3, started=started))
        ]
        deliveries = list(webhooks)
        if shuffle:
            rng = random.Random(7)
            deliveries += rng.sample(webhooks, 3)  # Replicate and Pub/Sub both redeliver
            rng.shuffle(deliveries)
        for webhook in deliveries:
            assert post(webhook).status_code == 200
        job = wait_for_job(db, prediction_id, "succeeded")
        distinct = len(webhooks)
        events = wait_for(
            lambda pid=prediction_id, count=distinct: _events_recorded(db, pid, count),
            what="every distinct webhook to be recorded once",
        )
        assert sorted(e["webhook_id"] for e in events) == sorted(w.webhook_id for w in webhooks)
        documents.append(_comparable(job.model_dump(), prediction_id))
    assert documents[0] == documents[1]


def test_progress_events_are_coalesced_but_the_final_event_is_not(post: Post, sign: Sign, db: firestore.Client) -> None:
    # The test stack coalesces same-state writes within 5 s (RELAY_COALESCE_SECONDS).
    prediction_id = unique_id()
    bodies = prediction_lifecycle(prediction_id, progress_events=4)
    for body in bodies[:2]:
        assert post(sign(body)).status_code == 200
        wait_for_status(db, prediction_id, body["status"])
    for body in bodies[2:]:
        assert post(sign(body)).status_code == 200
    job = wait_for_job(db, prediction_id, "succeeded")
    assert job.logs_tail == bodies[-1]["logs"]
    events = wait_for(lambda: _events_recorded(db, prediction_id, len(bodies)), what="all events recorded")
    outcomes = {e["status"]: [] for e in events}
    for recorded in events:
        outcomes[recorded["status"]].append(recorded["outcome"])
    assert outcomes["processing"].count("coalesced") >= 1
    assert outcomes["succeeded"] == ["applied"]


def test_unsigned_and_malformed_requests_are_refused_and_never_published(
    stack: LocalStack, http: httpx.Client, sign: Sign, tap: Callable[[], list[Any]]
) -> None:
    body = prediction_lifecycle(unique_id())[0]
    good = sign(body)
    forged = {**good.headers, "webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}
    cases = [
        (forged, good.body, 401),
        ({k: v for k, v in good.headers.items() if k != "webhook-id"}, good.body, 400),
        ({**good.headers, "content-type": "text/plain"}, good.body, 415),
        (sign({}, body=b"{not json").headers, b"{not json", 400),
        (sign({}, body=b'{"id": "x"}').headers, b'{"id": "x"}', 400),
        (sign({}, body=b"\xff\xfe").headers, b"\xff\xfe", 400),
    ]
    for headers, content, expected in cases:
        response = http.post(stack.receiver_url, content=content, headers=headers)
        assert response.status_code == expected, (headers, content, response.text)
        assert response.json()["error"]
    assert http.post(stack.receiver_url, content=good.body, headers=good.headers).status_code == 200

    published = wait_for(tap, what="the one valid webhook on the topic")
    time.sleep(1)
    published += tap()
    assert [m.message.attributes["webhook_id"] for m in published] == [good.webhook_id]
    message = published[0].message
    assert message.data == good.body  # the exact verified bytes
    attributes = dict(message.attributes)
    # The receiver's publish span, as W3C trace context: the handlers continue its trace.
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[0-3]", attributes.pop("traceparent"))
    assert attributes == {
        "prediction_id": body["id"],
        "status": "starting",
        "webhook_id": good.webhook_id,
        "webhook_timestamp": str(good.timestamp),
        "source": "webhook",
    }


def test_undecodable_message_is_logged_and_acknowledged(stack: LocalStack, db: firestore.Client) -> None:
    publisher = pubsub_v1.PublisherClient()
    topic = f"projects/{stack.config.project}/topics/replicate-events"
    message_id = publisher.publish(topic, b"\x00 not a prediction", prediction_id="nope", status="x").result(10)
    log_path = stack.functions["job-status"].log_path

    def dropped() -> dict[str, Any] | None:
        for line in log_path.read_text().splitlines():
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("message_id") == message_id and entry.get("outcome") == "permanent_failure":
                return entry
        return None

    entry = wait_for(dropped, what="the handler's ERROR line for the bad message")
    assert entry["severity"] == "ERROR"
    assert read_job(db, "nope") is None


def _events_recorded(db: firestore.Client, job_id: str, expected: int) -> list[dict[str, Any]] | None:
    events = [s.to_dict() for s in db.collection(JOBS).document(job_id).collection(EVENTS).stream()]
    return events if len(events) >= expected else None


def _comparable(document: dict[str, Any], prediction_id: str) -> dict[str, Any]:
    document = {
        k: v
        for k, v in document.items()
        if k not in {"job_id", "prediction_id", "updated_at", "announced_at", "announce_claimed_at"}
    }
    return json.loads(json.dumps(document, default=str).replace(prediction_id, "ID"))
