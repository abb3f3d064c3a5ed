"""Session fixtures: the real emulators and functions, started once and always stopped."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from google.api_core import exceptions as google_exceptions
from google.cloud import firestore, pubsub_v1, storage

from replicate_relay.devstack.stack import LocalStack, StackConfig, running
from replicate_relay.jobs import Job
from replicate_relay.jobstore import JOBS
from replicate_relay.replicate_api import ReplicateAPI
from replicate_relay.testing import SignedWebhook, sign_webhook
from tests.integration import fileserver
from tests.integration.fileserver import FileServer

T = TypeVar("T")
# What the `post`, `sign` and `deliver` fixtures give a test.
Post = Callable[[SignedWebhook], httpx.Response]
Sign = Callable[..., SignedWebhook]
Deliver = Callable[[dict[str, Any]], SignedWebhook]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


DOWNLOAD_CAP = 2 * 1024 * 1024
INLINE_VALUE_BYTES = 4096  # small, so that tests reach the bucket with values of a few KiB


@pytest.fixture(scope="session")
def files() -> Iterator[FileServer]:
    """The stand-in for replicate.delivery, allowed as a local plain-HTTP host for the handlers."""
    yield from fileserver.running()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, files: FileServer) -> Iterator[LocalStack]:
    config = StackConfig.on_free_ports(
        reconcile_every=0,  # tests run the reconciler themselves
        log_dir=tmp_path_factory.mktemp("stack-logs"),
        telemetry_dir=tmp_path_factory.mktemp("stack-telemetry"),
        # Short enough that a test of Pub/Sub being down is quick; long enough for a busy CI box.
        extra_env={
            "RELAY_PUBLISH_DEADLINE_SECONDS": "3",
            "RELAY_COALESCE_SECONDS": "5",
            # "localhost" is allowed by name but is not a local host: it must be refused for
            # resolving to a loopback address.
            "RELAY_DOWNLOAD_ALLOWED_HOSTS": "replicate.delivery localhost",
            "RELAY_DOWNLOAD_LOCAL_HOSTS": files.host,
            "RELAY_DOWNLOAD_MAX_BYTES": str(DOWNLOAD_CAP),
            "RELAY_INLINE_VALUE_BYTES": str(INLINE_VALUE_BYTES),
            "RELAY_RECONCILE_QUIET_SECONDS": "3",
            "RELAY_RECONCILE_SUBMITTED_SECONDS": "3",
        },
    )
    with serving(config) as local:
        yield local


@contextlib.contextmanager
def serving(config: StackConfig) -> Iterator[LocalStack]:
    """The stack of `config`, started, with its clients' environment set (how Google's clients in the
    tests find the emulators); every process stopped at the end. The fault suite's stacks too."""
    with running(config) as local, pytest.MonkeyPatch.context() as patch:
        for name, value in local.client_env.items():
            patch.setenv(name, value)
        yield local


@pytest.fixture
def simulator(stack: LocalStack) -> Iterator[httpx.Client]:
    """The simulator's control API; its switches are put back after each test."""
    with httpx.Client(base_url=stack.simulator_url, timeout=10) as client:
        defaults = client.get("/_sim/config").json()
        yield client
        client.post("/_sim/config", json=defaults)


@pytest.fixture
def replicate_api(stack: LocalStack) -> Iterator[ReplicateAPI]:
    """Replicate's API as Relay's adapter speaks it, pointed at the simulator."""
    api = ReplicateAPI.connect(stack.client_env["REPLICATE_API_TOKEN"], base_url=stack.simulator_url)
    yield api
    api.close()


@pytest.fixture(scope="session")
def db(stack: LocalStack) -> firestore.Client:
    return firestore.Client(project=stack.config.project)


@pytest.fixture(scope="session")
def bucket(stack: LocalStack) -> storage.Bucket:
    """The stack's archive bucket."""
    return storage.Client(project=stack.config.project).bucket(stack.topology.bucket.name(stack.config.project))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15) as client:
        yield client


@pytest.fixture
def post(stack: LocalStack, http: httpx.Client) -> Post:
    def send(webhook: SignedWebhook) -> httpx.Response:
        return http.post(stack.receiver_url, content=webhook.body, headers=webhook.headers)

    return send


@pytest.fixture
def sign(stack: LocalStack) -> Sign:
    def signer(prediction: dict[str, Any], **options: Any) -> SignedWebhook:
        return sign_webhook(prediction, stack.config.webhook_secrets, **options)

    return signer


@pytest.fixture
def deliver(sign: Sign, post: Post) -> Deliver:
    """Sign a prediction as Replicate does and post it to the receiver, which must answer 200."""

    def send(prediction: dict[str, Any]) -> SignedWebhook:
        webhook = sign(prediction)
        response = post(webhook)
        assert response.status_code == 200, response.text
        return webhook

    return send


class Tap:
    """A pull subscription made for one test. Calling it pulls (and acknowledges) what has arrived
    since; `received` keeps everything pulled so far, whoever asked."""

    def __init__(self, subscriber: pubsub_v1.SubscriberClient, path: str, topic: str) -> None:
        self._subscriber = subscriber
        self._path = path
        self._topic = topic
        self.received: list[pubsub_v1.types.ReceivedMessage] = []
        self.subscribe()

    def subscribe(self) -> None:
        """Make the subscription (again, after a Pub/Sub emulator restart forgot it)."""
        self._subscriber.create_subscription(request={"name": self._path, "topic": self._topic})

    def __call__(self) -> list[pubsub_v1.types.ReceivedMessage]:
        response = self._subscriber.pull(request={"subscription": self._path, "max_messages": 100}, timeout=10)
        messages = list(response.received_messages)
        if messages:
            self._subscriber.acknowledge(request={"subscription": self._path, "ack_ids": [m.ack_id for m in messages]})
        self.received.extend(messages)
        return messages


@pytest.fixture
def tap(stack: LocalStack) -> Iterator[Tap]:
    """What the receiver published on replicate-events during one test."""
    yield from _tap(stack, "replicate-events")


@pytest.fixture
def job_events(stack: LocalStack) -> Iterator[Tap]:
    """What the handlers announced on job-events during one test."""
    yield from _tap(stack, "job-events")


def _tap(stack: LocalStack, topic: str) -> Iterator[Tap]:
    subscriber = pubsub_v1.SubscriberClient()
    project = stack.config.project
    path = subscriber.subscription_path(project, f"tap-{uuid.uuid4().hex[:8]}")
    yield Tap(subscriber, path, f"projects/{project}/topics/{topic}")
    with contextlib.suppress(google_exceptions.NotFound):
        subscriber.delete_subscription(request={"subscription": path})
    subscriber.close()


def announcements(job_events: Tap, job_id: str, *, settle: float = 2.0) -> list[dict[str, Any]]:
    """Every job-events message for `job_id`, waiting `settle` seconds after the first for duplicates."""

    def mine() -> list[dict[str, Any]]:
        job_events()
        return [json.loads(m.message.data) for m in job_events.received if m.message.attributes.get("job_id") == job_id]

    wait_for(mine, what=f"an announcement for {job_id}")
    time.sleep(settle)
    return mine()


def unique_id() -> str:
    return f"p{uuid.uuid4().hex[:16]}"


# Bounds for waiting on the pipeline, not figures it must meet: on a loaded machine the Pub/Sub
# emulator can hold a subscription's pushes for 20 s and more after failures earlier in the session.
WAIT_SECONDS = 60.0


def wait_for(check: Callable[[], T | None], *, timeout: float = WAIT_SECONDS, what: str = "condition") -> T:
    """Poll `check` until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def read_job(db: firestore.Client, job_id: str) -> Job | None:
    snapshot = db.collection(JOBS).document(job_id).get()
    return Job.from_document(snapshot.to_dict() or {}) if snapshot.exists else None


def wait_for_job(db: firestore.Client, job_id: str, state: str, timeout: float = WAIT_SECONDS) -> Job:
    def check() -> Job | None:
        job = read_job(db, job_id)
        return job if job is not None and job.state == state else None

    return wait_for(check, timeout=timeout, what=f"job {job_id} to reach {state}")


def wait_for_status(db: firestore.Client, job_id: str, status: str, timeout: float = WAIT_SECONDS) -> Job:
    """Wait until the job shows Replicate status `status` (whatever its job state)."""

    def check() -> Job | None:
        job = read_job(db, job_id)
        return job if job is not None and job.replicate_status == status else None

    return wait_for(check, timeout=timeout, what=f"job {job_id} to show status {status}")
