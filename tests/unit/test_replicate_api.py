"""replicate_relay.replicate_api: creates (model, version, deployment, training), reads, cancel, and the
bounded backoff on 429; against the simulator over HTTP, and a scripted transport for exact answers.

Sleeping and the clock are injected: no test waits out a Retry-After.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from replicate.client import Client as ReplicateClient

from replicate_relay.replicate_api import (
    DeploymentRef,
    ModelRef,
    ReplicateAPI,
    ReplicateAPIError,
    cancel_after_header,
)
from replicate_relay.simulator import SimConfig, Simulator, create_app
from tests.unit.test_simulator import Served

SECRET = "whsec_" + base64.b64encode(b"replicate-api-unit-test-secret32").decode("ascii")
UNUSED_WEBHOOK = "http://127.0.0.1:9/unused"


class FakeTime:
    """A clock that moves only when slept on; records every sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


# ---- against the simulator ------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    running = Served(create_app(Simulator(secrets=[SECRET], config=SimConfig(retry_delays=(0.05,)))))
    running.start()
    yield running
    running.stop()


@pytest.fixture
def sim(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        yield client
        client.post("/_sim/reset").raise_for_status()


@pytest.fixture
def time_() -> FakeTime:
    return FakeTime()


@pytest.fixture
def api(served: Served, time_: FakeTime) -> Iterator[ReplicateAPI]:
    client = ReplicateClient(api_token="test-token", base_url=served.url, timeout=httpx.Timeout(10))
    replicate = ReplicateAPI(client, sleep=time_.sleep, clock=time_.clock, rng=random.Random(7))
    yield replicate
    replicate.close()


def _read(api: ReplicateAPI, prediction_id: str) -> dict[str, object]:
    body: dict[str, object] = json.loads(api.get_prediction(prediction_id))
    return body


@pytest.mark.parametrize(
    ("target", "model"),
    [
        (ModelRef("acme", "restore"), "acme/restore"),
        (DeploymentRef("acme", "restore-prod"), "acme/restore-prod"),
    ],
)
def test_creates_a_prediction_of_a_model_or_a_deployment(
    api: ReplicateAPI, sim: httpx.Client, target: ModelRef | DeploymentRef, model: str
) -> None:
    prediction_id = api.create_prediction(
        target, {"sim_duration": 0.1}, webhook=UNUSED_WEBHOOK, events_filter=["completed"]
    )

    assert _read(api, prediction_id)["model"] == model


def test_cancel_ends_a_running_prediction_and_a_second_cancel_changes_nothing(
    api: ReplicateAPI, sim: httpx.Client
) -> None:
    prediction_id = api.create_prediction(
        ModelRef("acme", "slow"), {"sim_duration": 30}, webhook=UNUSED_WEBHOOK, events_filter=["completed"]
    )

    first = json.loads(api.cancel("prediction", prediction_id))
    second = json.loads(api.cancel("prediction", prediction_id))

    assert (first["status"], second["status"]) == ("canceled", "canceled")
    assert _read(api, prediction_id)["status"] == "canceled"


def test_unknown_prediction_is_a_permanent_error(api: ReplicateAPI, sim: httpx.Client) -> None:
    with pytest.raises(ReplicateAPIError) as raised:
        api.cancel("prediction", "no-such-prediction")

    assert (raised.value.status, raised.value.transient) == (404, False)


def test_a_throttle_shorter_than_the_bound_is_ridden_out_honouring_retry_after(
    api: ReplicateAPI, sim: httpx.Client, time_: FakeTime
) -> None:
    sim.post("/_sim/config", json={"throttle_requests": 3}).raise_for_status()

    prediction_id = api.create_prediction(
        ModelRef("acme", "restore"), {"sim_duration": 0.1}, webhook=UNUSED_WEBHOOK, events_filter=["completed"]
    )

    assert prediction_id
    assert len(time_.slept) == 3
    # The simulator answers Retry-After: 1; each wait is that plus at most 20 % of jitter, never less.
    assert all(1.0 <= wait <= 1.2 for wait in time_.slept)
    assert len(set(time_.slept)) == 3


def test_a_throttle_longer_than_the_bound_fails_as_throttled_after_four_tries(
    api: ReplicateAPI, sim: httpx.Client, time_: FakeTime
) -> None:
    sim.post("/_sim/config", json={"throttle_requests": 10}).raise_for_status()
    before = sim.get("/_sim/stats").json()

    with pytest.raises(ReplicateAPIError) as raised:
        api.create_prediction(ModelRef("acme", "restore"), {}, webhook=UNUSED_WEBHOOK, events_filter=["completed"])

    after = sim.get("/_sim/stats").json()
    assert (raised.value.status, raised.value.transient, raised.value.reason) == (429, True, "replicate_unavailable")
    assert "throttled the prediction create 4 times" in str(raised.value)
    assert len(time_.slept) == 3  # no sleep after the last try
    assert _calls(after, "create_prediction") - _calls(before, "create_prediction") == 4


def _calls(stats: dict[str, object], handler: str) -> int:
    calls = stats.get("calls")
    assert isinstance(calls, dict), stats
    count = calls.get(handler, 0)
    assert isinstance(count, int)
    return count


# ---- against a scripted transport: exact requests and answers -----------------------------------


class Scripted:
    """Answers each request with the next of `answers` (then 201 with an id); records the requests."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers.pop(0) if self.answers else httpx.Response(201, json={"id": "p1", "status": "starting"})


def _scripted(script: Scripted, time_: FakeTime) -> ReplicateAPI:
    client = ReplicateClient(api_token="t", base_url="https://api.test", transport=httpx.MockTransport(script))
    return ReplicateAPI(client, sleep=time_.sleep, clock=time_.clock, rng=random.Random(1))


def _throttled(retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(429, json={"detail": "Request was throttled."}, headers=headers)


Create = Callable[[ReplicateAPI], str]

CREATES: dict[str, tuple[Create, str, dict[str, object]]] = {
    "model": (
        lambda api: api.create_prediction(ModelRef("a", "m"), {"x": 1}, webhook="https://h/", events_filter=["start"]),
        "/v1/models/a/m/predictions",
        {"input": {"x": 1}, "webhook": "https://h/", "webhook_events_filter": ["start"]},
    ),
    "version": (
        lambda api: api.create_prediction(
            ModelRef("a", "m", "v9"), {"x": 1}, webhook="https://h/", events_filter=["completed"]
        ),
        "/v1/predictions",
        {"version": "v9", "input": {"x": 1}, "webhook": "https://h/", "webhook_events_filter": ["completed"]},
    ),
    "deployment": (
        lambda api: api.create_prediction(
            DeploymentRef("a", "d"), {}, webhook="https://h/", events_filter=["completed"]
        ),
        "/v1/deployments/a/d/predictions",
        {"input": {}, "webhook": "https://h/", "webhook_events_filter": ["completed"]},
    ),
    "training": (
        lambda api: api.create_training(
            ModelRef("a", "m", "v9"),
            destination="me/tuned",
            input={"steps": 3},
            webhook="https://h/",
            events_filter=["completed"],
        ),
        "/v1/models/a/m/versions/v9/trainings",
        {
            "destination": "me/tuned",
            "input": {"steps": 3},
            "webhook": "https://h/",
            "webhook_events_filter": ["completed"],
        },
    ),
}


@pytest.mark.parametrize("form", sorted(CREATES))
def test_each_create_posts_its_path_and_body_with_the_token(form: str) -> None:
    create, path, body = CREATES[form]
    script = Scripted()

    assert create(_scripted(script, FakeTime())) == "p1"

    (request,) = script.requests
    assert (request.method, request.url.path) == ("POST", path)
    assert json.loads(request.content) == body
    assert request.headers["authorization"] == "Bearer t"
    assert "cancel-after" not in request.headers


def test_cancel_after_is_sent_as_a_header() -> None:
    script = Scripted()
    api = _scripted(script, FakeTime())

    api.create_prediction(
        DeploymentRef("a", "d"),
        {},
        webhook="https://h/",
        events_filter=["completed"],
        cancel_after=timedelta(minutes=90),
    )

    assert script.requests[0].headers["cancel-after"] == "1h30m"


@pytest.mark.parametrize(
    ("duration", "header"),
    [
        (timedelta(seconds=30), "30s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=2), "2h"),
        (timedelta(hours=1, seconds=5), "1h5s"),
        (timedelta(seconds=0.2), "1s"),  # rounded up: never sooner than asked
        (timedelta(seconds=59.5), "1m"),
    ],
)
def test_cancel_after_header_is_whole_seconds_in_hours_minutes_seconds(duration: timedelta, header: str) -> None:
    assert cancel_after_header(duration) == header


def test_a_training_needs_a_version() -> None:
    with pytest.raises(ValueError, match="OWNER/NAME:VERSION"):
        _scripted(Scripted(), FakeTime()).create_training(
            ModelRef("a", "m"), destination="me/t", input={}, webhook="https://h/", events_filter=["completed"]
        )


def test_without_retry_after_waits_grow_one_two_four_seconds_with_jitter() -> None:
    time_ = FakeTime()
    script = Scripted(_throttled(), _throttled(), _throttled())

    assert CREATES["model"][0](_scripted(script, time_)) == "p1"

    assert [int(wait) for wait in time_.slept] == [1, 2, 4]
    assert all(base <= wait <= base * 1.2 for base, wait in zip((1, 2, 4), time_.slept, strict=True))


def test_retry_after_as_an_http_date_is_honoured() -> None:
    time_ = FakeTime()
    when = datetime.now(UTC) + timedelta(seconds=20)
    script = Scripted(_throttled(format_datetime(when, usegmt=True)))

    CREATES["model"][0](_scripted(script, time_))

    (wait,) = time_.slept
    assert 17 <= wait <= 20 * 1.2


def test_a_wait_that_would_end_past_the_budget_is_not_slept() -> None:
    time_ = FakeTime()
    script = Scripted(_throttled("40"), _throttled("40"))

    with pytest.raises(ReplicateAPIError, match="throttled the prediction create 2 times") as raised:
        CREATES["model"][0](_scripted(script, time_))

    assert raised.value.status == 429
    assert len(time_.slept) == 1  # 40 s, then a second 40 s would end past 60 s: given up at once
    assert len(script.requests) == 2


@pytest.mark.parametrize("status", [400, 402, 422, 500, 503])
def test_other_refusals_are_not_tried_again(status: int) -> None:
    # A 5xx may have created the run: a second create would start (and bill) a second one.
    time_ = FakeTime()
    script = Scripted(httpx.Response(status, json={"detail": "nope", "status": status}))

    with pytest.raises(ReplicateAPIError, match="Replicate refused the prediction: nope") as raised:
        CREATES["deployment"][0](_scripted(script, time_))

    assert raised.value.status == status
    assert (len(script.requests), time_.slept) == (1, [])


def test_a_create_answer_without_an_id_is_an_error() -> None:
    script = Scripted(httpx.Response(201, json={"status": "starting"}))

    with pytest.raises(ReplicateAPIError, match="has no id"):
        CREATES["training"][0](_scripted(script, FakeTime()))


@pytest.mark.parametrize(
    ("call", "method", "path"),
    [
        (lambda api: api.get_training("t1"), "GET", "/v1/trainings/t1"),
        (lambda api: api.cancel("training", "t1"), "POST", "/v1/trainings/t1/cancel"),
        (lambda api: api.cancel("prediction", "p1"), "POST", "/v1/predictions/p1/cancel"),
    ],
)
def test_reads_and_cancels_return_replicates_json_unchanged(
    call: Callable[[ReplicateAPI], bytes], method: str, path: str
) -> None:
    raw = b'{"id": "x", "status": "canceled", "extra": [1, 2]}'
    script = Scripted(httpx.Response(200, content=raw))

    assert call(_scripted(script, FakeTime())) == raw

    assert (script.requests[0].method, script.requests[0].url.path) == (method, path)


@pytest.mark.parametrize("text", ["acme", "acme/", "/x", "a/b/c", "a/b:v1"])
def test_deployment_refs_are_owner_slash_name(text: str) -> None:
    with pytest.raises(ValueError, match="deployment must look like OWNER/NAME"):
        DeploymentRef.parse(text)


def test_deployment_ref_round_trips() -> None:
    assert str(DeploymentRef.parse(" acme/restore-prod ")) == "acme/restore-prod"
