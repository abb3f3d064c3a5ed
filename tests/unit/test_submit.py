"""replicate_relay.submit.Submitter and the durations it takes: what a submit records and sends, what cancel
does, and RELAY_DEFAULT_DEADLINE; on a job store in memory and a scripted Replicate, with a fixed clock.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import pytest
from replicate.client import Client as ReplicateClient

from replicate_relay.config import ConfigError, Env, default_deadline, default_training_deadline, parse_duration
from replicate_relay.errors import JobAlreadyFinal, JobNotFound, ReplicateAPIError, SubmitFailed
from replicate_relay.jobs import Job
from replicate_relay.jobstore import JobStore
from replicate_relay.replicate_api import DeploymentRef, ModelRef, ReplicateAPI
from replicate_relay.submit import SubmitSettings, Submitter

NOW = datetime(2025, 10, 16, 12, 0, tzinfo=UTC)
MODEL = ModelRef("acme", "restore")
BASE_ENV = {"REPLICATE_API_TOKEN": "r8_x", "RELAY_WEBHOOK_URL": "https://relay.example/"}


class MemoryStore:
    """The part of JobStore a Submitter uses, in a dict."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}

    def now(self) -> datetime:
        return NOW

    def create_submitted(self, job: Job) -> Job:
        assert job.job_id not in self.jobs
        self.jobs[job.job_id] = job
        return job

    def attach_prediction(self, job_id: str, prediction_id: str) -> str:
        self._set(job_id, prediction_id=prediction_id)
        return job_id

    def fail_submission(self, job_id: str, message: str) -> Job:
        return self._set(job_id, state="failed", error=message, error_code="submit_failed")

    def update_fields(self, job_id: str, fields: dict[str, Any]) -> None:
        self._set(job_id, **fields)

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    load = get

    def _set(self, job_id: str, **fields: Any) -> Job:
        self.jobs[job_id] = self.jobs[job_id].model_copy(update=fields)
        return self.jobs[job_id]


class Replicate:
    """Answers every request with the next scripted answer, then 201 with an id; records the requests."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.on_create: Callable[[], object] = lambda: None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith(("predictions", "trainings")):
            self.on_create()
        if self.answers:
            return self.answers.pop(0)
        return httpx.Response(
            201 if request.url.path.endswith(("predictions", "trainings")) else 200, json={"id": "r1"}
        )

    @property
    def paths(self) -> list[str]:
        return [f"{request.method} {request.url.path}" for request in self.requests]


def submitter(store: MemoryStore, replicate: Replicate) -> Submitter:
    client = ReplicateClient(api_token="t", base_url="https://api.test", transport=httpx.MockTransport(replicate))
    api = ReplicateAPI(client, sleep=lambda _: None, rng=random.Random(0))
    return Submitter(cast(JobStore, store), api, "https://relay.example/")


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


# ---- submit ----


def test_a_submit_without_a_deadline_gets_the_default_as_cancel_after_and_deadline_at(store: MemoryStore) -> None:
    replicate = Replicate()

    job = submitter(store, replicate).submit(MODEL, {"x": 1})

    assert (job.prediction_id, job.kind, job.model, job.deployment) == ("r1", "prediction", "acme/restore", None)
    assert job.deadline_at == NOW + timedelta(minutes=30)
    assert replicate.requests[0].headers["cancel-after"] == "30m"


def test_a_deployment_submit_records_the_deployment_and_its_deadline(store: MemoryStore) -> None:
    replicate = Replicate()

    job = submitter(store, replicate).submit(DeploymentRef("acme", "prod"), {}, deadline=timedelta(seconds=90))

    assert (job.deployment, job.model, job.deadline_at) == ("acme/prod", None, NOW + timedelta(seconds=90))
    assert replicate.paths == ["POST /v1/deployments/acme/prod/predictions"]
    assert replicate.requests[0].headers["cancel-after"] == "1m30s"


@pytest.mark.parametrize("default", [timedelta(minutes=5), None])
def test_a_zero_deadline_sets_none_whatever_the_default(store: MemoryStore, default: timedelta | None) -> None:
    replicate = Replicate()
    configured = submitter(store, replicate)
    configured.default_deadline = default

    job = configured.submit(MODEL, {}, deadline=timedelta(0))

    assert job.deadline_at is None
    assert "cancel-after" not in replicate.requests[0].headers


def test_a_negative_deadline_is_refused_before_anything_is_written(store: MemoryStore) -> None:
    replicate = Replicate()

    with pytest.raises(ValueError, match="cannot be negative"):
        submitter(store, replicate).submit(MODEL, {}, deadline=timedelta(seconds=-1))

    assert (store.jobs, replicate.requests) == ({}, [])


def test_a_throttled_submit_fails_with_its_job_final_not_left_waiting(store: MemoryStore) -> None:
    throttled = [httpx.Response(429, json={"detail": "throttled"}, headers={"Retry-After": "1"}) for _ in range(4)]
    replicate = Replicate(*throttled)

    with pytest.raises(SubmitFailed, match="throttled the prediction create 4 times") as raised:
        submitter(store, replicate).submit(MODEL, {})

    (job,) = store.jobs.values()
    assert (job.state, job.error_code, job.prediction_id) == ("failed", "submit_failed", None)
    assert raised.value.job == job
    assert len(replicate.requests) == 4


def test_a_training_is_a_training_job_with_its_deadline_kept_but_not_sent(store: MemoryStore) -> None:
    replicate = Replicate()

    job = submitter(store, replicate).submit_training(
        ModelRef("acme", "base", "v1"), destination="me/tuned", input={"steps": 3}
    )

    assert (job.kind, job.model, job.prediction_id) == ("training", "acme/base:v1", "r1")
    assert job.deadline_at == NOW + timedelta(hours=24)
    assert replicate.paths == ["POST /v1/models/acme/base/versions/v1/trainings"]
    assert json.loads(replicate.requests[0].content)["destination"] == "me/tuned"
    assert "cancel-after" not in replicate.requests[0].headers


@pytest.mark.parametrize(
    ("version", "destination", "message"),
    [
        (ModelRef("acme", "base"), "me/tuned", "needs a version"),
        (ModelRef("acme", "base", "v1"), "tuned", "destination must look like OWNER/NAME"),
        (ModelRef("acme", "base", "v1"), "me/tuned:v2", "destination must look like OWNER/NAME"),
    ],
)
def test_a_training_without_a_version_or_a_destination_is_refused_before_anything_is_written(
    store: MemoryStore, version: ModelRef, destination: str, message: str
) -> None:
    replicate = Replicate()

    with pytest.raises(ValueError, match=message):
        submitter(store, replicate).submit_training(version, destination=destination, input={})

    assert (store.jobs, replicate.requests) == ({}, [])


# ---- cancel ----


@pytest.mark.parametrize(("kind", "path"), [("prediction", "predictions"), ("training", "trainings")])
def test_cancel_records_the_request_once_and_asks_replicate_each_time(store: MemoryStore, kind: str, path: str) -> None:
    store.create_submitted(Job(job_id="j1", prediction_id="r9", source="submit", kind=kind, state="processing"))
    replicate = Replicate()
    relay = submitter(store, replicate)

    first = relay.cancel("j1")
    store.now = lambda: NOW + timedelta(minutes=1)  # type: ignore[method-assign]
    second = relay.cancel("j1")

    assert first.cancel_requested_at == second.cancel_requested_at == NOW
    assert (second.state, second.prediction_id) == ("processing", "r9")
    assert replicate.paths == [f"POST /v1/{path}/r9/cancel"] * 2


@pytest.mark.parametrize("state", ["succeeded", "failed", "canceled", "aborted", "archiving"])
def test_cancel_of_a_job_whose_run_has_ended_is_already_final(store: MemoryStore, state: str) -> None:
    store.create_submitted(Job(job_id="j1", prediction_id="r9", state=state))
    replicate = Replicate()

    with pytest.raises(JobAlreadyFinal, match=f"job j1 .* \\({state}\\): there is nothing to cancel"):
        submitter(store, replicate).cancel("j1")

    assert (store.jobs["j1"].cancel_requested_at, replicate.requests) == (None, [])


def test_cancel_of_no_such_job_is_not_found(store: MemoryStore) -> None:
    with pytest.raises(JobNotFound, match="no job j404"):
        submitter(store, Replicate()).cancel("j404")


def test_a_job_canceled_while_its_run_is_created_is_canceled_once_linked(store: MemoryStore) -> None:
    replicate = Replicate()
    relay = submitter(store, replicate)
    # The cancel arrives while Replicate creates the run: the job has no run id to cancel yet.
    replicate.on_create = lambda: relay.cancel("j1")

    job = relay.submit(MODEL, {}, job_id="j1")

    assert job.cancel_requested_at == NOW
    assert replicate.paths == ["POST /v1/models/acme/restore/predictions", "POST /v1/predictions/r1/cancel"]


def test_a_cancel_replicate_refuses_is_an_error_with_the_request_kept(store: MemoryStore) -> None:
    store.create_submitted(Job(job_id="j1", prediction_id="r9", state="starting"))
    replicate = Replicate(httpx.Response(503, json={"detail": "down"}))

    with pytest.raises(ReplicateAPIError, match="cannot cancel prediction r9: down"):
        submitter(store, replicate).cancel("j1")

    assert store.jobs["j1"].cancel_requested_at == NOW


# ---- durations and RELAY_DEFAULT_DEADLINE ----


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("45m", 2700), ("2h", 7200), ("1h30m", 5400), ("1h0m5s", 3605), (" 10M ", 600), ("0", 0)],
)
def test_durations_are_hours_minutes_and_seconds(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["off", "OFF", "none", "0"])
def test_off_is_a_zero_duration(text: str) -> None:
    assert parse_duration(text) == timedelta(0)


@pytest.mark.parametrize("text", ["", "10", "5x", "1.5h", "-1m", "30m1h", "m", "1d"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="a duration looks like 30s, 45m, 2h or 1h30m"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("environ", "prediction", "training"),
    [
        ({}, timedelta(minutes=30), timedelta(hours=24)),
        (
            {"RELAY_DEFAULT_DEADLINE": "2m", "RELAY_DEFAULT_TRAINING_DEADLINE": "6h"},
            timedelta(minutes=2),
            timedelta(hours=6),
        ),
        ({"RELAY_DEFAULT_DEADLINE": "off", "RELAY_DEFAULT_TRAINING_DEADLINE": "0"}, None, None),
    ],
)
def test_default_deadlines_come_from_the_environment(
    environ: dict[str, str], prediction: timedelta | None, training: timedelta | None
) -> None:
    env = Env(environ)
    settings = SubmitSettings.from_env({**BASE_ENV, **environ})

    assert (default_deadline(env), default_training_deadline(env)) == (prediction, training)
    assert (settings.default_deadline, settings.default_training_deadline) == (prediction, training)


def test_a_malformed_default_deadline_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="RELAY_DEFAULT_DEADLINE: a duration looks like"):
        SubmitSettings.from_env({**BASE_ENV, "RELAY_DEFAULT_DEADLINE": "half an hour"})
