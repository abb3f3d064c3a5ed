"""Any JSON a model takes or returns goes through the real pipeline and reads back exactly.

Hypothesis makes up a prediction's input (an object) and output (any JSON: tests/any_json.py has what it includes
and why), signs Replicate's `starting` and `succeeded` webhooks for a fresh prediction, and posts them to the test
stack's receiver; Pub/Sub pushes them to the handlers, which write the job to the Firestore emulator (values too
large for the document to fake-gcs-server). Once the job is final it must have succeeded, and its input and output
must read back as sent, type for type, through RelayClient.get and through the API's GET /v1/jobs/{id}.

Bounded: a few explicit examples (the largest values, the deepest nesting), then 15 generated ones, 40 under
HYPOTHESIS_PROFILE=ci; failures are kept in .hypothesis/ and replayed first on the next run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, example, given, note, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from replicate_relay.client import RelayClient
from replicate_relay.devstack.stack import LocalStack
from replicate_relay.jobs import Job
from replicate_relay.testing import prediction_lifecycle, sign_webhook
from tests.any_json import INTEGER_EDGES, input_values, json_text, json_values, same_json
from tests.integration.conftest import unique_id, wait_for

ROOT = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 40 if os.environ.get("HYPOTHESIS_PROFILE") == "ci" else 15
# Both webhooks carry the input, the succeeded one the output too: keep them under the receiver's 4 MiB.
MAX_BODY_BYTES = 3 * 1024 * 1024
NOTED = 2_000

# A few hundred KiB each: more than a job document keeps inline, so at least one goes to the bucket.
LARGE_INPUT = {"prompt": "a photo of 𝄞 " * 24_000, "image": "data:image/png;base64," + "iVBORw0K" * 1_000}
LARGE_OUTPUT = ["Once upon a time, " * 18_000, {"tokens": list(range(2_000)), "": [[0.1, 1 / 3], [5e-324, -0.0]]}]
DEEP_OUTPUT: Any = {"__name__": [[[2**70]]], "": [-(2**63), 1e308, -1e308, "e\u0301", "\ud800"]}
for _level in range(30):
    DEEP_OUTPUT = [DEEP_OUTPUT, []] if _level % 2 else {".": DEEP_OUTPUT, "`": {}, "/": None}


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def relay(stack: LocalStack) -> Iterator[RelayClient]:
    with RelayClient.from_env(stack.client_env, submitting=False) as client:
        yield client


@pytest.mark.timeout(900)  # a failure's shrinking sends many more examples; Hypothesis stops it after 5 minutes
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    database=DirectoryBasedExampleDatabase(ROOT / ".hypothesis" / "examples"),
    print_blob=True,
)
@given(input=input_values, output=json_values)
@example(input=LARGE_INPUT, output=LARGE_OUTPUT)
@example(input={"": [[1, 2], [[]]], "__x__": {"𝄞": INTEGER_EDGES}}, output=DEEP_OUTPUT)
@example(input={"prompt": "hi"}, output=["streamed", " text", " tokens"])
def test_any_input_and_output_reach_a_succeeded_job_and_read_back_exactly(
    stack: LocalStack, http: httpx.Client, relay: RelayClient, input: dict[str, Any], output: Any
) -> None:
    prediction_id = unique_id()  # every example, replays and shrinks included, is a new prediction
    # What a failure prints of the example (the values themselves may be megabytes), and where to look next.
    note(f"input (JSON, first {NOTED} characters): {json_text(input)[:NOTED]}")
    note(f"output (JSON, first {NOTED} characters): {json_text(output)[:NOTED]}")
    note(f"prediction {prediction_id}; the stack's logs are in {stack.config.log_dir}")
    starting, succeeded = prediction_lifecycle(prediction_id, output=output, progress_events=0)
    now = int(time.time())
    webhooks = [
        sign_webhook({**body, "input": input}, stack.config.webhook_secrets, timestamp=now - 1 + offset)
        for offset, body in enumerate([starting, succeeded])
    ]
    assume(all(len(webhook.body) <= MAX_BODY_BYTES for webhook in webhooks))
    for webhook in webhooks:
        response = http.post(stack.receiver_url, content=webhook.body, headers=webhook.headers)
        assert response.status_code == 200, response.text

    job = wait_for(lambda: _final(relay, prediction_id), what=f"job {prediction_id} to be final")
    assert (job.state, job.error_code, job.error) == ("succeeded", None, None)
    assert same_json(input, job.input), _differ("input", input, job.input)
    assert same_json(output, job.output), _differ("output", output, job.output)

    response = http.get(f"{stack.api_url}/v1/jobs/{prediction_id}")
    assert response.status_code == 200, response.text[:500]
    served = response.json()
    assert served["state"] == "succeeded"
    assert same_json(input, served["input"]), _differ("input from the API", input, served["input"])
    assert same_json(output, served["output"]), _differ("output from the API", output, served["output"])


def _final(relay: RelayClient, job_id: str) -> Job | None:
    job = relay.get(job_id)
    return job if job is not None and job.is_terminal else None


def _differ(what: str, sent: Any, received: Any) -> str:
    """Where the two JSON texts first differ, briefly: the values themselves may be megabytes."""
    sent_text, received_text = json_text(sent), json_text(received)
    at = next(
        (i for i, (a, b) in enumerate(zip(sent_text, received_text, strict=False)) if a != b),
        min(len(sent_text), len(received_text)),
    )
    return (
        f"{what} differs at character {at} of its JSON text ({len(sent_text)} sent, {len(received_text)} read): "
        f"sent …{sent_text[max(0, at - 60) : at + 60]!r}…, read …{received_text[max(0, at - 60) : at + 60]!r}…"
    )
