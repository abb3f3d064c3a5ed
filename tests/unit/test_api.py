"""The API (api/): hostile input, the ID-token check, idempotency decisions, the cursor, the
settings and the checked-in OpenAPI document, all in process.

api/main.py is served by functions-framework's Flask app as deployed; behind it, JobsApi runs with
an in-memory idempotency store and a submitter that records calls (the Firestore and Replicate
paths run for real in tests/integration/test_api.py). Tokens are minted with a local RSA key and
served by a fake of Google's certificate endpoint, as in test_push_auth.py.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import ModuleType, SimpleNamespace
from typing import Any, Unpack

import flask
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from api import errors
from api.auth import ApiAuthenticator
from api.core import JobsApi, field_errors, parse_create
from api.idempotency import (
    Claimed,
    InProgress,
    Proceed,
    Replay,
    Resume,
    Reused,
    decide,
    fingerprint,
    key_id,
)
from api.listing import Cursor, InvalidCursor
from api.models import CreateJob, parse_deadline
from api.openapi import DOCUMENT, render
from api.settings import ApiSettings
from replicate_relay import telemetry
from replicate_relay.config import ConfigError
from replicate_relay.errors import JobAlreadyFinal, JobNotFound
from replicate_relay.jobs import Job
from replicate_relay.oidc import GoogleCerts
from replicate_relay.replicate_api import DeploymentRef, ModelRef, ReplicateAPIError
from replicate_relay.serve import PerProcess
from replicate_relay.submit import JobOptions
from tests.unit.test_push_auth import REPO_ROOT, FakeGoogle, load_function, mint

AUDIENCE = "https://api-abcdefghij-uc.a.run.app"
APP_ACCOUNT = "next-app@unit-test-project.iam.gserviceaccount.com"
MAX_BODY = 4096
ENV = {
    "RELAY_PROJECT": "unit-test-project",
    "REPLICATE_API_TOKEN": "r8_unit",
    "RELAY_WEBHOOK_URL": "https://receiver.example/",
    "RELAY_API_INVOKERS": APP_ACCOUNT,
    "RELAY_API_AUDIENCE": AUDIENCE,
    "RELAY_API_MAX_BODY_BYTES": str(MAX_BODY),
}
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BODY = {"model": "acme/upscaler", "input": {"image": "https://example.com/a.png"}, "metadata": {"order": "A-1"}}


# ---- in-memory stand-ins for the two boundaries JobsApi writes through ----


@dataclass
class MemoryIdempotency:
    """IdempotencyStore's contract over a dict, deciding with the same pure `decide`."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    now: datetime = NOW

    def claim(self, key: str, request: str, *, caller: str | None) -> Claimed:
        key = key_id(key, caller)
        decided = decide(self.records.get(key), request, self.now)
        if decided is not None:
            return decided
        job_id = f"job{len(self.records) + 1}"
        self.records[key] = {
            "fingerprint": request,
            "state": "in_progress",
            "job_id": job_id,
            "lease_until": self.now + timedelta(seconds=60),
            "expire_at": self.now + timedelta(hours=24),
        }
        return Proceed(job_id)

    def answer(self, key: str, status: int, body: Mapping[str, Any], *, caller: str | None) -> None:
        self.records[key_id(key, caller)].update(state="answered", status=status, body=json.dumps(body))


@dataclass
class RecordingSubmitter:
    """Submitter's contract, recording each call; `jobs` holds what `cancel` finds."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    events_filter: tuple[str, ...] = ("start", "output", "logs", "completed")
    jobs: dict[str, Job] = field(default_factory=dict)
    apps: list[str | None] = field(default_factory=list)  # the `app` of each submission

    def submit(
        self,
        target: ModelRef | DeploymentRef,
        input: dict[str, Any],
        **options: Unpack[JobOptions],
    ) -> Job:
        job_id, deadline, app = options.get("job_id"), options.get("deadline"), options.get("app")
        call = {"model": str(target), "input": input, "metadata": dict(options.get("metadata") or {}), "job_id": job_id}
        self.apps.append(app)
        if isinstance(target, DeploymentRef):
            call["deployment"] = call.pop("model")
        self.calls.append({**call, **({"deadline": deadline} if deadline else {})})
        deployment = str(target) if isinstance(target, DeploymentRef) else None
        model = None if deployment else str(target)
        return Job(
            job_id=job_id or "j1",
            prediction_id=f"p{len(self.calls)}",
            source="submit",
            model=model,
            deployment=deployment,
            input=input,
            deadline_at=NOW + deadline if deadline else None,
            app=app,
        )

    def submit_training(
        self,
        version: ModelRef,
        *,
        destination: str,
        input: dict[str, Any],
        **options: Unpack[JobOptions],
    ) -> Job:
        job_id, deadline, app = options.get("job_id"), options.get("deadline"), options.get("app")
        self.apps.append(app)
        self.calls.append(
            {"version": version, "destination": destination, "input": input, "job_id": job_id, "deadline": deadline}
        )
        return Job(
            job_id=job_id or "t1", prediction_id="tr1", source="submit", kind="training", model=str(version), app=app
        )

    def cancel(self, job_id: str) -> Job:
        self.calls.append({"cancel": job_id})
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"there is no job {job_id}")
        if job.is_terminal:
            raise JobAlreadyFinal(job)
        if job.metadata.get("replicate") == "down":
            raise ReplicateAPIError("Replicate answered 503", status=503)
        return job.model_copy(update={"cancel_requested_at": job.cancel_requested_at or NOW})


@dataclass
class MemoryStore:
    jobs: dict[str, Job] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)  # the ids looked up

    def load(self, job_id: str) -> Job | None:
        self.loaded.append(job_id)
        return self.jobs.get(job_id)

    def resolve(self, job: Job) -> Job:
        return job


@dataclass
class Served:
    client: flask.testing.FlaskClient
    module: ModuleType
    submitter: RecordingSubmitter
    idempotency: MemoryIdempotency
    endpoint: FakeGoogle


def serve(monkeypatch: pytest.MonkeyPatch, environ: Mapping[str, str]) -> Served:
    app, module = load_function(monkeypatch, "api/main.py", "api", environ, unset=("RELAY_API_AUTH",))
    endpoint = FakeGoogle()
    monkeypatch.setattr(module, "AUTH", ApiAuthenticator(module.SETTINGS.auth, certs=GoogleCerts(endpoint)))
    submitter, idempotency = RecordingSubmitter(), MemoryIdempotency()
    # One set of jobs: those the API reads (and checks the caller of) are those the submitter cancels.
    jobs_api = JobsApi(store=MemoryStore(submitter.jobs), submitter=submitter, idempotency=idempotency, firestore=None)  # type: ignore[arg-type]
    monkeypatch.setattr(module, "_JOBS_API", PerProcess(lambda: jobs_api))
    return Served(app.test_client(), module, submitter, idempotency, endpoint)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Served:
    return serve(monkeypatch, ENV)


def token(**changes: Any) -> dict[str, str]:
    claims = {"aud": AUDIENCE, "email": APP_ACCOUNT, **changes}
    return {"Authorization": f"Bearer {mint(**claims)}"}


def post(served: Served, body: bytes | Any, *, headers: Mapping[str, str] | None = None, **options: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return served.client.post(
        "/v1/jobs",
        data=data,
        headers={"Content-Type": "application/json", **token(), **(headers or {})},
        **options,
    )


def problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json(force=True)
    assert body["type"] == f"urn:replicate-relay:problem:{slug}"
    assert body["status"] == status
    assert {"title", "detail", "instance"} <= set(body)
    return body


# ---- the happy path in process ----


def test_a_valid_submission_with_a_valid_token_is_created_201_with_the_job_and_its_location(served: Served) -> None:
    response = post(served, BODY)
    assert response.status_code == 201
    body = response.get_json()
    assert (body["job_id"], body["prediction_id"], body["state"]) == ("j1", "p1", "submitted")
    assert response.headers["Location"] == "/v1/jobs/j1"
    assert served.submitter.calls == [
        {"model": "acme/upscaler", "input": BODY["input"], "metadata": {"order": "A-1"}, "job_id": None}
    ]


def test_health_needs_no_token(served: Served) -> None:
    assert served.client.get("/health").status_code == 200


def test_a_request_carrying_traceparent_has_its_server_span_in_the_callers_trace(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "tracer", lambda: provider.get_tracer("relay"))
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    # As an instrumented caller sends it: lower-case, which Werkzeug hands on as `Traceparent`.
    response = post(served, BODY, headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert response.status_code == 201
    [span] = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER]
    assert span.name == "POST /v1/jobs"
    assert f"{span.get_span_context().trace_id:032x}" == trace_id
    assert span.parent is not None
    assert (span.parent.is_remote, f"{span.parent.span_id:016x}") == (True, parent_id)


# ---- deployments, deadlines, trainings and cancel ----

TRAINER = "ostris/flux-dev-lora-trainer:e440909d3512"
TRAINING = {"version": TRAINER, "destination": "acme/my-style", "input": {"input_images": "https://example.com/a.zip"}}


def post_training(served: Served, body: Any, *, headers: Mapping[str, str] | None = None) -> Any:
    return served.client.post(
        "/v1/trainings",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **token(), **(headers or {})},
    )


def cancel(served: Served, job_id: str) -> Any:
    return served.client.post(f"/v1/jobs/{job_id}/cancel", headers=token())


def test_a_deployment_is_submitted_as_a_deployment_and_named_on_the_job(served: Served) -> None:
    response = post(served, {"deployment": "acme/upscaler-prod", "input": {"image": "x"}})
    assert response.status_code == 201, response.get_data(as_text=True)
    assert (response.get_json()["deployment"], response.get_json()["model"]) == ("acme/upscaler-prod", None)
    assert served.submitter.calls == [
        {"deployment": "acme/upscaler-prod", "input": {"image": "x"}, "metadata": {}, "job_id": None}
    ]


@pytest.mark.parametrize(
    "sent",
    [
        {"input": {}},
        {"model": "acme/upscaler", "deployment": "acme/upscaler-prod", "input": {}},
    ],
    ids=["neither", "both"],
)
def test_not_exactly_one_of_model_and_deployment_is_a_422_naming_both(served: Served, sent: Any) -> None:
    body = problem(post(served, sent), 422, "validation-error")
    assert [entry["field"] for entry in body["errors"]] == ["model", "deployment"]
    assert served.submitter.calls == []


@pytest.mark.parametrize("deployment", ["acme/upscaler-prod:abc123", "upscaler", "acme/up/scaler", "", 7, None])
def test_a_deployment_that_is_not_owner_slash_name_is_a_422(served: Served, deployment: Any) -> None:
    body = problem(post(served, {"deployment": deployment, "input": {}}), 422, "validation-error")
    assert "deployment" in [entry["field"] for entry in body["errors"]]


def test_a_deadline_reaches_the_submitter_as_a_duration_and_the_job_as_deadline_at(served: Served) -> None:
    response = post(served, {**BODY, "deadline": "1h30m"})
    assert response.status_code == 201
    assert served.submitter.calls[0]["deadline"] == timedelta(hours=1, minutes=30)
    assert response.get_json()["deadline_at"] == "2026-03-01T13:30:00Z"


@pytest.mark.parametrize("deadline", ["0s", "0h0m", "30", "1d", "-5m", "1.5h", "m", "off", "1H", "30m\n", "", 1800])
def test_a_deadline_that_is_not_a_positive_duration_is_a_422_naming_it(served: Served, deadline: Any) -> None:
    body = problem(post(served, {**BODY, "deadline": deadline}), 422, "validation-error")
    assert [entry["field"] for entry in body["errors"]] == ["deadline"]
    assert served.submitter.calls == []


def test_parse_deadline_reads_hours_minutes_and_seconds_in_that_order() -> None:
    assert parse_deadline("90s") == timedelta(seconds=90)
    assert parse_deadline("2h") == timedelta(hours=2)
    assert parse_deadline("9999h999999m99999999s") > timedelta(days=365)  # the largest the schema allows
    with pytest.raises(ValueError, match="30m, 1h30m or 90s"):
        parse_deadline("30s1m")


def test_a_training_is_submitted_with_its_version_and_destination_and_answered_as_a_job(served: Served) -> None:
    response = post_training(served, {**TRAINING, "deadline": "6h"})
    assert response.status_code == 201, response.get_data(as_text=True)
    job = response.get_json()
    assert (job["kind"], job["job_id"]) == ("training", "t1")
    assert response.headers["Location"] == "/v1/jobs/t1"
    assert served.submitter.calls == [
        {
            "version": ModelRef("ostris", "flux-dev-lora-trainer", "e440909d3512"),
            "destination": "acme/my-style",
            "input": TRAINING["input"],
            "job_id": None,
            "deadline": timedelta(hours=6),
        }
    ]


@pytest.mark.parametrize(
    ("sent", "field_name"),
    [
        ({**TRAINING, "version": "ostris/flux-dev-lora-trainer"}, "version"),
        ({**TRAINING, "destination": "acme/my-style:abc"}, "destination"),
        ({"version": TRAINER, "input": {}}, "destination"),
        ({"destination": "acme/my-style", "input": {}}, "version"),
        ({**TRAINING, "model": "acme/upscaler"}, "model"),
        ({**TRAINING, "deadline": "0s"}, "deadline"),
    ],
    ids=["version-without-id", "destination-with-version", "no-destination", "no-version", "model", "zero-deadline"],
)
def test_an_invalid_training_is_a_422_naming_the_field(served: Served, sent: Any, field_name: str) -> None:
    body = problem(post_training(served, sent), 422, "validation-error")
    assert field_name in [entry["field"] for entry in body["errors"]], body
    assert served.submitter.calls == []


def test_a_training_retried_with_its_key_is_replayed_and_the_key_cannot_submit_a_prediction(served: Served) -> None:
    first = post_training(served, TRAINING, headers={"Idempotency-Key": "t-1"})
    again = post_training(served, TRAINING, headers={"Idempotency-Key": "t-1"})
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotency-Replayed"] == "true"
    assert len(served.submitter.calls) == 1
    problem(post(served, BODY, headers={"Idempotency-Key": "t-1"}), 422, "idempotency-key-reused")
    assert len(served.submitter.calls) == 1


def test_a_cancel_is_202_with_the_job_and_again_202_while_it_is_open(served: Served) -> None:
    served.submitter.jobs["j5"] = Job(job_id="j5", prediction_id="p5", state="processing", app=APP_ACCOUNT)
    for _ in range(2):
        response = cancel(served, "j5")
        assert response.status_code == 202, response.get_data(as_text=True)
        assert response.get_json()["cancel_requested_at"] == "2026-03-01T12:00:00Z"
        assert response.headers["Location"] == "/v1/jobs/j5"
    assert served.submitter.calls == [{"cancel": "j5"}, {"cancel": "j5"}]


@pytest.mark.parametrize("state", ["succeeded", "failed", "canceled", "aborted"])
def test_a_cancel_of_a_final_job_is_a_409_naming_it(served: Served, state: str) -> None:
    served.submitter.jobs["j6"] = Job(job_id="j6", state=state, app=APP_ACCOUNT)
    body = problem(cancel(served, "j6"), 409, "job-final")
    assert body["job_id"] == "j6"
    assert state in body["detail"]


def test_a_cancel_replicate_cannot_be_asked_for_is_a_502_naming_the_job(served: Served) -> None:
    served.submitter.jobs["j7"] = Job(
        job_id="j7", prediction_id="p7", state="starting", metadata={"replicate": "down"}, app=APP_ACCOUNT
    )
    body = problem(cancel(served, "j7"), 502, "replicate-unavailable")
    assert body["job_id"] == "j7"
    assert "send it again" in body["detail"]


@pytest.mark.parametrize(("job_id", "looked_up"), [("nope", True), ("__x__", False), ("a.b..", True)])
def test_a_cancel_of_no_job_is_a_404_and_an_id_no_job_can_have_is_not_looked_up(
    served: Served, job_id: str, looked_up: bool
) -> None:
    problem(cancel(served, job_id), 404, "not-found")
    assert served.module._JOBS_API.get().store.loaded == ([job_id] if looked_up else [])
    assert served.submitter.calls == []


# ---- hostile input: a precise 4xx naming the field, never a 500, never a submission ----


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"{", "not valid JSON"),
        (b'{"model": "a/b", "input": {}', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"model": "a/b", "input": {"x": NaN}}', "NaN"),
        (b'{"model": "a/b", "input": {"x": 1' + b"9" * 5000 + b"}}", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "too deeply"),
        (b"", "not valid JSON"),
    ],
    ids=["truncated", "unclosed", "not-utf8", "nan", "huge-integer", "deep-nesting", "empty"],
)
def test_bad_json_is_a_400(monkeypatch: pytest.MonkeyPatch, raw: bytes, detail: str) -> None:
    served = serve(monkeypatch, {**ENV, "RELAY_API_MAX_BODY_BYTES": str(1024 * 1024)})
    body = problem(post(served, raw), 400, "malformed-json")
    assert detail in body["detail"]
    assert served.submitter.calls == []


@pytest.mark.parametrize(
    ("sent", "field_name"),
    [
        ({**BODY, "model": "upscaler"}, "model"),
        ({**BODY, "model": "acme/up/scaler"}, "model"),
        ({**BODY, "model": "acme/upscaler:"}, "model"),
        ({**BODY, "model": "acme /upscaler"}, "model"),
        ({**BODY, "model": "../../etc/passwd"}, "model"),
        ({**BODY, "model": 42}, "model"),
        ({"input": {}}, "model"),
        ({"model": "acme/upscaler"}, "input"),
        ({**BODY, "input": ["not", "an", "object"]}, "input"),
        ({**BODY, "metadata": {"order": 7}}, "metadata.order"),
        ({**BODY, "metadata": {str(i): "x" for i in range(65)}}, "metadata"),
        ({**BODY, "metadata": {"": "x"}}, "metadata..[key]"),
        ({**BODY, "metadata": {"__name__": "x"}}, "metadata.__name__.[key]"),
        ({**BODY, "metadata": {"k" * 257: "x"}}, f"metadata.{'k' * 257}.[key]"),
        ({**BODY, "metadata": {"order": "x" * 1025}}, "metadata.order"),
        ({**BODY, "metadata": {"order": "\ud800"}}, "metadata.order"),
        ({**BODY, "input": {"image": ["ok", {"deep": "a\ud800"}]}}, "input"),
        ({**BODY, "input": {"\udc00": 1}}, "input"),
        ({**BODY, "webhook_events": ["start"]}, "webhook_events"),
        ({**BODY, "webhook_events": ["completed", "everything"]}, "webhook_events.1"),
        ({**BODY, "webhook": "https://attacker.example/"}, "webhook"),
        (["a", "list"], "body"),
        ("a string", "body"),
    ],
    ids=[
        "model-no-owner",
        "model-two-slashes",
        "model-empty-version",
        "model-space",
        "model-traversal",
        "model-number",
        "model-missing",
        "input-missing",
        "input-list",
        "metadata-number",
        "metadata-too-many",
        "metadata-empty-key",
        "metadata-reserved-key",
        "metadata-long-key",
        "metadata-long-value",
        "metadata-surrogate-value",
        "input-surrogate-value",
        "input-surrogate-key",
        "events-without-completed",
        "events-unknown",
        "unknown-field",
        "body-list",
        "body-string",
    ],
)
def test_an_invalid_field_is_a_422_naming_it(served: Served, sent: Any, field_name: str) -> None:
    body = problem(post(served, sent), 422, "validation-error")
    assert field_name in [entry["field"] for entry in body["errors"]], body
    assert served.submitter.calls == []


def test_a_metadata_key_with_a_lone_surrogate_is_a_422_in_utf_8(served: Served) -> None:
    """json.loads lets "\\udfff" through; the key cannot be stored (nor encoded as UTF-8), and the
    answer naming it is valid UTF-8 (pydantic replaces what cannot be encoded in the path)."""
    response = post(served, {**BODY, "metadata": {"a\udfff": "x"}})
    response.get_data().decode("utf-8")
    body = problem(response, 422, "validation-error")
    [error] = body["errors"]
    assert error["field"].startswith("metadata.a")
    assert error["field"].endswith(".[key]")
    assert error["message"] == "the key must be Unicode text: character 1 is a lone surrogate ('\\udfff')"


def test_an_unknown_model_format_names_model_and_says_what_it_should_look_like(served: Served) -> None:
    body = problem(post(served, {**BODY, "model": "upscaler"}), 422, "validation-error")
    assert body["errors"] == [{"field": "model", "message": "must look like OWNER/NAME or OWNER/NAME:VERSION"}]


def test_a_body_over_the_limit_is_a_413_by_content_length(served: Served) -> None:
    huge = {**BODY, "input": {"image": "data:image/png;base64," + "A" * MAX_BODY}}
    problem(post(served, huge), 413, "payload-too-large")
    assert served.submitter.calls == []


def test_a_chunked_body_over_the_limit_is_a_413_while_reading(served: Served) -> None:
    """No Content-Length (chunked): the limit is enforced on what is read, and reading stops there."""
    stream = io.BytesIO(b'{"model": "a/b", "input": {"x": "' + b"A" * (10 * MAX_BODY) + b'"}}')
    chunked = SimpleNamespace(content_length=None, stream=stream)
    with pytest.raises(errors.PayloadTooLarge):
        served.module.read_body(chunked, MAX_BODY)
    assert stream.tell() <= MAX_BODY + 64 * 1024
    small = SimpleNamespace(content_length=None, stream=io.BytesIO(b"{}"))
    assert served.module.read_body(small, MAX_BODY) == b"{}"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""])
def test_a_body_that_is_not_json_by_content_type_is_a_415(served: Served, content_type: str) -> None:
    response = served.client.post("/v1/jobs", data=json.dumps(BODY), headers={"Content-Type": content_type, **token()})
    problem(response, 415, "unsupported-media-type")


def test_json_with_a_charset_or_a_json_suffix_type_is_accepted(served: Served) -> None:
    for content_type in ("application/json; charset=utf-8", "application/vnd.relay+json"):
        response = served.client.post(
            "/v1/jobs", data=json.dumps(BODY), headers={"Content-Type": content_type, **token()}
        )
        assert response.status_code == 201, content_type


@pytest.mark.parametrize(
    ("path", "method", "status", "slug"),
    [
        ("/v1/jobs", "DELETE", 405, "method-not-allowed"),
        ("/v1/jobs/j1", "POST", 405, "method-not-allowed"),
        ("/v1/jobs/j1/cancel", "GET", 405, "method-not-allowed"),
        ("/v1/jobs/j1/cancel/now", "POST", 404, "not-found"),
        ("/v1/trainings", "GET", 405, "method-not-allowed"),
        ("/v1/jobs/nope", "GET", 404, "not-found"),
        ("/v1/jobs/..", "GET", 404, "not-found"),
        ("/v1/jobs/" + "x" * 2000, "GET", 404, "not-found"),
        ("/v2/jobs", "GET", 404, "not-found"),
        ("/v1/jobs?limit=0", "GET", 400, "invalid-parameter"),
        ("/v1/jobs?limit=101", "GET", 400, "invalid-parameter"),
        ("/v1/jobs?limit=" + "9" * 5000, "GET", 400, "invalid-parameter"),
        ("/v1/jobs?state=done", "GET", 400, "invalid-parameter"),
        ("/v1/jobs?cursor=not-a-cursor", "GET", 400, "invalid-parameter"),
    ],
)
def test_bad_paths_and_parameters_are_precise_problems(
    served: Served, path: str, method: str, status: int, slug: str
) -> None:
    problem(served.client.open(path, method=method, headers=token()), status, slug)


def test_a_405_names_the_allowed_methods(served: Served) -> None:
    assert served.client.delete("/v1/jobs", headers=token()).headers["Allow"] == "GET, HEAD, POST"


@pytest.mark.parametrize("path", ["/v1/jobs/a%0Ab", "/v1/jobs/%0D", "/robots.txt", "/favicon.ico"])
def test_paths_functions_framework_does_not_route_are_404_problems_too(served: Served, path: str) -> None:
    """Its route's `<path:path>` matches no newline, and it keeps two paths for itself: Flask's HTML
    404 page would be an answer the OpenAPI document does not describe."""
    problem(served.client.get(path, headers=token()), 404, "not-found")


def test_a_stored_lone_surrogate_is_answered_as_its_json_escape(served: Served) -> None:
    """A job may hold a string that is not Unicode text (a webhook's `\\udc00` escape): the answer
    is still UTF-8 JSON, the character as its escape, rather than a 500."""
    job = Job(job_id="j9", input={"prompt": "caf\u00e9 \udc00"}, metadata={"order": "A-1"}, app=APP_ACCOUNT)
    served.module._JOBS_API.get().store.jobs["j9"] = job
    response = served.client.get("/v1/jobs/j9", headers=token())
    assert response.status_code == 200
    raw = response.get_data()
    assert b"\\udc00" in raw
    assert b"\\u00e9" in raw
    assert json.loads(raw.decode("utf-8"))["input"] == {"prompt": "caf\u00e9 \udc00"}


# ---- the ID token ----


@pytest.mark.parametrize(
    ("headers", "status", "slug", "reason"),
    [
        ({}, 401, "unauthenticated", "missing_token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "unauthenticated", "malformed_token"),
        ({"Authorization": "Bearer not.a.jwt"}, 401, "unauthenticated", "malformed_token"),
        (
            {"Authorization": f"Bearer {mint(aud=AUDIENCE, email=APP_ACCOUNT, exp=1)}"},
            401,
            "unauthenticated",
            "invalid_token",
        ),
        (
            {"Authorization": f"Bearer {mint(aud=AUDIENCE, email=APP_ACCOUNT, iss='https://evil.example')}"},
            401,
            "unauthenticated",
            "wrong_issuer",
        ),
        (
            {"Authorization": f"Bearer {mint(aud='https://other.a.run.app', email=APP_ACCOUNT)}"},
            403,
            "forbidden",
            "wrong_audience",
        ),
        (
            {"Authorization": f"Bearer {mint(aud=AUDIENCE, email='someone@evil.example')}"},
            403,
            "forbidden",
            "wrong_sender",
        ),
        (
            {"Authorization": f"Bearer {mint(aud=AUDIENCE, email=APP_ACCOUNT, email_verified=False)}"},
            403,
            "forbidden",
            "wrong_sender",
        ),
    ],
    ids=["missing", "basic", "not-jwt", "expired", "issuer", "audience", "caller", "unverified"],
)
def test_a_missing_or_invalid_token_is_refused_before_anything_is_read(
    served: Served, headers: dict[str, str], status: int, slug: str, reason: str
) -> None:
    response = served.client.post(
        "/v1/jobs", data=json.dumps(BODY), headers={"Content-Type": "application/json", **headers}
    )
    body = problem(response, status, slug)
    assert body["reason"] == reason
    assert served.submitter.calls == []
    # Nothing about the resources leaks to an unauthenticated caller: 404s and 405s look alike.
    assert served.client.get("/v1/jobs/j1", headers=headers).status_code == status
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_certificates_that_cannot_be_fetched_are_a_503(served: Served) -> None:
    served.endpoint.failure = ConnectionError("down")  # type: ignore[assignment]
    problem(post(served, BODY), 503, "unavailable")


def test_with_auth_off_no_token_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    served = serve(monkeypatch, {**ENV, "RELAY_API_AUTH": "off"})
    response = served.client.post("/v1/jobs", data=json.dumps(BODY), headers={"Content-Type": "application/json"})
    assert response.status_code == 201


# ---- idempotency ----


def test_a_retry_with_the_same_key_and_body_gets_the_first_answer_and_no_second_prediction(served: Served) -> None:
    first = post(served, BODY, headers={"Idempotency-Key": "k-1"})
    # The same body serialised differently (key order, spacing) is the same request.
    reordered = json.dumps(dict(reversed(list(BODY.items()))), indent=2).encode()
    again = post(served, reordered, headers={"Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotency-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert len(served.submitter.calls) == 1
    assert served.submitter.calls[0]["job_id"] == first.get_json()["job_id"]  # chosen before submitting


def test_the_same_key_with_a_different_body_is_a_422(served: Served) -> None:
    assert post(served, BODY, headers={"Idempotency-Key": "k-2"}).status_code == 201
    body = problem(
        post(served, {**BODY, "input": {"image": "other"}}, headers={"Idempotency-Key": "k-2"}),
        422,
        "idempotency-key-reused",
    )
    assert body["errors"][0]["field"] == "Idempotency-Key"
    assert len(served.submitter.calls) == 1


def test_a_request_while_the_first_with_its_key_is_in_progress_is_a_409_with_retry_after(served: Served) -> None:
    request = fingerprint("POST", "/v1/jobs", BODY)
    served.idempotency.claim("k-3", request, caller=APP_ACCOUNT)  # claimed, never answered: still in progress
    response = post(served, BODY, headers={"Idempotency-Key": "k-3"})
    problem(response, 409, "idempotency-key-in-progress")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert served.submitter.calls == []


def test_an_invalid_request_does_not_use_its_key_up(served: Served) -> None:
    problem(post(served, {**BODY, "model": "bad"}, headers={"Idempotency-Key": "k-4"}), 422, "validation-error")
    assert post(served, BODY, headers={"Idempotency-Key": "k-4"}).status_code == 201


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "naïve"])
def test_a_malformed_idempotency_key_is_a_400(served: Served, key: str) -> None:
    problem(post(served, BODY, headers={"Idempotency-Key": key}), 400, "invalid-parameter")


def test_decide_covers_every_state_of_a_key_record() -> None:
    request = fingerprint("POST", "/v1/jobs", BODY)
    live = {"fingerprint": request, "expire_at": NOW + timedelta(hours=1), "job_id": "j9"}
    assert decide(None, request, NOW) is None
    assert decide({**live, "expire_at": NOW}, request, NOW) is None  # expired, not yet removed by the TTL
    assert decide({**live, "fingerprint": "other"}, request, NOW) == Reused()
    assert decide({**live, "state": "answered", "status": 201, "body": '{"job_id":"j9"}'}, request, NOW) == Replay(
        201, {"job_id": "j9"}
    )
    leased = {**live, "state": "in_progress", "lease_until": NOW + timedelta(seconds=10)}
    assert decide(leased, request, NOW) == InProgress(10)
    assert decide({**leased, "lease_until": NOW}, request, NOW) == Resume("j9")


# ---- pieces ----


def test_a_cursor_round_trips_and_refuses_another_filter_or_tampering() -> None:
    cursor = Cursor(NOW, "abc", "succeeded")
    assert Cursor.decode(cursor.encode(), state="succeeded") == cursor
    assert Cursor.decode(Cursor(None, "abc", None).encode(), state=None) == Cursor(None, "abc", None)
    for text, state in [(cursor.encode(), None), ("e30", None), ("!!!", None), (cursor.encode()[:-3], "succeeded")]:
        with pytest.raises(InvalidCursor):
            Cursor.decode(text, state=state)


@pytest.mark.parametrize(
    "forged",
    [
        {"i": ""},  # Firestore: InvalidArgument, a 503
        {"i": "a/b"},  # the client: ValueError, a 500
        {"i": ".."},
        {"i": "__name__"},
        {"i": "a\ud800"},  # cannot be encoded as UTF-8
        {"i": "k" * 1501},
        {"i": 5},
        {"i": {"a": 1}},
        {"c": "2026-03-01T12:00:00"},  # no offset: never made by encode()
        {"c": 5},
        {"s": 5},
        {"v": True},
        {"v": 2},
    ],
    ids=repr,
)
def test_a_forged_cursor_is_refused_before_it_reaches_the_query(forged: dict[str, Any]) -> None:
    """Only what encode() makes: its `i` comes from a stored job's id, its `c` from a Firestore time."""
    data = {"v": 1, "c": NOW.isoformat(), "i": "abc", "s": None, **forged}
    text = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    with pytest.raises(InvalidCursor, match="not a cursor of this API"):
        Cursor.decode(text, state=None)


def test_field_errors_are_dotted_paths() -> None:
    with pytest.raises(errors.ValidationFailed) as raised:
        parse_create(
            json.dumps({"model": "a/b", "input": {}, "metadata": {"k": []}}).encode(), "application/json", CreateJob
        )
    assert raised.value.errors == [{"field": "metadata.k", "message": "Input should be a valid string"}]
    assert callable(field_errors)


def test_auth_off_is_refused_on_cloud_run_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"RELAY_API_AUTH=off .* never on Cloud Run"):
        ApiSettings.from_env({**ENV, "RELAY_API_AUTH": "off", "K_REVISION": "api-00001", "K_CONFIGURATION": "api"})


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"RELAY_API_AUTH": "maybe"}, "RELAY_API_AUTH"),
        ({"RELAY_API_INVOKERS": "not-an-email"}, "RELAY_API_INVOKERS"),
        ({"RELAY_API_OPERATORS": "serviceAccount:ops@example.com"}, "RELAY_API_OPERATORS"),
        ({"RELAY_API_AUDIENCE": "http://plain"}, "RELAY_API_AUDIENCE"),
        ({"RELAY_API_MAX_BODY_BYTES": "99999999"}, "RELAY_API_MAX_BODY_BYTES"),
        ({"RELAY_WEBHOOK_URL": ""}, "RELAY_WEBHOOK_URL"),
    ],
)
def test_a_bad_setting_stops_the_start_naming_its_variable(changes: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        ApiSettings.from_env({**ENV, **changes})


def test_invokers_are_read_from_a_space_or_comma_separated_list() -> None:
    settings = ApiSettings.from_env({**ENV, "RELAY_API_INVOKERS": "a@p.iam.gserviceaccount.com, b@example.com"})
    assert settings.auth.invokers == ("a@p.iam.gserviceaccount.com", "b@example.com")


# ---- apps kept apart: each app reads, lists and cancels its own jobs; operators read all ----

OTHER_APP = "mail-app@unit-test-project.iam.gserviceaccount.com"
OPERATOR = "oncall@example.com"


@pytest.fixture
def two_apps(monkeypatch: pytest.MonkeyPatch) -> Served:
    return serve(
        monkeypatch, {**ENV, "RELAY_API_INVOKERS": f"{APP_ACCOUNT} {OTHER_APP}", "RELAY_API_OPERATORS": OPERATOR}
    )


def test_a_submission_records_the_apps_verified_email_on_the_job(two_apps: Served) -> None:
    response = post(two_apps, BODY, headers=token(email=OTHER_APP))
    assert response.status_code == 201
    assert response.get_json()["app"] == OTHER_APP
    assert two_apps.submitter.apps == [OTHER_APP]


def test_another_apps_job_is_a_404_like_no_job_and_an_operator_reads_it(two_apps: Served) -> None:
    two_apps.submitter.jobs["j1"] = Job(job_id="j1", state="processing", app=APP_ACCOUNT)
    two_apps.submitter.jobs["legacy"] = Job(job_id="legacy", state="processing")  # from the CLI or a webhook
    assert two_apps.client.get("/v1/jobs/j1", headers=token()).status_code == 200
    other = problem(two_apps.client.get("/v1/jobs/j1", headers=token(email=OTHER_APP)), 404, "not-found")
    none = problem(two_apps.client.get("/v1/jobs/j0", headers=token(email=OTHER_APP)), 404, "not-found")
    assert other["detail"].replace("j1", "j0") == none["detail"]  # nothing tells the two apart
    problem(two_apps.client.get("/v1/jobs/legacy", headers=token()), 404, "not-found")
    for job_id in ("j1", "legacy"):
        assert two_apps.client.get(f"/v1/jobs/{job_id}", headers=token(email=OPERATOR)).get_json()["job_id"] == job_id


def test_only_the_app_that_submitted_a_job_cancels_it(two_apps: Served) -> None:
    two_apps.submitter.jobs["j1"] = Job(job_id="j1", prediction_id="p1", state="processing", app=APP_ACCOUNT)
    post_cancel = two_apps.client.post
    problem(post_cancel("/v1/jobs/j1/cancel", headers=token(email=OTHER_APP)), 404, "not-found")
    problem(post_cancel("/v1/jobs/j1/cancel", headers=token(email=OPERATOR)), 403, "forbidden")
    assert two_apps.submitter.calls == []
    assert post_cancel("/v1/jobs/j1/cancel", headers=token()).status_code == 202
    assert two_apps.submitter.calls == [{"cancel": "j1"}]


def test_an_idempotency_key_is_the_callers_own(two_apps: Served) -> None:
    key = {"Idempotency-Key": "order-A-1"}
    first = post(two_apps, BODY, headers=key)
    again = post(two_apps, BODY, headers=key)
    other = post(two_apps, BODY, headers={**key, **token(email=OTHER_APP)})
    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 201)
    assert again.headers["Idempotency-Replayed"] == "true"
    assert "Idempotency-Replayed" not in other.headers
    assert first.get_json()["job_id"] == again.get_json()["job_id"] != other.get_json()["job_id"]
    assert two_apps.submitter.apps == [APP_ACCOUNT, OTHER_APP]


def test_the_dev_caller_header_counts_only_with_auth_off(two_apps: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    two_apps.submitter.jobs["j1"] = Job(job_id="j1", state="processing", app=APP_ACCOUNT)
    pretending = {**token(email=OTHER_APP), "X-Relay-Dev-Caller": APP_ACCOUNT}
    problem(two_apps.client.get("/v1/jobs/j1", headers=pretending), 404, "not-found")

    local = serve(monkeypatch, {**ENV, "RELAY_API_AUTH": "off"})
    local.submitter.jobs["j1"] = Job(job_id="j1", state="processing", app=APP_ACCOUNT)
    assert local.client.get("/v1/jobs/j1").status_code == 200  # the anonymous local caller reads all
    assert local.client.get("/v1/jobs/j1", headers={"X-Relay-Dev-Caller": APP_ACCOUNT}).status_code == 200
    problem(local.client.get("/v1/jobs/j1", headers={"X-Relay-Dev-Caller": OTHER_APP}), 404, "not-found")
    problem(local.client.get("/v1/jobs/j1", headers={"X-Relay-Dev-Caller": "nobody"}), 401, "unauthenticated")


def test_idempotency_records_of_two_callers_and_of_none_are_three_documents() -> None:
    assert len({key_id("k", None), key_id("k", APP_ACCOUNT), key_id("k", OTHER_APP)}) == 3


def test_the_checked_in_openapi_document_is_what_the_code_generates() -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == render(), "run python -m api.openapi (make schemas)"


def test_every_problem_type_is_documented_in_docs_api_md() -> None:
    text = (REPO_ROOT / "docs/API.md").read_text(encoding="utf-8")
    for kind in errors.ALL_PROBLEMS:
        assert f"urn:replicate-relay:problem:{kind.slug}" in text, kind.slug
