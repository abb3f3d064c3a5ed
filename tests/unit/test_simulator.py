"""replicate_relay.simulator: the official client against it, and every webhook it sends caught by a local sink.

The simulator and the sink run in this process on free loopback ports; runs last a fraction of a second
and the retry schedule is shortened, so the whole file takes seconds.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import replicate
import uvicorn
from replicate.exceptions import ReplicateError
from starlette.applications import Starlette

from replicate_relay.simulator import SimConfig, Simulator, create_app
from replicate_relay.simulator.engine import plan
from replicate_relay.simulator.requests import Behaviour, parse_create, parse_duration
from replicate_relay.webhooks import VerificationError, parse_secret, verify

SECRET = "whsec_" + base64.b64encode(b"simulator-unit-test-secret-32byt").decode("ascii")
OTHER_SECRET = "whsec_" + base64.b64encode(b"a-secret-the-simulator-never-had").decode("ascii")
RETRY_DELAYS = (0.05, 0.1, 0.2)
START_CONFIG = SimConfig(seed=1234, retry_delays=RETRY_DELAYS, webhook_timeout_seconds=2.0)
ALL_EVENTS = ["start", "output", "logs", "completed"]
PREDICTION_KEYS = {
    "id",
    "model",
    "version",
    "input",
    "output",
    "error",
    "logs",
    "status",
    "created_at",
    "started_at",
    "completed_at",
    "data_removed",
    "metrics",
    "urls",
}
TRAINING_KEYS = PREDICTION_KEYS - {"data_removed"}


# A webhook receiver that records everything and answers as scripted ------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def prediction(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Answer:
    status: int = 200
    delay: float = 0.0
    location: str | None = None


@dataclass
class Sink:
    """Records every POST; answers each path from its script (consumed one per request), then 200."""

    received: list[Received] = field(default_factory=list)
    scripts: dict[str, list[Answer]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hook(self, *answers: Answer) -> tuple[str, str]:
        """A fresh webhook path (so tests never see each other's requests), answered with `answers` first."""
        path = f"/hooks/{uuid.uuid4().hex}"
        with self.lock:
            self.scripts[path] = list(answers)
        return self.url(path), path

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [request for request in self.received if request.path == path]

    def answer(self, request: Received) -> Answer:
        with self.lock:
            self.received.append(request)
            script = self.scripts.get(request.path)
            return script.pop(0) if script else Answer()


def _serve_sink(sink: Sink) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            answer = sink.answer(Received(self.path, headers, body, time.time()))
            if answer.delay:
                time.sleep(answer.delay)
            self.send_response(answer.status)
            if answer.location:
                self.send_header("Location", answer.location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.port = int(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Served:
    """An ASGI app under uvicorn in a thread, on a socket bound before the thread starts."""

    def __init__(self, app: Starlette) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", loop="asyncio", http="h11", ws="none")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.01)

    def stop(self) -> float:
        """Seconds the server took to shut down."""
        began = time.monotonic()
        self.server.should_exit = True
        self.thread.join(10)
        self._socket.close()
        return time.monotonic() - began


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    recorder = Sink()
    server = _serve_sink(recorder)
    yield recorder
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    running = Served(create_app(Simulator(secrets=[SECRET], config=START_CONFIG)))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def controls(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        yield client


@pytest.fixture
def sim(controls: httpx.Client) -> Iterator[httpx.Client]:
    """A client for the /_sim controls (and files); the switches and the clock are reset after every test."""
    yield controls
    controls.post("/_sim/reset").raise_for_status()


@pytest.fixture(scope="module")
def api(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=10, headers={"Authorization": "Bearer test-token"}) as client:
        yield client


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[replicate.Client]:
    """The official client, unmodified; its connections are closed at the end (it has no close())."""
    transport = httpx.HTTPTransport()
    official = replicate.Client(api_token="test-token", base_url=served.url, transport=transport)
    official.poll_interval = 0.05  # Prediction.wait() polls every 0.5 s by default
    yield official
    transport.close()


def create(api: httpx.Client, webhook: str | None = None, events: list[str] | None = None, **sim: Any) -> str:
    body: dict[str, Any] = {"version": "a" * 64, "input": {"prompt": "x", **{f"sim_{k}": v for k, v in sim.items()}}}
    if webhook is not None:
        body["webhook"] = webhook
    if events is not None:
        body["webhook_events_filter"] = events
    response = api.post("/v1/predictions", json=body)
    assert response.status_code == 201, response.text
    prediction_id: str = response.json()["id"]
    return prediction_id


def settled(sim: httpx.Client, prediction_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The delivery log once the prediction is terminal and every webhook it made has been dealt with."""
    deadline = time.monotonic() + timeout
    while True:
        log: dict[str, Any] = sim.get(f"/_sim/predictions/{prediction_id}/deliveries").json()
        terminal = log["status"] in ("succeeded", "failed", "canceled", "aborted")
        if terminal and log["final"] != "pending" and log["in_flight"] == 0:
            return log
        assert time.monotonic() < deadline, f"prediction {prediction_id} did not settle: {log}"
        time.sleep(0.02)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def events(log: dict[str, Any]) -> list[str]:
    return [delivery["event"] for delivery in log["deliveries"]]


# The API, through the official client ----------------------------------------------------------------


def test_create_answers_201_with_the_full_starting_prediction(api: httpx.Client, served: Served) -> None:
    response = api.post("/v1/models/acme/restorer/predictions", json={"input": {"sim_duration": 0.2}})

    assert response.status_code == 201
    body = response.json()
    assert set(body) == PREDICTION_KEYS
    assert body["model"] == "acme/restorer"
    assert len(body["version"]) == 64
    assert body["input"] == {"sim_duration": 0.2}
    assert (body["output"], body["error"], body["logs"], body["status"]) == (None, None, "", "starting")
    assert body["created_at"].endswith("Z")
    assert (body["started_at"], body["completed_at"], body["data_removed"], body["metrics"]) == (None, None, False, {})
    get = f"{served.url}/v1/predictions/{body['id']}"
    assert body["urls"] == {"get": get, "cancel": f"{get}/cancel", "web": f"{served.url}/p/{body['id']}"}


def test_official_client_creates_model_version_and_deployment_predictions(client: replicate.Client) -> None:
    by_model = client.models.predictions.create(model="acme/restorer", input={"sim_duration": 0.3, "sim_files": 2})
    by_version = client.predictions.create(version="b" * 64, input={"sim_duration": 0.3})
    by_reference = client.predictions.create(version="acme/other:" + "c" * 64, input={"sim_duration": 0.3})
    by_deployment = client.deployments.predictions.create(deployment="acme/prod", input={"sim_duration": 0.3})

    assert by_model.model == "acme/restorer"
    assert (by_version.version, by_reference.model, by_reference.version) == ("b" * 64, "acme/other", "c" * 64)
    assert by_deployment.model == "acme/prod"
    for prediction in (by_model, by_version, by_reference, by_deployment):
        assert prediction.status == "starting"
        prediction.wait()
        assert prediction.status == "succeeded"
        assert prediction.completed_at is not None
        assert prediction.metrics is not None
        assert prediction.metrics["predict_time"] > 0
    assert isinstance(by_model.output, list)
    assert len(by_model.output) == 2
    assert by_model.output[0].endswith(f"/files/{by_model.id}/0-output.png")


def test_official_client_gets_lists_and_reads_the_webhook_secret(client: replicate.Client) -> None:
    first = client.predictions.create(version="d" * 64, input={"sim_duration": 0.1})
    second = client.predictions.create(version="d" * 64, input={"sim_duration": 0.1})

    assert client.predictions.get(first.id).id == first.id
    page = client.predictions.list()
    assert [prediction.id for prediction in page.results[:2]] == [second.id, first.id]
    assert page.next is None
    assert client.webhooks.default.secret().key == SECRET


def test_list_pages_newest_first_through_the_next_cursor_until_next_is_null(
    client: replicate.Client, sim: httpx.Client
) -> None:
    sim.post("/_sim/config", json={"page_size": 2}).raise_for_status()
    created = [client.predictions.create(version="e" * 64, input={"sim_duration": 0.1}).id for _ in range(5)]

    pages = [client.predictions.list()]
    while pages[-1].next is not None and len(pages) < 100:
        pages.append(client.predictions.list(cursor=pages[-1].next))
    listed = [prediction.id for page in pages for prediction in page.results]

    assert all(len(page.results) <= 2 for page in pages)
    assert pages[0].previous is None
    assert pages[1].previous is not None
    assert "cursor=" in (pages[0].next or "")
    assert listed[:5] == list(reversed(created))
    assert len(listed) == len(set(listed))
    assert pages[-1].next is None


def test_throttle_switch_answers_429_with_retry_after_then_serves_again(api: httpx.Client, sim: httpx.Client) -> None:
    sim.post("/_sim/config", json={"throttle_requests": 2}).raise_for_status()

    answers = [api.get("/v1/predictions") for _ in range(3)]

    assert [answer.status_code for answer in answers] == [429, 429, 200]
    assert answers[0].headers["retry-after"] == "1"
    assert "throttled" in answers[0].json()["detail"]
    assert sim.get("/_sim/config").json()["throttle_requests"] == 0


def test_official_client_run_waits_for_the_output(client: replicate.Client) -> None:
    # run() sends `Prefer: wait`; the create request is held until the prediction ends.
    output = client.run("acme/writer", input={"sim_duration": 0.3, "sim_files": 0, "sim_tokens": 4})

    assert list(output) == ["the", " quick", " brown", " fox"]


def test_cancel_through_the_client_ends_canceled_and_sends_completed(
    client: replicate.Client, sink: Sink, sim: httpx.Client
) -> None:
    url, path = sink.hook()
    prediction = client.predictions.create(version="e" * 64, input={"sim_duration": 30}, webhook=url)

    canceled = client.predictions.cancel(prediction.id)

    assert canceled.status == "canceled"
    assert canceled.completed_at is not None
    log = settled(sim, prediction.id)
    assert (log["final"], events(log)) == ("delivered", ["completed"])
    assert [request.prediction["status"] for request in sink.at(path)] == ["canceled"]
    assert client.predictions.cancel(prediction.id).status == "canceled"  # a second cancel changes nothing


def test_failed_outcome_has_an_error_and_no_output(client: replicate.Client) -> None:
    prediction = client.predictions.create(
        version="f" * 64, input={"sim_duration": 0.2, "sim_outcome": "failed", "sim_error": "CUDA out of memory"}
    )
    prediction.wait()

    assert (prediction.status, prediction.error, prediction.output) == ("failed", "CUDA out of memory", None)


def test_aborted_outcome_never_starts_processing(api: httpx.Client, sim: httpx.Client) -> None:
    prediction_id = create(api, duration=0.1, outcome="aborted")
    settled(sim, prediction_id)

    body = api.get(f"/v1/predictions/{prediction_id}").json()
    assert (body["status"], body["started_at"], body["output"]) == ("aborted", None, None)


def test_text_output_is_a_list_of_tokens_or_one_string(client: replicate.Client) -> None:
    tokens = client.predictions.create(version="1" * 64, input={"sim_duration": 0.2, "sim_files": 0, "sim_tokens": 5})
    text = client.predictions.create(
        version="1" * 64, input={"sim_duration": 0.2, "sim_files": 0, "sim_tokens": 3, "sim_output_list": False}
    )
    tokens.wait()
    text.wait()

    assert tokens.output == ["the", " quick", " brown", " fox", " jumps"]
    assert text.output == "the quick brown"


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Token", "Basic dXNlcjpwYXNz", "test-token"], ids=repr)
def test_api_without_a_bearer_or_token_credential_is_401(served: Served, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.get(f"{served.url}/v1/predictions", headers=headers)

    assert response.status_code == 401
    assert "detail" in response.json()


@pytest.mark.parametrize("authorization", ["Bearer r8_abc", "Token r8_abc", "bearer r8_abc"])
def test_api_accepts_any_bearer_or_token_credential(served: Served, authorization: str) -> None:
    response = httpx.get(f"{served.url}/v1/predictions", headers={"Authorization": authorization})

    assert response.status_code == 200
    assert set(response.json()) == {"next", "previous", "results"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input": {}}, "version"),
        ({"version": "v", "input": "a prompt"}, "input"),
        ({"version": "v", "input": {}, "webhook_events_filter": ["completed", "done"]}, "webhook_events_filter"),
        ({"version": "v", "input": {}, "webhook": "ftp://example.com/hook"}, "webhook"),
        ({"version": "v", "input": {"sim_outcome": "exploded"}}, "input.sim_outcome"),
        ({"version": "v", "input": {"sim_duration": -1}}, "input.sim_duration"),
        ({"version": "v", "input": {"sim_files": True}}, "input.sim_files"),
        ({"version": "v", "input": {"sim_typo": 1}}, "input.sim_typo"),
        ({"version": "v", "input": {"sim_files": 2, "sim_output_list": False}}, "input.sim_output_list"),
    ],
)
def test_invalid_create_requests_are_422_naming_the_field(api: httpx.Client, body: dict[str, Any], field: str) -> None:
    response = api.post("/v1/predictions", json=body)

    assert response.status_code == 422
    assert field in response.json()["detail"]
    assert [problem["field"] for problem in response.json()["invalid_fields"]] == [field]


@pytest.mark.parametrize(
    ("content", "status"),
    [(b"{not json", 400), (b'{"version": "v", "input": {"x": NaN}}', 400), (b"[]", 400), (b" " * 2_000_000, 413)],
    ids=["malformed", "nan", "not-an-object", "too-large"],
)
def test_unreadable_create_bodies_are_4xx_with_detail(api: httpx.Client, content: bytes, status: int) -> None:
    response = api.post("/v1/predictions", content=content, headers={"content-type": "application/json"})

    assert response.status_code == status
    assert response.json()["detail"]


def test_client_sees_a_422_as_a_replicate_error(client: replicate.Client) -> None:
    with pytest.raises(ReplicateError) as raised:
        client.predictions.create(version="v", input={"sim_duration": "long"})

    assert raised.value.status == 422
    assert raised.value.detail is not None
    assert "sim_duration" in raised.value.detail


def test_unknown_prediction_is_404_with_detail(api: httpx.Client) -> None:
    for response in (api.get("/v1/predictions/nosuchid"), api.post("/v1/predictions/nosuchid/cancel")):
        assert response.status_code == 404
        assert response.json()["detail"]


# Webhooks ------------------------------------------------------------------------------------------


def test_default_filter_sends_only_output_and_completed(api: httpx.Client, sink: Sink, sim: httpx.Client) -> None:
    url, path = sink.hook()
    prediction_id = create(api, url, duration=0.6, files=2, logs=3)
    log = settled(sim, prediction_id)

    assert set(events(log)) == {"output", "completed"}
    assert events(log)[-1] == "completed"
    received = sink.at(path)
    assert [request.webhook_id for request in received] == [delivery["webhook_id"] for delivery in log["deliveries"]]
    assert "starting" not in [request.prediction["status"] for request in received]


def test_webhook_events_filter_is_honoured_exactly(api: httpx.Client, sink: Sink, sim: httpx.Client) -> None:
    # Timed so every event happens: logs at 0.47 s, output at 0.65 s (sent at 0.97 s, after the throttle).
    filters = [[], ["start"], ["output"], ["logs"], ["completed"], ["start", "completed"], ALL_EVENTS]
    runs = [(wanted, *sink.hook()) for wanted in filters]
    ids = [create(api, url, wanted, duration=1.2, files=1, logs=2) for wanted, url, _ in runs]

    for prediction_id, (wanted, _, path) in zip(ids, runs, strict=True):
        log = settled(sim, prediction_id)
        assert set(events(log)) == set(wanted), wanted
        assert len(sink.at(path)) == len(log["deliveries"]), wanted
        assert log["final"] == ("delivered" if "completed" in wanted else "not_requested")


def test_webhook_completed_alone_receives_only_the_completed_webhook(
    api: httpx.Client, sink: Sink, sim: httpx.Client
) -> None:
    url, path = sink.hook()
    body = {"version": "v", "input": {"sim_duration": 0.6, "sim_logs": 2}, "webhook_completed": url}
    prediction_id = api.post("/v1/predictions", json=body).json()["id"]
    log = settled(sim, prediction_id)

    assert (events(log), log["final"]) == (["completed"], "delivered")
    assert [request.prediction["status"] for request in sink.at(path)] == ["succeeded"]


def test_every_webhook_is_the_full_prediction_signed_with_the_configured_secret(
    api: httpx.Client, sink: Sink, sim: httpx.Client
) -> None:
    url, path = sink.hook()
    prediction_id = create(api, url, ALL_EVENTS, duration=1.2, files=1, logs=2)
    settled(sim, prediction_id)

    received = sink.at(path)
    assert len(received) == 4
    keys = [parse_secret(SECRET)]
    for request in received:
        verified = verify(request.headers, request.body, keys=keys, now=time.time())
        assert verified.webhook_id == request.webhook_id
        assert abs(verified.timestamp - request.at) <= 2  # whole seconds, under load
        assert request.headers["content-type"] == "application/json"
        assert set(request.prediction) == PREDICTION_KEYS
        assert request.prediction["id"] == prediction_id
        with pytest.raises(VerificationError):
            verify(request.headers, request.body, keys=[parse_secret(OTHER_SECRET)], now=time.time())
    assert len({request.webhook_id for request in received}) == 4
    assert [request.prediction["status"] for request in received] == [
        "starting",
        "processing",
        "processing",
        "succeeded",
    ]
    assert received[-1].prediction == api.get(f"/v1/predictions/{prediction_id}").json()


def test_final_webhook_is_retried_with_the_same_id_after_500s(api: httpx.Client, sink: Sink, sim: httpx.Client) -> None:
    url, path = sink.hook(Answer(500), Answer(503))
    prediction_id = create(api, url, ["completed"], duration=0.1)
    log = settled(sim, prediction_id)

    assert log["final"] == "delivered"
    assert [(d["attempt"], d["status_code"]) for d in log["deliveries"]] == [(1, 500), (2, 503), (3, 200)]
    received = sink.at(path)
    assert len(received) == 3
    assert len({request.webhook_id for request in received}) == 1
    assert len({request.body for request in received}) == 1
    for request in received:  # each attempt is signed anew with its own timestamp
        verify(request.headers, request.body, keys=[parse_secret(SECRET)], now=time.time())
        assert abs(int(request.headers["webhook-timestamp"]) - request.at) <= 2  # whole seconds, under load


def test_final_webhook_is_given_up_after_the_retry_schedule(api: httpx.Client, sink: Sink, sim: httpx.Client) -> None:
    url, path = sink.hook(*[Answer(500)] * 10)
    prediction_id = create(api, url, ["completed"], duration=0.1)
    log = settled(sim, prediction_id)

    assert log["final"] == "gave_up"
    attempts = log["deliveries"]
    assert [d["attempt"] for d in attempts] == [1, 2, 3, 4]
    assert attempts[-1]["at"] - attempts[0]["at"] >= sum(RETRY_DELAYS)
    time.sleep(0.3)
    assert len(sink.at(path)) == 4


@pytest.mark.parametrize(
    "first_answer",
    [Answer(404), Answer(410), Answer(302, location="/elsewhere"), Answer(200, delay=0.6)],
    ids=["404", "410", "redirect-not-followed", "timeout"],
)
def test_final_webhook_is_retried_after_any_non_2xx_or_a_timeout(
    api: httpx.Client, sink: Sink, sim: httpx.Client, first_answer: Answer
) -> None:
    sim.post("/_sim/config", json={"webhook_timeout_seconds": 0.3}).raise_for_status()
    url, path = sink.hook(first_answer)
    prediction_id = create(api, url, ["completed"], duration=0.1)
    log = settled(sim, prediction_id)

    assert log["final"] == "delivered"
    first, second = log["deliveries"]
    assert (first["attempt"], second["attempt"], second["status_code"]) == (1, 2, 200)
    assert first["status_code"] == (None if first_answer.delay else first_answer.status)
    assert len(sink.at(path)) == 2
    assert sink.at("/elsewhere") == []


def test_final_webhook_is_retried_when_the_receiver_is_down(api: httpx.Client, sim: httpx.Client) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    prediction_id = create(api, f"http://127.0.0.1:{port}/hook", ["completed"], duration=0.1)
    log = settled(sim, prediction_id)

    assert log["final"] == "gave_up"
    assert len(log["deliveries"]) == 1 + len(RETRY_DELAYS)
    assert all(d["status_code"] is None and d["error"] for d in log["deliveries"])


def test_intermediate_webhooks_are_sent_once_even_when_they_fail(
    api: httpx.Client, sink: Sink, sim: httpx.Client
) -> None:
    url, path = sink.hook(*[Answer(500)] * 50)
    prediction_id = create(api, url, ALL_EVENTS, duration=1.2, files=1, logs=2)
    log = settled(sim, prediction_id)

    intermediate = [d for d in log["deliveries"] if d["event"] != "completed"]
    assert [d["event"] for d in intermediate] == ["start", "logs", "output"]
    assert all(d["attempt"] == 1 and d["status_code"] == 500 for d in intermediate)
    counts = {request.webhook_id: 0 for request in sink.at(path)}
    for request in sink.at(path):
        counts[request.webhook_id] += 1
    assert sorted(counts.values()) == [1, 1, 1, 1 + len(RETRY_DELAYS)]


def test_output_and_logs_webhooks_are_throttled_to_one_per_half_second(
    api: httpx.Client, sink: Sink, sim: httpx.Client
) -> None:
    url, path = sink.hook()
    prediction_id = create(api, url, ALL_EVENTS, duration=2.0, files=5, logs=20)
    log = settled(sim, prediction_id)

    throttled = [d for d in log["deliveries"] if d["event"] in ("output", "logs")]
    assert 3 <= len(throttled) <= 5  # 25 changes in 1.9 s, coalesced
    gaps = [later["made_at"] - earlier["made_at"] for earlier, later in itertools.pairwise(throttled)]
    assert min(gaps) >= 0.49
    # Each coalesced webhook carries the latest state: more log lines every time, all of them at the end.
    bodies = [request.prediction for request in sink.at(path)]
    line_counts = [body["logs"].count("\n") for body in bodies if body["status"] == "processing"]
    assert line_counts == sorted(line_counts)
    assert len(set(line_counts)) == len(line_counts)
    assert bodies[-1]["logs"].count("\n") == 20
    assert len(bodies[-1]["output"]) == 5
    assert events(log)[0] == "start"


def test_sim_drop_final_never_sends_the_completed_webhook(api: httpx.Client, sink: Sink, sim: httpx.Client) -> None:
    url, path = sink.hook()
    prediction_id = create(api, url, ["start", "completed"], duration=0.1, drop_final=True)
    settled(sim, prediction_id)
    time.sleep(sum(RETRY_DELAYS) + 0.1)
    log = sim.get(f"/_sim/predictions/{prediction_id}/deliveries").json()

    assert log["final"] == "dropped"
    assert sorted((d["event"], d["dropped"]) for d in log["deliveries"]) == [("completed", True), ("start", False)]
    assert [request.prediction["status"] for request in sink.at(path)] == ["starting"]
    assert api.get(f"/v1/predictions/{prediction_id}").json()["status"] == "succeeded"


def test_drop_final_switch_applies_to_every_prediction_until_reset(
    api: httpx.Client, sink: Sink, sim: httpx.Client
) -> None:
    assert sim.post("/_sim/config", json={"drop_final": True}).json()["drop_final"] is True
    dropped = [create(api, sink.hook()[0], ["completed"], duration=0.1) for _ in range(2)]
    assert [settled(sim, prediction_id)["final"] for prediction_id in dropped] == ["dropped", "dropped"]

    assert sim.post("/_sim/reset").json()["drop_final"] is False
    assert settled(sim, create(api, sink.hook()[0], ["completed"], duration=0.1))["final"] == "delivered"


def test_duplicate_probability_one_sends_every_message_twice_with_the_same_id(
    api: httpx.Client, sink: Sink, sim: httpx.Client
) -> None:
    sim.post("/_sim/config", json={"duplicate_probability": 1.0}).raise_for_status()
    url, path = sink.hook()
    prediction_id = create(api, url, ["start", "completed"], duration=0.2)
    settled(sim, prediction_id)
    wait_until(lambda: len(sim.get(f"/_sim/predictions/{prediction_id}/deliveries").json()["deliveries"]) == 4)
    log = sim.get(f"/_sim/predictions/{prediction_id}/deliveries").json()

    received = sink.at(path)
    assert [request.prediction["status"] for request in received] == ["starting", "starting", "succeeded", "succeeded"]
    assert received[0].webhook_id == received[1].webhook_id != received[2].webhook_id == received[3].webhook_id
    assert received[0].body == received[1].body
    assert [d["duplicate"] for d in log["deliveries"]] == [False, True, False, True]


def test_drop_intermediate_probability_one_leaves_only_the_completed_webhook(
    api: httpx.Client, sink: Sink, sim: httpx.Client
) -> None:
    sim.post("/_sim/config", json={"drop_intermediate_probability": 1.0}).raise_for_status()
    url, path = sink.hook()
    prediction_id = create(api, url, ALL_EVENTS, duration=0.6, files=1, logs=1)
    log = settled(sim, prediction_id)

    assert all(d["dropped"] for d in log["deliveries"] if d["event"] != "completed")
    assert [request.prediction["status"] for request in sink.at(path)] == ["succeeded"]


def test_reorder_delivers_held_back_intermediate_webhooks_after_later_ones(
    api: httpx.Client, sink: Sink, sim: httpx.Client
) -> None:
    sim.post("/_sim/config", json={"reorder_probability": 1.0, "reorder_delay_seconds": 0.5}).raise_for_status()
    url, path = sink.hook()
    prediction_id = create(api, url, ["start", "completed"], duration=0.1)
    wait_until(lambda: len(sim.get(f"/_sim/predictions/{prediction_id}/deliveries").json()["deliveries"]) == 2)

    assert [request.prediction["status"] for request in sink.at(path)] == ["succeeded", "starting"]
    log = settled(sim, prediction_id)
    assert [(d["event"], d["delayed"]) for d in log["deliveries"]] == [("completed", False), ("start", True)]


def test_webhook_timestamp_skew_switch_moves_the_signed_timestamp(
    api: httpx.Client, sink: Sink, sim: httpx.Client
) -> None:
    sim.post("/_sim/config", json={"timestamp_skew_seconds": -600}).raise_for_status()
    url, path = sink.hook()
    settled(sim, create(api, url, ["completed"], duration=0.1))

    request = sink.at(path)[0]
    assert abs(int(request.headers["webhook-timestamp"]) - (request.at - 600)) <= 2
    with pytest.raises(VerificationError):
        verify(request.headers, request.body, keys=[parse_secret(SECRET)], now=time.time())


# Output files and retention ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extension", "content_type", "magic"),
    [("png", "image/png", b"\x89PNG\r\n\x1a\n"), ("webp", "image/webp", b"RIFF"), ("jpg", "image/jpeg", b"\xff\xd8")],
)
def test_output_files_are_served_with_their_type_and_the_same_bytes_every_time(
    client: replicate.Client, controls: httpx.Client, extension: str, content_type: str, magic: bytes
) -> None:
    prediction = client.predictions.create(
        version="2" * 64,
        input={"sim_duration": 0.2, "sim_files": 2, "sim_file_bytes": 3000, "sim_output_format": extension},
    )
    prediction.wait()

    assert isinstance(prediction.output, list)
    first, again, second = (
        controls.get(url) for url in [prediction.output[0], prediction.output[0], prediction.output[1]]
    )
    assert first.status_code == 200
    assert first.headers["content-type"] == content_type
    assert len(first.content) == 3000
    assert first.content.startswith(magic)
    assert first.content == again.content != second.content
    missing = prediction.output[0].replace("0-output", "9-output")
    assert controls.get(missing).status_code == 404


def test_single_file_output_is_a_bare_url_when_not_a_list(client: replicate.Client, controls: httpx.Client) -> None:
    prediction = client.predictions.create(
        version="3" * 64, input={"sim_duration": 0.2, "sim_files": 1, "sim_output_list": False}
    )
    prediction.wait()

    assert isinstance(prediction.output, str)
    assert controls.get(prediction.output).status_code == 200


def test_files_and_data_are_removed_file_ttl_after_completion_by_the_simulator_clock(
    api: httpx.Client, sim: httpx.Client
) -> None:
    prediction_id = create(api, duration=0.1, files=1)
    settled(sim, prediction_id)
    prediction = api.get(f"/v1/predictions/{prediction_id}").json()
    file_url = prediction["output"][0]

    sim.post("/_sim/advance", json={"seconds": 3590}).raise_for_status()
    assert sim.get(file_url).status_code == 200
    assert api.get(f"/v1/predictions/{prediction_id}").json()["data_removed"] is False

    sim.post("/_sim/advance", json={"seconds": 11}).raise_for_status()
    assert sim.get(file_url).status_code == 404
    removed = api.get(f"/v1/predictions/{prediction_id}").json()
    assert (removed["data_removed"], removed["output"], removed["input"], removed["logs"]) == (True, None, {}, "")
    assert removed["status"] == "succeeded"


def test_file_ttl_switch_shortens_retention(api: httpx.Client, sim: httpx.Client) -> None:
    sim.post("/_sim/config", json={"file_ttl_seconds": 60}).raise_for_status()
    prediction_id = create(api, duration=0.1, files=1)
    settled(sim, prediction_id)
    file_url = api.get(f"/v1/predictions/{prediction_id}").json()["output"][0]

    sim.post("/_sim/advance", json={"seconds": 61}).raise_for_status()

    assert sim.get(file_url).status_code == 404


# Trainings ---------------------------------------------------------------------------------------


def train(
    api: httpx.Client,
    webhook: str | None = None,
    events: list[str] | None = None,
    destination: str = "acme/tuned",
    **sim: Any,
) -> str:
    body: dict[str, Any] = {
        "destination": destination,
        "input": {"data": "x", **{f"sim_{k}": v for k, v in sim.items()}},
    }
    if webhook is not None:
        body["webhook"] = webhook
    if events is not None:
        body["webhook_events_filter"] = events
    response = api.post(f"/v1/models/acme/base/versions/{'a' * 64}/trainings", json=body)
    assert response.status_code == 201, response.text
    training_id: str = response.json()["id"]
    return training_id


def test_official_client_creates_gets_and_waits_for_a_training(client: replicate.Client, served: Served) -> None:
    training = client.trainings.create(
        model="acme/base", version="b" * 64, destination="acme/tuned", input={"sim_duration": 0.3}
    )

    assert (training.status, training.model, training.version) == ("starting", "acme/base", "b" * 64)
    get = f"{served.url}/v1/trainings/{training.id}"
    assert training.urls == {"get": get, "cancel": f"{get}/cancel"}
    wait_until(lambda: client.trainings.get(training.id).status == "succeeded")
    done = client.trainings.get(training.id)
    assert isinstance(done.output, dict)
    assert set(done.output) == {"version", "weights"}
    destination, _, version = done.output["version"].partition(":")
    assert (destination, len(version), set(version) <= set("0123456789abcdef")) == ("acme/tuned", 64, True)
    assert done.output["weights"] == f"{served.url}/files/{training.id}/weights.tar"


def test_a_training_is_not_a_prediction_and_a_prediction_is_not_a_training(api: httpx.Client) -> None:
    training_id = train(api, duration=0.1)
    prediction_id = create(api, duration=0.1)

    assert set(api.get(f"/v1/trainings/{training_id}").json()) == TRAINING_KEYS
    for path in (f"/v1/predictions/{training_id}", f"/v1/trainings/{prediction_id}"):
        assert api.get(path).status_code == 404
        assert api.post(f"{path}/cancel").status_code == 404
    listed = [prediction["id"] for prediction in api.get("/v1/predictions").json()["results"]]
    assert prediction_id in listed
    assert training_id not in listed


def test_training_webhooks_are_signed_training_bodies_ending_with_the_new_version(
    api: httpx.Client, sink: Sink, sim: httpx.Client
) -> None:
    url, path = sink.hook()
    training_id = train(api, url, ALL_EVENTS, duration=0.6, logs=2)
    log = settled(sim, training_id)

    received = sink.at(path)
    assert [request.prediction["status"] for request in received] == ["starting", "processing", "succeeded"]
    assert (events(log), log["final"]) == (["start", "logs", "completed"], "delivered")
    for request in received:
        verify(request.headers, request.body, keys=[parse_secret(SECRET)], now=time.time())
        assert set(request.prediction) == TRAINING_KEYS
        assert request.prediction["urls"]["get"].endswith(f"/v1/trainings/{training_id}")
    final = received[-1].prediction
    assert final == api.get(f"/v1/trainings/{training_id}").json()
    assert final["output"]["version"].startswith("acme/tuned:")
    assert final["metrics"]["predict_time"] > 0
    assert received[1].prediction["output"] is None  # the weights come with the finish only


def test_training_weights_are_streamed_at_the_size_asked_the_same_every_time(
    api: httpx.Client, sim: httpx.Client
) -> None:
    size = 3 * 1024 * 1024 + 5  # more than one chunk, not a whole number of them
    training_id = train(api, duration=0.1, weights_bytes=size)
    settled(sim, training_id)
    weights = api.get(f"/v1/trainings/{training_id}").json()["output"]["weights"]

    first, again = sim.get(weights), sim.get(weights)

    assert first.status_code == 200
    assert (first.headers["content-type"], first.headers["content-length"]) == ("application/x-tar", str(size))
    assert len(first.content) == size
    assert first.content == again.content
    assert first.content[:1024] != first.content[1024 * 1024 : 1024 * 1024 + 1024]  # chunks differ
    sim.post("/_sim/advance", json={"seconds": 3601}).raise_for_status()
    assert sim.get(weights).status_code == 404


def test_a_canceled_training_sends_its_canceled_completed_webhook_and_stays_canceled(
    client: replicate.Client, sink: Sink, sim: httpx.Client
) -> None:
    url, path = sink.hook()
    training = client.trainings.create(
        model="acme/base", version="c" * 64, destination="acme/tuned", input={"sim_duration": 30}, webhook=url
    )

    canceled = client.trainings.cancel(training.id)

    assert (canceled.status, canceled.output) == ("canceled", None)
    log = settled(sim, training.id)
    assert (log["final"], events(log)) == ("delivered", ["completed"])
    assert [request.prediction["status"] for request in sink.at(path)] == ["canceled"]
    assert client.trainings.cancel(training.id).status == "canceled"  # a second cancel changes nothing
    assert len(sink.at(path)) == 1


def test_a_final_prediction_or_training_is_answered_unchanged_by_cancel(api: httpx.Client, sim: httpx.Client) -> None:
    for kind, created in (("predictions", create(api, duration=0.1)), ("trainings", train(api, duration=0.1))):
        settled(sim, created)
        before = api.get(f"/v1/{kind}/{created}").json()

        answer = api.post(f"/v1/{kind}/{created}/cancel")

        assert (answer.status_code, answer.json()) == (200, before)
        assert before["status"] == "succeeded"


def test_training_final_webhook_is_retried_and_can_be_dropped_like_a_predictions(
    api: httpx.Client, sink: Sink, sim: httpx.Client
) -> None:
    url, path = sink.hook(Answer(500))
    retried = train(api, url, ["completed"], duration=0.1)
    dropped = train(api, sink.hook()[0], ["completed"], duration=0.1, drop_final=True)

    log = settled(sim, retried)
    assert (log["final"], [d["status_code"] for d in log["deliveries"]]) == ("delivered", [500, 200])
    assert len({request.webhook_id for request in sink.at(path)}) == 1
    assert settled(sim, dropped)["final"] == "dropped"


def test_failed_training_has_an_error_and_no_weights(api: httpx.Client, sim: httpx.Client) -> None:
    training_id = train(api, duration=0.1, outcome="failed", error="loss went to NaN")
    settled(sim, training_id)

    body = api.get(f"/v1/trainings/{training_id}").json()
    assert (body["status"], body["error"], body["output"]) == ("failed", "loss went to NaN", None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input": {}}, "destination"),
        ({"destination": "tuned", "input": {}}, "destination"),
        ({"destination": "acme/", "input": {}}, "destination"),
        ({"destination": 7, "input": {}}, "destination"),
        ({"destination": "acme/tuned"}, "input"),
        ({"destination": "acme/tuned", "input": {}, "webhook_events_filter": ["done"]}, "webhook_events_filter"),
        ({"destination": "acme/tuned", "input": {"sim_files": 2}}, "input.sim_files"),
        ({"destination": "acme/tuned", "input": {"sim_weights_bytes": 0}}, "input.sim_weights_bytes"),
        ({"destination": "acme/tuned", "input": {"sim_typo": 1}}, "input.sim_typo"),
    ],
)
def test_invalid_create_trainings_are_422_naming_the_field(api: httpx.Client, body: dict[str, Any], field: str) -> None:
    response = api.post(f"/v1/models/acme/base/versions/{'a' * 64}/trainings", json=body)

    assert response.status_code == 422
    assert [problem["field"] for problem in response.json()["invalid_fields"]] == [field]


def test_a_training_only_key_on_a_prediction_is_422(api: httpx.Client) -> None:
    response = api.post("/v1/predictions", json={"version": "v", "input": {"sim_weights_bytes": 10}})

    assert response.status_code == 422
    assert "training only" in response.json()["detail"]


# Deadlines (Cancel-After) ------------------------------------------------------------------------

CREATE_ROUTES = [
    ("/v1/predictions", {"version": "d" * 64}),
    ("/v1/models/acme/restorer/predictions", {}),
    ("/v1/deployments/acme/prod/predictions", {}),
]


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("1m", 60),
        ("30s", 30),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("2h", 7200),
        (" 5s ", 5),
        ("1m1ms", 60.001),
    ],
)
def test_cancel_after_reads_go_style_durations(header: str, seconds: float) -> None:
    assert parse_duration(header) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "header", ["", "10", "1d", "-1s", "0s", "0m0s", "1m 30s", "s", "1.s", "5 minutes", "1" * 70 + "s"]
)
def test_malformed_cancel_after_is_400_on_every_create_route_and_creates_nothing(
    api: httpx.Client, sim: httpx.Client, header: str
) -> None:
    before = sim.get("/_sim/health").json()["predictions"]
    for path, body in CREATE_ROUTES:
        response = api.post(path, json={**body, "input": {}}, headers={"Cancel-After": header})

        assert response.status_code == 400, path
        assert "Cancel-After" in response.json()["detail"]
    assert sim.get("/_sim/health").json()["predictions"] == before


@pytest.mark.parametrize(("path", "body"), CREATE_ROUTES)
def test_deadline_before_the_start_aborts_and_sends_the_aborted_completed_webhook(
    api: httpx.Client, sink: Sink, sim: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    url, hook = sink.hook()
    request = {**body, "input": {"sim_start_delay": 5, "sim_duration": 6}, "webhook": url}
    request["webhook_events_filter"] = ["start", "completed"]
    prediction_id = api.post(path, json=request, headers={"Cancel-After": "200ms"}).json()["id"]
    log = settled(sim, prediction_id)

    body = api.get(f"/v1/predictions/{prediction_id}").json()
    assert (body["status"], body["started_at"], body["output"], body["metrics"]) == ("aborted", None, None, {})
    assert body["completed_at"] is not None
    assert (log["final"], events(log)) == ("delivered", ["start", "completed"])
    assert [request.prediction["status"] for request in sink.at(hook)] == ["starting", "aborted"]


@pytest.mark.parametrize(("path", "body"), CREATE_ROUTES)
def test_deadline_while_running_cancels_and_sends_the_canceled_completed_webhook(
    api: httpx.Client, sink: Sink, sim: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    url, hook = sink.hook()
    request = {**body, "input": {"sim_start_delay": 0, "sim_duration": 30, "sim_logs": 0}, "webhook": url}
    request["webhook_events_filter"] = ["completed"]
    prediction_id = api.post(path, json=request, headers={"Cancel-After": "300ms"}).json()["id"]
    log = settled(sim, prediction_id)

    body = api.get(f"/v1/predictions/{prediction_id}").json()
    assert (body["status"], body["output"]) == ("canceled", None)
    assert body["started_at"] is not None
    assert body["metrics"]["predict_time"] > 0
    assert log["final"] == "delivered"
    assert [request.prediction["status"] for request in sink.at(hook)] == ["canceled"]


def test_a_prediction_finishing_before_its_deadline_succeeds(api: httpx.Client, sim: httpx.Client) -> None:
    request = {"version": "e" * 64, "input": {"sim_duration": 0.2}}
    prediction_id = api.post("/v1/predictions", json=request, headers={"Cancel-After": "1m"}).json()["id"]
    settled(sim, prediction_id)

    assert api.get(f"/v1/predictions/{prediction_id}").json()["status"] == "succeeded"


def test_start_delay_longer_than_the_run_is_422(api: httpx.Client) -> None:
    response = api.post("/v1/predictions", json={"version": "v", "input": {"sim_start_delay": 3, "sim_duration": 2}})

    assert response.status_code == 422
    assert [problem["field"] for problem in response.json()["invalid_fields"]] == ["input.sim_start_delay"]


# Rate limits -------------------------------------------------------------------------------------


def test_throttle_answers_429_on_every_create_route_with_the_retry_after_asked(
    api: httpx.Client, sim: httpx.Client
) -> None:
    creates = [*CREATE_ROUTES, (f"/v1/models/acme/base/versions/{'a' * 64}/trainings", {"destination": "acme/tuned"})]
    change = {"throttle_requests": len(creates), "throttle_scope": "creates", "throttle_retry_after_seconds": 7}
    sim.post("/_sim/config", json=change).raise_for_status()

    answers = []
    for path, body in creates:
        answers.append(api.post(path, json={**body, "input": {"sim_duration": 0.1}}))
        assert api.get("/v1/predictions").status_code == 200  # other calls are not in the "creates" scope

    assert [answer.status_code for answer in answers] == [429] * len(creates)
    assert {answer.headers["retry-after"] for answer in answers} == {"7"}
    assert "~7s" in answers[0].json()["detail"]
    assert sim.get("/_sim/config").json()["throttle_requests"] == 0
    assert api.post(creates[-1][0], json={**creates[-1][1], "input": {}}).status_code == 201


# Controls, plan and shutdown -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"duplicate_probability": 1.5},
        {"drop_final": "yes"},
        {"retry_delays": [1, -1]},
        {"seed": 1.5},
        {"no_such_switch": 1},
        {"throttle_scope": "reads"},
        {"throttle_retry_after_seconds": -1},
    ],
)
def test_invalid_config_changes_are_422_and_change_nothing(sim: httpx.Client, change: dict[str, Any]) -> None:
    before = sim.get("/_sim/config").json()

    response = sim.post("/_sim/config", json=change)

    assert response.status_code == 422
    assert next(iter(change)) in response.json()["detail"]
    assert sim.get("/_sim/config").json() == before


def test_health_answers_ok(sim: httpx.Client) -> None:
    assert sim.get("/_sim/health").json()["status"] == "ok"


def test_stats_count_every_api_call_by_handler_and_by_prediction(api: httpx.Client, sim: httpx.Client) -> None:
    before = sim.get("/_sim/stats").json()["calls"]
    prediction_id = create(api, duration=0.1)
    for _ in range(3):
        api.get(f"/v1/predictions/{prediction_id}").raise_for_status()
    assert api.get("/v1/predictions/nosuchprediction").status_code == 404
    assert httpx.get(f"{sim.base_url}/v1/predictions/{prediction_id}").status_code == 401  # refused: still a call
    sim.get(f"/p/{prediction_id}").raise_for_status()  # the public web URL is not an API call

    stats = sim.get("/_sim/stats").json()

    added = {call: count - before.get(call, 0) for call, count in stats["calls"].items()}
    assert {call: count for call, count in added.items() if count} == {"create_prediction": 1, "get_prediction": 5}
    assert stats["calls_by_prediction"][prediction_id] == {"get_prediction": 4}
    assert stats["calls_by_prediction"]["nosuchprediction"] == {"get_prediction": 1}


def test_plan_spreads_logs_and_outputs_between_processing_and_the_finish() -> None:
    steps = plan(Behaviour(duration=2.0, files=3, logs=4))

    assert steps[0].kind == "processing"
    assert steps[-1].kind == "finish"
    assert steps[-1].at == 2.0
    assert [step.kind for step in steps].count("log") == 4
    assert [step.value for step in steps if step.kind == "file"] == ["0-output.png", "1-output.png", "2-output.png"]
    assert [step.at for step in steps] == sorted(step.at for step in steps)
    assert all(steps[0].at < step.at < 2.0 for step in steps[1:-1])


def test_plan_starts_processing_after_the_start_delay_and_ends_at_the_duration() -> None:
    steps = plan(Behaviour(duration=2.0, start_delay=1.5, logs=2, files=1))

    assert (steps[0].kind, steps[0].at) == ("processing", 1.5)
    assert all(1.5 < step.at < 2.0 for step in steps[1:-1])
    assert (steps[-1].kind, steps[-1].at) == ("finish", 2.0)


def test_plan_of_a_training_has_no_output_before_the_finish() -> None:
    kinds = [step.kind for step in plan(Behaviour(files=3, tokens=4, logs=2), "training")]

    assert kinds == ["processing", "log", "log", "finish"]


@pytest.mark.parametrize("outcome", ["failed", "canceled"])
def test_plan_of_an_unsuccessful_run_produces_no_output(outcome: str) -> None:
    kinds = {step.kind for step in plan(Behaviour(outcome=outcome, files=3, logs=2))}

    assert kinds == {"processing", "log", "finish"}


@pytest.mark.parametrize(("seed", "same"), [(7, True), (8, False)])
def test_a_seed_fixes_prediction_ids(seed: int, same: bool) -> None:
    async def ids(seed: int) -> list[str]:
        simulator = Simulator(secrets=[SECRET], config=SimConfig(seed=seed))
        await simulator.start()
        try:
            request = parse_create({"version": "v", "input": {"sim_duration": 0}})
            return [simulator.create(request, "http://127.0.0.1:1").prediction.id for _ in range(3)]
        finally:
            await simulator.stop()

    assert (asyncio.run(ids(7)) == asyncio.run(ids(seed))) is same


def test_shutdown_cancels_running_predictions_and_retries_promptly(sink: Sink) -> None:
    config = SimConfig(retry_delays=(30.0,))
    running = Served(create_app(Simulator(secrets=[SECRET], config=config)))
    running.start()
    url, _ = sink.hook(Answer(500))
    headers = {"Authorization": "Bearer test-token"}
    for duration in (60, 0):  # one still running, one waiting 30 s to retry its completed webhook
        body = {
            "version": "v",
            "input": {"sim_duration": duration},
            "webhook": url,
            "webhook_events_filter": ["completed"],
        }
        httpx.post(f"{running.url}/v1/predictions", json=body, headers=headers).raise_for_status()
    wait_until(lambda: len(sink.at(url.removeprefix(sink.url("")))) == 1)

    assert running.stop() < 3
    assert not running.thread.is_alive()
