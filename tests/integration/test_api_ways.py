"""Every way the API runs work, on the local stack (auth off, the emulators, the simulator): a
prediction through a deployment, a training, a cancel (202, idempotent, 409 once final, 404 for no
job) and a deadline that becomes `deadline_at` and Replicate's `Cancel-After`. Every answer conforms
to the checked-in OpenAPI document.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from replicate_relay.devstack.stack import LocalStack
from replicate_relay.replicate_api import ReplicateAPI
from tests.integration.conftest import wait_for
from tests.integration.test_api import QUICK, conforms

JOB = "/v1/jobs/{job_id}"
CANCEL = "/v1/jobs/{job_id}/cancel"
SLOW = {"sim_duration": 120, "sim_files": 0, "sim_tokens": 2}  # runs until canceled
PROBLEM = "urn:replicate-relay:problem:"


@pytest.fixture
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        yield client


def final(api: httpx.Client, job_id: str) -> dict[str, Any]:
    """The job once it is final, read through the API."""

    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = conforms(api.get(f"/v1/jobs/{job_id}"), JOB)
        return job if job["state"] in {"succeeded", "failed", "canceled", "aborted"} else None

    return wait_for(ended, what=f"job {job_id} to end")


def created(response: httpx.Response, route: str) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    job: dict[str, Any] = conforms(response, route)
    assert response.headers["location"] == f"/v1/jobs/{job['job_id']}"
    return job


def test_a_prediction_through_a_deployment_runs_on_the_deployment_and_succeeds(
    api: httpx.Client, replicate_api: ReplicateAPI
) -> None:
    deployment = f"acme/upscaler-{uuid.uuid4().hex[:6]}"
    job = created(api.post("/v1/jobs", json={"deployment": deployment, "input": {"prompt": "hi", **QUICK}}), "/v1/jobs")
    assert (job["deployment"], job["kind"]) == (deployment, "prediction")
    # The simulator names a prediction created at /v1/deployments/{owner}/{name}/predictions by the deployment.
    prediction = json.loads(replicate_api.get_prediction(job["prediction_id"]))
    assert prediction["model"] == deployment
    ended = final(api, job["job_id"])
    assert (ended["state"], ended["deployment"]) == ("succeeded", deployment)
    assert ended["output_value"]


def test_a_training_through_the_api_is_a_training_job_that_ends_with_its_new_version(
    api: httpx.Client, replicate_api: ReplicateAPI
) -> None:
    destination = f"acme/style-{uuid.uuid4().hex[:6]}"
    body = {
        "version": "acme/trainer:5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
        "destination": destination,
        "input": {"steps": 10, "sim_duration": 0.2, "sim_weights_bytes": 2048},
        "metadata": {"customer": "C-77"},
    }
    job = created(api.post("/v1/trainings", json=body), "/v1/trainings")
    assert (job["kind"], job["metadata"]) == ("training", {"customer": "C-77"})
    training = json.loads(replicate_api.get_training(job["prediction_id"]))
    assert training["urls"]["get"].endswith(f"/v1/trainings/{job['prediction_id']}")
    ended = final(api, job["job_id"])
    assert (ended["state"], ended["kind"]) == ("succeeded", "training"), ended
    assert ended["trained_version"].startswith(f"{destination}:")


def test_a_cancel_is_202_idempotent_and_the_job_ends_canceled_then_a_cancel_is_409(api: httpx.Client) -> None:
    job = created(api.post("/v1/jobs", json={"model": "acme/upscaler", "input": SLOW}), "/v1/jobs")
    path = f"/v1/jobs/{job['job_id']}/cancel"

    first = api.post(path)
    assert first.status_code == 202, first.text
    asked = conforms(first, CANCEL)
    assert asked["job_id"] == job["job_id"]
    assert asked["cancel_requested_at"] is not None
    assert first.headers["location"] == f"/v1/jobs/{job['job_id']}"
    again = api.post(path)
    # Still open (202, the same request time), or already canceled by Replicate's webhook (409).
    assert again.status_code in (202, 409), again.text
    if again.status_code == 202:
        assert conforms(again, CANCEL)["cancel_requested_at"] == asked["cancel_requested_at"]

    ended = final(api, job["job_id"])
    assert ended["state"] == "canceled", ended
    late = api.post(path)
    assert late.status_code == 409, late.text
    problem = conforms(late, CANCEL)
    assert (problem["type"], problem["job_id"]) == (PROBLEM + "job-final", job["job_id"])


def test_a_cancel_of_a_succeeded_training_is_a_409_and_of_no_job_a_404(api: httpx.Client) -> None:
    body = {"version": "acme/trainer:abc123", "destination": "acme/style", "input": {"sim_duration": 0.2}}
    job = created(api.post("/v1/trainings", json=body), "/v1/trainings")
    assert final(api, job["job_id"])["state"] == "succeeded"
    done = api.post(f"/v1/jobs/{job['job_id']}/cancel")
    assert conforms(done, CANCEL)["type"] == PROBLEM + "job-final"

    missing = api.post(f"/v1/jobs/no-such-{uuid.uuid4().hex}/cancel")
    assert missing.status_code == 404
    assert conforms(missing, CANCEL)["type"] == PROBLEM + "not-found"


def test_a_deadline_lands_as_deadline_at_and_reaches_replicate_as_cancel_after(api: httpx.Client) -> None:
    before = datetime.now(UTC)
    job = created(api.post("/v1/jobs", json={"model": "acme/upscaler", "input": SLOW, "deadline": "2s"}), "/v1/jobs")
    after = datetime.now(UTC)
    deadline_at = datetime.fromisoformat(job["deadline_at"])
    # Set by the API's clock while this request was served: two seconds after some moment within it.
    assert before + timedelta(seconds=2) - timedelta(seconds=1) <= deadline_at <= after + timedelta(seconds=2)
    # Nobody cancels it: the simulator, told by Cancel-After, ends it at its deadline.
    ended = final(api, job["job_id"])
    assert ended["state"] in {"canceled", "aborted"}, ended
    assert ended["cancel_requested_at"] is None


def test_a_bad_deadline_or_both_model_and_deployment_is_a_422_naming_the_field(api: httpx.Client) -> None:
    bad = api.post("/v1/jobs", json={"model": "acme/upscaler", "input": {}, "deadline": "soon"})
    assert [error["field"] for error in conforms(bad, "/v1/jobs")["errors"]] == ["deadline"]
    both = api.post("/v1/jobs", json={"model": "acme/upscaler", "deployment": "acme/upscaler", "input": {}})
    assert [error["field"] for error in conforms(both, "/v1/jobs")["errors"]] == ["model", "deployment"]
