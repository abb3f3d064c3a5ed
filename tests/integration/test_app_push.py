"""job-events pushed to an app's URL, as `relay dev --app-endpoint` sets it up: a job run
through the real stack reaches a local HTTP endpoint in Pub/Sub's push envelope; an answer of 500
makes Pub/Sub deliver it again after the subscription's backoff, and 204 ends it."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from google.api_core import exceptions as google_exceptions
from google.cloud import pubsub_v1

from replicate_relay.devstack.stack import LocalStack
from replicate_relay.testing import SignedWebhook, prediction_lifecycle
from tests.integration.conftest import unique_id, wait_for

Post = Callable[[SignedWebhook], httpx.Response]
Sign = Callable[..., SignedWebhook]
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
# Short, so the tests are quick, and long enough to tell the policy's pause from the emulator's
# own first redelivery, which comes about 1 s after a failure whatever the policy says.
MINIMUM_BACKOFF_SECONDS = 3
MAXIMUM_BACKOFF_SECONDS = 4
MAX_DELIVERY_ATTEMPTS = 5  # Pub/Sub's least


@dataclass(frozen=True)
class Delivery:
    at: float  # time.monotonic() when the request arrived
    envelope: dict[str, Any]
    authorization: str | None


class AppEndpoint:
    """A tiny app on loopback: records every push, and answers 500 to the first `failures`
    deliveries of each message of `failing_job` (the app could not make its work durable yet),
    204 otherwise."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.failing_job: str | None = None
        self.failures = 1
        self._failed: dict[str, int] = {}
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                envelope = json.loads(body)
                self.send_response(endpoint.record(envelope, self.headers.get("Authorization")))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: the test reports what matters

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/job-events"
        self._thread = threading.Thread(target=self._server.serve_forever, name="app-endpoint", daemon=True)
        self._thread.start()

    def record(self, envelope: dict[str, Any], authorization: str | None) -> int:
        with self._lock:
            self.deliveries.append(Delivery(time.monotonic(), envelope, authorization))
            message = envelope["message"]
            if message.get("attributes", {}).get("job_id") != self.failing_job:
                return 204
            failed = self._failed.get(message["messageId"], 0)
            if failed >= self.failures:
                return 204
            self._failed[message["messageId"]] = failed + 1
            return 500

    def of_job(self, job_id: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.envelope["message"].get("attributes", {}).get("job_id") == job_id]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def app(stack: LocalStack) -> Iterator[tuple[AppEndpoint, str]]:
    """The app, registered as an app endpoint of the stack; its subscription and dead letter are
    deleted afterwards so later tests' job-events are not pushed to a closed port."""
    endpoint = AppEndpoint()
    name = f"app-push-{uuid.uuid4().hex[:8]}"
    actions = stack.add_app_endpoint(
        name,
        endpoint.url,
        minimum_backoff_seconds=MINIMUM_BACKOFF_SECONDS,
        maximum_backoff_seconds=MAXIMUM_BACKOFF_SECONDS,
        max_delivery_attempts=MAX_DELIVERY_ATTEMPTS,
    )
    assert any(f"subscriptions/{name} → {endpoint.url}" in line for line in actions), actions
    try:
        yield endpoint, name
    finally:
        project = stack.config.project
        subscriber = pubsub_v1.SubscriberClient()
        publisher = pubsub_v1.PublisherClient()
        with contextlib.suppress(google_exceptions.NotFound):
            subscriber.delete_subscription(request={"subscription": subscriber.subscription_path(project, name)})
        for path in [subscriber.subscription_path(project, f"{name}-dead-letter")]:
            with contextlib.suppress(google_exceptions.NotFound):
                subscriber.delete_subscription(request={"subscription": path})
        with contextlib.suppress(google_exceptions.NotFound):
            publisher.delete_topic(request={"topic": publisher.topic_path(project, f"{name}-dead-letter")})
        subscriber.close()
        endpoint.close()


def _validator(file_name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / file_name).read_text(encoding="utf-8")))


def _run_job(post: Post, sign: Sign, job_id: str) -> None:
    for body in prediction_lifecycle(job_id, output="Restored photo ready."):
        assert post(sign(body)).status_code == 200


def test_a_finished_job_is_pushed_to_the_app_and_a_500_is_delivered_again_until_a_204_ends_it(
    stack: LocalStack, app: tuple[AppEndpoint, str], post: Post, sign: Sign
) -> None:
    endpoint, name = app
    job_id = unique_id()  # a webhook-created job takes the prediction's id
    endpoint.failing_job = job_id
    _run_job(post, sign, job_id)

    first, second = wait_for(
        lambda: endpoint.of_job(job_id)[:2] if len(endpoint.of_job(job_id)) >= 2 else None,
        what="the job-events push and its redelivery after a 500",
    )
    assert second.envelope["message"]["messageId"] == first.envelope["message"]["messageId"]
    assert second.at > first.at + 0.5  # a pause, not an immediate retry

    # The push envelope, as the app reads it.
    envelope = first.envelope
    assert envelope["subscription"] == f"projects/{stack.config.project}/subscriptions/{name}"
    message = envelope["message"]
    assert message["messageId"]
    assert message["publishTime"]
    data = json.loads(base64.b64decode(message["data"]))
    _validator("job-event.v1.schema.json").validate(data)
    _validator("job-event-attributes.v1.schema.json").validate(message["attributes"])
    assert (data["job_id"], data["state"], data["type"]) == (job_id, "succeeded", "job.succeeded")
    assert data["output_value"] == "Restored photo ready."
    assert message["attributes"]["event_id"] == data["event_id"] == f"{job_id}:succeeded"
    # The emulator signs nothing (docs/EMULATORS.md); in Google Cloud every push carries the
    # OIDC token of relay-app-push, which the app verifies (docs/APP.md).
    assert first.authorization is None

    # 204 acknowledged it: nothing more comes, not even after the longest backoff has passed.
    time.sleep(2 * MAXIMUM_BACKOFF_SECONDS)
    assert len(endpoint.of_job(job_id)) == 2, [d.at - first.at for d in endpoint.of_job(job_id)]


def test_an_app_that_never_answers_2xx_is_retried_at_the_policys_pace_then_the_event_is_dead_lettered(
    stack: LocalStack, app: tuple[AppEndpoint, str], post: Post, sign: Sign
) -> None:
    endpoint, name = app
    job_id = unique_id()
    endpoint.failing_job = job_id
    endpoint.failures = MAX_DELIVERY_ATTEMPTS + 1  # never accepted
    _run_job(post, sign, job_id)

    deliveries = wait_for(
        lambda: endpoint.of_job(job_id) if len(endpoint.of_job(job_id)) >= MAX_DELIVERY_ATTEMPTS else None,
        what=f"{MAX_DELIVERY_ATTEMPTS} deliveries of the event",
    )
    pauses = [later.at - earlier.at for earlier, later in itertools.pairwise(deliveries)]
    # The emulator redelivers the first time after about 1 s whatever the policy; from the second
    # redelivery on it waits the policy's backoff, growing up to its maximum (docs/EMULATORS.md).
    assert all(pause >= MINIMUM_BACKOFF_SECONDS - 0.5 for pause in pauses[1:]), pauses

    subscriber = pubsub_v1.SubscriberClient()
    dead_letter = subscriber.subscription_path(stack.config.project, f"{name}-dead-letter")

    def dead_lettered() -> list[Any]:
        response = subscriber.pull(request={"subscription": dead_letter, "max_messages": 10}, timeout=10)
        return [m for m in response.received_messages if m.message.attributes.get("job_id") == job_id]

    try:
        [kept] = wait_for(dead_lettered, what="the event on the app's dead-letter subscription")
    finally:
        subscriber.close()
    assert json.loads(kept.message.data)["event_id"] == f"{job_id}:succeeded"
    time.sleep(MAXIMUM_BACKOFF_SECONDS + 1)
    assert len(endpoint.of_job(job_id)) == MAX_DELIVERY_ATTEMPTS, "delivered again after dead-lettering"
