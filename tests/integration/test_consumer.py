"""JobEventsConsumer on the Pub/Sub emulator: typed events, acked after the callback, duplicates dropped."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import google.cloud.pubsub_v1 as pubsub_v1
import pytest
from google.api_core import exceptions as google_exceptions
from google.cloud import firestore

from replicate_relay.consumer import JobEventsConsumer
from replicate_relay.devstack.stack import LocalStack
from replicate_relay.jobevents import JobEvent, job_event
from replicate_relay.jobs import Job, JobState
from replicate_relay.jobstore import JobStore
from replicate_relay.replicate_api import ModelRef, ReplicateAPI
from replicate_relay.submit import Submitter
from tests.integration.conftest import WAIT_SECONDS

FAST = {"input_image": "https://example.com/old.jpg", "seed": 1, "sim_duration": 0.5}


class Subscription:
    """A pull subscription made for one test, on a topic of its own unless one is given."""

    def __init__(self, project: str, topic: str | None = None) -> None:
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        suffix = uuid.uuid4().hex[:8]
        self.own_topic = topic is None
        self.topic = self.publisher.topic_path(project, topic or f"job-events-{suffix}")
        if self.own_topic:
            self.publisher.create_topic(request={"name": self.topic})
        self.path = self.subscriber.subscription_path(project, f"app-{suffix}")
        self.subscriber.create_subscription(
            request={"name": self.path, "topic": self.topic, "ack_deadline_seconds": 10}
        )

    def publish(self, job: Job) -> None:
        """Announce `job` exactly as Relay's handlers do (replicate_relay.jobevents.job_event)."""
        data, attributes = job_event(job)
        self.publisher.publish(self.topic, data, **attributes).result(timeout=10)

    def delete(self) -> None:
        with contextlib.suppress(google_exceptions.NotFound):
            self.subscriber.delete_subscription(request={"subscription": self.path})
            if self.own_topic:
                self.publisher.delete_topic(request={"topic": self.topic})
        self.subscriber.close()


@pytest.fixture
def subscription(stack: LocalStack) -> Iterator[Subscription]:
    made = Subscription(stack.config.project)
    yield made
    made.delete()


def final_job(state: JobState = JobState.SUCCEEDED) -> Job:
    job_id = f"app{uuid.uuid4().hex[:12]}"
    return Job(
        job_id=job_id,
        prediction_id=f"p{job_id}",
        source="submit",
        model="flux-kontext-apps/restore-image",
        state=state,
        outputs=[
            {"index": 0, "gs_uri": f"gs://b/predictions/p{job_id}/0-out.png", "content_type": "image/png"}
            | {"size": 3, "crc32c": "AAAAAA=="}
        ],
        metadata={"order": "A-1"},
        completed_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def test_a_finished_jobs_announcement_reaches_the_callback_typed_and_is_acknowledged(
    stack: LocalStack, db: firestore.Client
) -> None:
    relay_events = Subscription(stack.config.project, topic="job-events")  # Relay's own topic
    api = ReplicateAPI.connect(stack.client_env["REPLICATE_API_TOKEN"], base_url=stack.simulator_url)
    try:
        submitter = Submitter(store=JobStore(db), replicate=api, webhook_url=stack.receiver_url + "/")
        job = submitter.submit(
            ModelRef.parse("flux-kontext-apps/restore-image"), {**FAST, "sim_files": 1}, metadata={"order": "C-7"}
        )
        received: list[JobEvent] = []
        arrived = threading.Event()

        def on_event(event: JobEvent) -> None:
            if event.job_id == job.job_id:  # other tests' jobs may still be announcing
                received.append(event)
                arrived.set()

        with JobEventsConsumer(relay_events.path, on_event) as consumer:
            consumer.start()
            assert arrived.wait(WAIT_SECONDS), "no announcement for the job"
        [event] = received
        assert isinstance(event, JobEvent)
        assert (event.event_id, event.type, event.state) == (f"{job.job_id}:succeeded", "job.succeeded", "succeeded")
        assert (event.prediction_id, event.metadata) == (job.prediction_id, {"order": "C-7"})
        assert event.outputs[0].gs_uri.startswith("gs://")
        assert consumer.stats.handled >= 1

        # Acknowledged: nothing of it comes back to a consumer reading the same subscription afterwards.
        again: list[JobEvent] = []
        JobEventsConsumer(relay_events.path, lambda e: e.job_id == job.job_id and again.append(e)).run(timeout=3)
        assert again == []
    finally:
        api.close()
        relay_events.delete()


def test_an_event_whose_callback_raises_is_nacked_and_delivered_again(
    subscription: Subscription, caplog: pytest.LogCaptureFixture
) -> None:
    job = final_job(JobState.FAILED)
    subscription.publish(job)
    calls: list[str] = []

    def flaky(event: JobEvent) -> None:
        calls.append(event.event_id)
        if len(calls) == 1:
            raise RuntimeError("the app's database is down")

    stats = JobEventsConsumer(subscription.path, flaky).run(max_messages=1, timeout=WAIT_SECONDS)
    assert calls == [f"{job.job_id}:failed"] * 2
    assert (stats.failed, stats.handled, stats.duplicates) == (1, 1, 0)
    assert "nacked for redelivery" in caplog.text
    assert "the app's database is down" in caplog.text


def test_an_event_announced_twice_reaches_the_callback_once(subscription: Subscription) -> None:
    job = final_job()
    subscription.publish(job)
    subscription.publish(job)  # a second message, same event_id: a crash between publishing and recording
    calls: list[JobEvent] = []

    stats = JobEventsConsumer(subscription.path, calls.append).run(max_messages=2, timeout=WAIT_SECONDS)
    assert [event.event_id for event in calls] == [f"{job.job_id}:succeeded"]
    assert (stats.handled, stats.duplicates) == (1, 1)


def test_run_returns_at_its_timeout_when_nothing_arrives(subscription: Subscription) -> None:
    started = time.monotonic()
    stats = JobEventsConsumer(subscription.path, lambda _: None).run(max_messages=1, timeout=1.0)
    assert stats.acknowledged == 0
    assert time.monotonic() - started < 10


def test_run_raises_when_the_subscription_does_not_exist(stack: LocalStack) -> None:
    missing = pubsub_v1.SubscriberClient.subscription_path(stack.config.project, f"missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(google_exceptions.NotFound):
        JobEventsConsumer(missing, lambda _: None).run(timeout=WAIT_SECONDS)
