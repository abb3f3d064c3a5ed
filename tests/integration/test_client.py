"""RelayClient on the Firestore emulator: waiting and watching through snapshot listeners, never polling."""

from __future__ import annotations

import contextlib
import gc
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
import pytest
from google.cloud import firestore
from google.cloud.firestore_v1.document import DocumentReference

from replicate_relay import cli
from replicate_relay.client import ClientClosed, JobFailed, JobWaitTimeout, RelayClient
from replicate_relay.devstack.stack import LocalStack
from replicate_relay.jobs import Job, JobState
from replicate_relay.jobstore import JobStore
from replicate_relay.replicate_api import ReplicateAPI
from replicate_relay.submit import SubmitFailed, Submitter
from tests.integration.conftest import WAIT_SECONDS, Tap, _tap, announcements, wait_for

MODEL = "flux-kontext-apps/restore-image"
FAST = {"input_image": "https://example.com/old.jpg", "seed": 1, "sim_duration": 0.5}
ORDER = [JobState.SUBMITTED, JobState.STARTING, JobState.PROCESSING, JobState.ARCHIVING, JobState.SUCCEEDED]
# google-api-core's name for the thread that reads a listener's gRPC stream (one per open listener).
LISTENER_THREAD = "Thread-ConsumeBidirectionalStream"


class ThreadActivity:
    """Records the document reads and sleeps the test's own thread makes while `recording()`:
    waiting by polling would show as either. The real client runs underneath; this only counts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self._recording = False
        self._thread = threading.get_ident()
        real_get, real_sleep = DocumentReference.get, time.sleep

        def get(reference: DocumentReference, *args: Any, **kwargs: Any) -> Any:
            self._note(f"read {reference.path}")
            return real_get(reference, *args, **kwargs)

        def sleep(seconds: float) -> None:
            self._note(f"sleep {seconds}")
            real_sleep(seconds)

        monkeypatch.setattr(DocumentReference, "get", get)
        monkeypatch.setattr(time, "sleep", sleep)

    def _note(self, call: str) -> None:
        if self._recording and threading.get_ident() == self._thread:
            self.calls.append(call)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self._recording = True
        try:
            yield
        finally:
            self._recording = False


def listener_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == LISTENER_THREAD)


@pytest.fixture
def client(stack: LocalStack, db: firestore.Client, replicate_api: ReplicateAPI) -> Iterator[RelayClient]:
    submitter = Submitter(store=JobStore(db), replicate=replicate_api, webhook_url=stack.receiver_url + "/")
    with RelayClient(JobStore(db), submitter=submitter) as relay:
        yield relay


@pytest.fixture
def activity(monkeypatch: pytest.MonkeyPatch) -> ThreadActivity:
    return ThreadActivity(monkeypatch)


@pytest.fixture
def no_listener_left(client: RelayClient) -> Iterator[Callable[[], None]]:
    """A check that every listener the test opened is closed: by the client's count, and by the
    listener threads, which only end when the gRPC stream is closed."""
    baseline = listener_threads()

    def check() -> None:
        assert client.open_listeners == 0
        # Unsubscribing joins the thread for up to a second; allow the scheduler a little more. At
        # most the baseline: a stream of an earlier test (a Pub/Sub consumer's) may end meanwhile.
        wait_for(lambda: listener_threads() <= baseline, timeout=5, what="the listener threads to end")

    yield check
    check()


def test_wait_returns_the_succeeded_job_from_the_listener_without_reading_or_sleeping(
    client: RelayClient, activity: ThreadActivity, no_listener_left: Callable[[], None]
) -> None:
    job = client.submit(MODEL, {**FAST, "sim_files": 1}, metadata={"order": "W-1"})
    with activity.recording():
        final = client.wait(job.job_id, timeout=WAIT_SECONDS)
    assert (final.job_id, final.state, final.metadata) == (job.job_id, "succeeded", {"order": "W-1"})
    assert final.outputs[0]["gs_uri"].startswith("gs://")
    assert activity.calls == []  # told by the listener: not one read of the job, not one sleep
    assert client.listeners_opened == 1
    with activity.recording():  # the control: what polling would have left
        client.get(job.job_id)
        time.sleep(0)
    assert activity.calls == [f"read jobs/{job.job_id}", "sleep 0"]
    no_listener_left()


def test_wait_raises_job_failed_with_the_error_of_a_failed_prediction(
    client: RelayClient, no_listener_left: Callable[[], None]
) -> None:
    job = client.submit(MODEL, {**FAST, "sim_outcome": "failed", "sim_error": "CUDA out of memory"})
    with pytest.raises(JobFailed) as raised:
        client.wait(job.job_id, timeout=WAIT_SECONDS)
    assert (raised.value.job.job_id, raised.value.job.state) == (job.job_id, "failed")
    assert "CUDA out of memory" in str(raised.value.job.error)
    no_listener_left()


def test_watch_yields_each_state_once_in_order_ending_with_the_final_one(
    client: RelayClient, activity: ThreadActivity, no_listener_left: Callable[[], None]
) -> None:
    job = client.submit(MODEL, {**FAST, "sim_duration": 3, "sim_files": 1})
    with activity.recording():
        states = [seen.state for seen in client.watch(job.job_id, timeout=WAIT_SECONDS)]
    assert states[-1] == "succeeded"
    assert "processing" in states  # it lasts three seconds: the listener is told of it
    ranks = [ORDER.index(JobState(state)) for state in states]
    assert ranks == sorted(set(ranks)), f"not each state once, in order: {states}"
    assert activity.calls == []
    no_listener_left()


def test_wait_that_times_out_raises_within_its_bound_with_the_last_state_seen(
    client: RelayClient, activity: ThreadActivity, no_listener_left: Callable[[], None]
) -> None:
    job = client.submit(MODEL, {**FAST, "sim_duration": 20})
    started = time.monotonic()
    with activity.recording(), pytest.raises(JobWaitTimeout) as raised:
        client.wait(job.job_id, timeout=1.5)
    elapsed = time.monotonic() - started
    # The bound, plus closing the listener (it joins the listener's thread for at most a second),
    # plus slack for a busy shared machine: still far from the 20 s the prediction runs.
    assert 1.5 <= elapsed < 6
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.last_state in {"submitted", "starting", "processing"}
    assert raised.value.job_id == job.job_id
    assert activity.calls == []
    no_listener_left()


def test_a_watch_closed_or_dropped_early_closes_its_listener(
    client: RelayClient, no_listener_left: Callable[[], None]
) -> None:
    job = client.submit(MODEL, {**FAST, "sim_duration": 5})
    baseline = listener_threads()

    closed = client.watch(job.job_id, timeout=WAIT_SECONDS)
    assert next(closed).state in {"submitted", "starting", "processing"}
    assert (client.open_listeners, listener_threads()) == (1, baseline + 1)  # the checks below can fail
    closed.close()
    no_listener_left()

    dropped = client.watch(job.job_id, timeout=WAIT_SECONDS)
    next(dropped)
    assert client.open_listeners == 1
    del dropped  # an abandoned iterator: its finally runs when it is collected
    gc.collect()
    no_listener_left()
    assert client.listeners_opened == 2


def test_a_watch_started_before_the_job_exists_waits_for_it(
    client: RelayClient, db: firestore.Client, no_listener_left: Callable[[], None]
) -> None:
    job_id = f"later{time.time_ns()}"
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.extend(job.state for job in client.watch(job_id, WAIT_SECONDS)))
    reader.start()
    wait_for(lambda: client.open_listeners == 1, timeout=5, what="the listener to open")
    store = JobStore(db)
    store.create_submitted(Job(job_id=job_id, source="submit", model=MODEL))
    store.fail_submission(job_id, "refused")
    reader.join(WAIT_SECONDS)
    assert result[-1] == "failed"
    assert result[0] in {"submitted", "failed"}
    no_listener_left()


def test_closing_the_client_wakes_a_wait_blocked_on_another_thread(
    client: RelayClient, no_listener_left: Callable[[], None]
) -> None:
    job = client.submit(MODEL, {**FAST, "sim_duration": 20})
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            client.wait(job.job_id, timeout=WAIT_SECONDS)
        except BaseException as error:  # handed to the test's thread
            raised.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_for(lambda: client.open_listeners == 1, timeout=5, what="the listener to open")
    started = time.monotonic()
    client.close()
    waiter.join(5)
    assert not waiter.is_alive()
    assert time.monotonic() - started < 5
    assert [type(error) for error in raised] == [ClientClosed]
    no_listener_left()


def test_relay_submit_wait_prints_the_final_job_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["submit", "--model", MODEL, "--input", "sim_duration=0.5", "--input", "sim_files=1", "--wait", "60"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    submitted, final = out.strip().splitlines()
    assert submitted.startswith("job ")
    assert " submitted: prediction " in submitted
    assert " succeeded: outputs gs://" in final
    assert final.endswith("; error -")


def test_relay_submit_wait_that_runs_out_says_the_last_state_and_exits_one(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code = cli.main(["submit", "--model", MODEL, "--input", "sim_duration=20", "--wait", "1"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert time.monotonic() - started < 10
    assert "has not ended after 1 s (last seen: " in out.splitlines()[-1]


@pytest.fixture
def other_job_events(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tap]:
    """A job-events topic of another name, made for one test and named by RELAY_JOB_EVENTS_TOPIC."""
    topic = f"job-events-{uuid.uuid4().hex[:8]}"
    publisher = pubsub_v1.PublisherClient()
    path = publisher.topic_path(stack.config.project, topic)
    publisher.create_topic(request={"name": path})
    monkeypatch.setenv("RELAY_JOB_EVENTS_TOPIC", topic)
    try:
        yield from _tap(stack, topic)
    finally:
        publisher.delete_topic(request={"topic": path})


def _submit_refused_with_relay_submit(capsys: pytest.CaptureFixture[str]) -> str:
    code = cli.main(["submit", "--model", MODEL, "--input", "sim_outcome=no-such-outcome"])
    out = capsys.readouterr().out
    assert code == 1, out
    match = re.match(r"job (\w+) failed: ", out)
    assert match is not None, out
    return match.group(1)


def _submit_refused_with_the_client(capsys: pytest.CaptureFixture[str]) -> str:
    with RelayClient.from_env() as client, pytest.raises(SubmitFailed) as refused:
        client.submit(MODEL, {**FAST, "sim_outcome": "no-such-outcome"})
    return refused.value.job.job_id


@pytest.mark.parametrize(
    "submit",
    [
        pytest.param(_submit_refused_with_relay_submit, id="relay-submit"),
        pytest.param(_submit_refused_with_the_client, id="relay-client"),
    ],
)
def test_a_submission_replicate_refuses_is_announced_on_relay_job_events_topic(
    other_job_events: Tap,
    capsys: pytest.CaptureFixture[str],
    submit: Callable[[pytest.CaptureFixture[str]], str],
) -> None:
    """`relay submit` and RelayClient.from_env read RELAY_JOB_EVENTS_TOPIC alike: the job of a
    submission Replicate refuses is final at once, and announced there, not on job-events."""
    job_id = submit(capsys)
    [announced] = announcements(other_job_events, job_id, settle=0.5)
    assert (announced["job_id"], announced["state"], announced["error_code"]) == (job_id, "failed", "submit_failed")
