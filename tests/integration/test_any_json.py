"""Six JSON shapes Firestore's maps cannot hold, or hold changed, go through the real pipeline and read
back exactly: a signed `starting` and `succeeded` webhook to the receiver,
Pub/Sub's push to the handlers, the job in the Firestore emulator; once final, the job succeeded and
its input and output are what Replicate sent, type for type, through RelayClient and through the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from replicate_relay.client import RelayClient
from replicate_relay.devstack.stack import LocalStack
from replicate_relay.jobs import Job
from replicate_relay.testing import sign_webhook
from tests.integration.conftest import unique_id, wait_for
from tests.integration.fileserver import Answer, FileServer
from tests.integration.json_shapes import SHAPES, Shape, exact, handler_lines, lifecycle, timestamps

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


@pytest.fixture(scope="module")
def relay(stack: LocalStack) -> Iterator[RelayClient]:
    with RelayClient.from_env(stack.client_env, submitting=False) as client:
        yield client


def _run(stack: LocalStack, http: httpx.Client, prediction_id: str, shape: Shape) -> list[dict[str, Any]]:
    """Post the prediction's signed `starting`, then its `succeeded`; returns the bodies sent."""
    bodies = lifecycle(prediction_id, shape)
    for body, timestamp in zip(bodies, timestamps(len(bodies)), strict=True):
        webhook = sign_webhook(body, stack.config.webhook_secrets, timestamp=timestamp)
        response = http.post(stack.receiver_url, content=webhook.body, headers=webhook.headers)
        assert response.status_code == 200, response.text
    return bodies


def _final(stack: LocalStack, relay: RelayClient, job_id: str) -> Job:
    def check() -> Job | None:
        job = relay.get(job_id)
        return job if job is not None and job.is_terminal else None

    try:
        return wait_for(check, what=f"job {job_id} to be final")
    except AssertionError as error:
        raise AssertionError(f"{error}; {handler_lines(stack, job_id)}") from None


def _assert_read_back(
    stack: LocalStack, http: httpx.Client, relay: RelayClient, job_id: str, sent: dict[str, Any], *, logs: bool = True
) -> Job:
    """The job is succeeded, and its input, output (and `logs`: logs) are `sent`'s, through the client and the API."""
    job = _final(stack, relay, job_id)
    context = handler_lines(stack, job_id)
    assert (job.state, job.error_code, job.error) == ("succeeded", None, None), context
    assert job.input == sent["input"], context
    assert exact(job.input) == exact(sent["input"]), context
    assert job.output == sent["output"], context
    assert exact(job.output) == exact(sent["output"]), context
    if logs:
        assert job.logs == sent["logs"], context

    response = http.get(f"{stack.api_url}/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text[:500]
    served = response.json()
    assert served["state"] == "succeeded"
    assert served["input"] == sent["input"]
    assert exact(served["input"]) == exact(sent["input"])
    assert served["output"] == sent["output"]
    assert exact(served["output"]) == exact(sent["output"])
    if logs:
        assert served["logs"] == sent["logs"]
    return job


@pytest.mark.parametrize("shape", SHAPES, ids=[shape.id for shape in SHAPES])
def test_each_shape_ends_succeeded_and_reads_back_exactly(
    stack: LocalStack, http: httpx.Client, relay: RelayClient, shape: Shape
) -> None:
    prediction_id = unique_id()
    *_, succeeded = _run(stack, http, prediction_id, shape)
    job = _assert_read_back(stack, http, relay, prediction_id, succeeded)
    assert job.outputs == []  # no file in any of them


def _file_and_values(stack: LocalStack, http: httpx.Client, files: FileServer) -> tuple[str, dict[str, Any]]:
    """A prediction whose output mixes a file with plain values, posted; its id and final body."""
    prediction_id = unique_id()
    url = files.serve(f"/{prediction_id}/cat.png", Answer(body=PNG, content_type="image/png"))
    output = {"image": url, "boxes": [[1, 2]], "label": "cat"}
    shape = Shape("file-and-values", {"prompt": "find the cat", "boxes": [[0, 0], [8, 8]]}, output)
    *_, succeeded = _run(stack, http, prediction_id, shape)
    return prediction_id, succeeded


def test_an_output_mixing_a_file_and_plain_values_is_archived_and_reads_back_exactly(
    stack: LocalStack, http: httpx.Client, relay: RelayClient, files: FileServer
) -> None:
    prediction_id, succeeded = _file_and_values(stack, http, files)
    # The output as sent, the file's URL and not its copy; the logs are the next test's.
    job = _assert_read_back(stack, http, relay, prediction_id, succeeded, logs=False)
    [entry] = job.outputs
    bucket = stack.topology.bucket.name(stack.config.project)
    assert entry["gs_uri"] == f"gs://{bucket}/predictions/{prediction_id}/0-cat.png"
    assert (entry["size"], entry["content_type"]) == (len(PNG), "image/png")


def test_a_job_archive_outputs_finished_has_the_whole_logs(
    stack: LocalStack, http: httpx.Client, relay: RelayClient, files: FileServer
) -> None:
    prediction_id, succeeded = _file_and_values(stack, http, files)
    _assert_read_back(stack, http, relay, prediction_id, succeeded)
