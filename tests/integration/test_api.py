"""The API service as `make run` serves it (auth off, the local stack only) against the emulators and
the simulator: submissions become predictions whose webhooks finish the job, idempotency keys hold
under concurrency, listing pages through every job, and every answer these tests get conforms to
the checked-in OpenAPI document for its route and status.
"""

from __future__ import annotations

import concurrent.futures
import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from replicate_relay.devstack.stack import LocalStack
from tests.integration.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = json.loads((ROOT / "schemas" / "openapi.v1.json").read_text())
JOB_SCHEMA = json.loads((ROOT / "schemas" / "job.v1.schema.json").read_text())
QUICK = {"sim_duration": 0.2, "sim_files": 0, "sim_tokens": 2}
MODEL = "acme/upscaler"


def conforms(response: httpx.Response, route: str) -> Any:
    """The response's JSON, once it validates against the OpenAPI document's schema for its route,
    method and status (an undocumented status fails)."""
    operation = OPENAPI["paths"][route][response.request.method.lower()]
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, f"{response.request.method} {route} answered undocumented {response.status_code}"
    if "$ref" in documented:  # a problem type's response, in components.responses
        documented = OPENAPI["components"]["responses"][documented["$ref"].rpartition("/")[2]]
    media_type = response.headers["content-type"].split(";", 1)[0]
    schema = documented["content"][media_type]["schema"]
    body = response.json()
    Draft202012Validator({**schema, "components": OPENAPI["components"]}).validate(body)
    return body


@pytest.fixture
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        yield client


def predictions_created(simulator: httpx.Client) -> int:
    calls = simulator.get("/_sim/stats").json()["calls"]
    return sum(count for name, count in calls.items() if name.startswith("create"))


def submit(api: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    return api.post("/v1/jobs", json=body, headers=headers)


def test_a_submission_becomes_a_job_linked_to_its_prediction_that_the_webhooks_finish(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    created = submit(api, {"model": MODEL, "input": {"prompt": "hi", **QUICK}, "metadata": {"order": "A-1"}})
    assert created.status_code == 201, created.text
    job = conforms(created, "/v1/jobs")
    assert job["prediction_id"]
    assert job["state"] == "submitted"
    assert job["source"] == "submit"
    assert job["metadata"] == {"order": "A-1"}
    assert created.headers["location"] == f"/v1/jobs/{job['job_id']}"

    def finished() -> dict[str, Any] | None:
        response = api.get(f"/v1/jobs/{job['job_id']}")
        body = conforms(response, "/v1/jobs/{job_id}")
        return body if body["state"] == "succeeded" else None

    final = wait_for(finished, what="the job to succeed")
    assert final["prediction_id"] == job["prediction_id"]
    assert final["output_value"]  # the simulator's text output
    # The JSON form the published schema describes, RFC 3339 timestamps included.
    Draft202012Validator(JOB_SCHEMA).validate(final)
    assert final["created_at"].endswith("Z") or "+00:00" in final["created_at"]


def test_webhook_events_chosen_per_request_reach_replicate(api: httpx.Client, simulator: httpx.Client) -> None:
    """Only `completed` asked for: the simulator, which honours the filter as Replicate does, sends
    no start, output or logs webhook."""
    job = conforms(submit(api, {"model": MODEL, "input": QUICK, "webhook_events": ["completed"]}), "/v1/jobs")

    def delivered() -> dict[str, Any] | None:
        found: dict[str, Any] = simulator.get(f"/_sim/predictions/{job['prediction_id']}/deliveries").json()
        return found if found["final"] == "delivered" else None

    log = wait_for(delivered, what="the completed webhook")
    assert {delivery["event"] for delivery in log["deliveries"]} == {"completed"}


def test_a_retry_with_the_same_key_replays_the_first_answer_and_creates_no_second_prediction(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    key = str(uuid.uuid4())
    body = {"model": MODEL, "input": {"prompt": "once", **QUICK}}
    before = predictions_created(simulator)
    first = submit(api, body, **{"Idempotency-Key": key})
    again = submit(api, body, **{"Idempotency-Key": key})
    assert (first.status_code, again.status_code) == (201, 201)
    assert conforms(again, "/v1/jobs") == conforms(first, "/v1/jobs")
    assert again.headers["idempotency-replayed"] == "true"
    assert predictions_created(simulator) == before + 1

    other = submit(api, {**body, "input": {"prompt": "twice", **QUICK}}, **{"Idempotency-Key": key})
    assert other.status_code == 422
    assert conforms(other, "/v1/jobs")["type"] == "urn:replicate-relay:problem:idempotency-key-reused"
    assert predictions_created(simulator) == before + 1


def test_concurrent_requests_with_one_key_make_one_prediction(api: httpx.Client, simulator: httpx.Client) -> None:
    key = str(uuid.uuid4())
    body = {"model": MODEL, "input": {"prompt": "race", **QUICK}}
    before = predictions_created(simulator)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: submit(api, body, **{"Idempotency-Key": key}), range(4)))
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) <= {201, 409}, statuses
    assert 201 in statuses
    for response in responses:
        conforms(response, "/v1/jobs")
    job_ids = {response.json()["job_id"] for response in responses if response.status_code == 201}
    assert len(job_ids) == 1
    assert predictions_created(simulator) == before + 1
    # Once the first is answered, every retry gets its answer.
    assert submit(api, body, **{"Idempotency-Key": key}).json()["job_id"] in job_ids


def test_a_prediction_replicate_refuses_is_a_422_naming_the_failed_job(api: httpx.Client) -> None:
    refused = submit(api, {"model": MODEL, "input": {"sim_outcome": "exploded"}})
    assert refused.status_code == 422, refused.text
    problem = conforms(refused, "/v1/jobs")
    assert problem["type"] == "urn:replicate-relay:problem:submit-refused"
    job = conforms(api.get(f"/v1/jobs/{problem['job_id']}"), "/v1/jobs/{job_id}")
    assert (job["state"], job["error_code"]) == ("failed", "submit_failed")


def test_listing_pages_through_jobs_newest_first_with_a_state_filter(api: httpx.Client) -> None:
    batch = uuid.uuid4().hex[:8]
    ids = [
        conforms(submit(api, {"model": MODEL, "input": QUICK, "metadata": {"batch": batch}}), "/v1/jobs")["job_id"]
        for _ in range(3)
    ]
    for job_id in ids:
        wait_for(
            lambda job_id=job_id: api.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded" or None,
            what=f"job {job_id} to succeed",
        )
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"state": "succeeded", "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = conforms(api.get("/v1/jobs", params=params), "/v1/jobs")
        assert len(page["jobs"]) <= 2
        seen.extend(page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert {job["state"] for job in seen} == {"succeeded"}
    assert set(ids) <= {job["job_id"] for job in seen}
    assert len({job["job_id"] for job in seen}) == len(seen)  # no job twice across pages
    # As times: RFC 3339 strings with and without a fraction ("…:46Z", "…:46.9Z") do not sort as text.
    created = [datetime.fromisoformat(job["created_at"]) for job in seen if job["created_at"] is not None]
    assert created == sorted(created, reverse=True)

    unfiltered = conforms(api.get("/v1/jobs", params={"limit": "1"}), "/v1/jobs")
    assert len(unfiltered["jobs"]) == 1
    assert unfiltered["next_cursor"]
    # A cursor belongs to its filter.
    wrong = api.get("/v1/jobs", params={"state": "failed", "cursor": unfiltered["next_cursor"]})
    assert conforms(wrong, "/v1/jobs")["errors"][0]["field"] == "cursor"


def test_errors_are_problem_details_that_conform(api: httpx.Client) -> None:
    missing = api.get("/v1/jobs/no-such-job")
    assert missing.headers["content-type"] == "application/problem+json"
    assert conforms(missing, "/v1/jobs/{job_id}")["type"] == "urn:replicate-relay:problem:not-found"
    invalid = submit(api, {"model": "not a model", "input": {}})
    assert conforms(invalid, "/v1/jobs")["errors"] == [
        {"field": "model", "message": "must look like OWNER/NAME or OWNER/NAME:VERSION"}
    ]
    bad_json = api.post("/v1/jobs", content=b"{", headers={"Content-Type": "application/json"})
    assert conforms(bad_json, "/v1/jobs")["status"] == 400
    wrong_type = api.post("/v1/jobs", content=b"model=a/b", headers={"Content-Type": "text/plain"})
    assert conforms(wrong_type, "/v1/jobs")["status"] == 415
    too_large = api.post(
        "/v1/jobs", content=b'{"x": "' + b"A" * (2 * 1024 * 1024) + b'"}', headers={"Content-Type": "application/json"}
    )
    assert conforms(too_large, "/v1/jobs")["status"] == 413
    bad_limit = api.get("/v1/jobs", params={"limit": "500"})
    assert conforms(bad_limit, "/v1/jobs")["errors"][0]["field"] == "limit"


def test_the_openapi_document_is_served_too(api: httpx.Client) -> None:
    assert api.get("/v1/openapi.json").json() == OPENAPI


@pytest.mark.parametrize("job_id", ["__main__", "__x__", "_____"])
def test_an_id_firestore_reserves_is_a_job_that_does_not_exist(api: httpx.Client, job_id: str) -> None:
    response = api.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 404
    assert conforms(response, "/v1/jobs/{job_id}")["type"] == "urn:replicate-relay:problem:not-found"
