"""Every way Relay has Replicate run work, on the local stack: through a deployment, a training, a cancel
from the client and from `relay cancel`, a deadline reached before and while running, and creates
throttled with 429.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from google.cloud import firestore

from replicate_relay import JobAlreadyFinal, JobFailed, JobNotFound, RelayClient, SubmitFailed, cli
from replicate_relay.devstack.stack import LocalStack
from replicate_relay.jobs import Job
from replicate_relay.jobstore import JobStore
from replicate_relay.replicate_api import ReplicateAPI
from replicate_relay.submit import Submitter
from tests.integration.conftest import WAIT_SECONDS, read_job, wait_for_job

MODEL = "flux-kontext-apps/restore-image"
DEPLOYMENT = "acme/restore-prod"
FAST = {"input_image": "https://example.com/old.jpg", "sim_duration": 0.5}
LONG = {"input_image": "https://example.com/old.jpg", "sim_duration": 60, "sim_start_delay": 0.2}


@pytest.fixture
def client(stack: LocalStack, db: firestore.Client, replicate_api: ReplicateAPI) -> Iterator[RelayClient]:
    submitter = Submitter(store=JobStore(db), replicate=replicate_api, webhook_url=stack.receiver_url + "/")
    with RelayClient(JobStore(db), submitter=submitter) as relay:
        yield relay


def ended(client: RelayClient, job_id: str) -> Job:
    """The job once final, whichever way it ended."""
    try:
        return client.wait(job_id, timeout=WAIT_SECONDS)
    except JobFailed as failed:
        return failed.job


def running(db: firestore.Client, job_id: str) -> Job:
    return wait_for_job(db, job_id, "processing")


# ---- deployments ----


def test_a_deployment_prediction_runs_end_to_end_and_the_job_names_the_deployment(client: RelayClient) -> None:
    job = client.submit(deployment=DEPLOYMENT, input={**FAST, "sim_files": 2}, metadata={"order": "D-1"})

    assert (job.deployment, job.kind, job.source) == (DEPLOYMENT, "prediction", "submit")
    final = client.wait(job.job_id, timeout=WAIT_SECONDS)
    assert (final.state, final.deployment, final.metadata) == ("succeeded", DEPLOYMENT, {"order": "D-1"})
    assert [entry["gs_uri"].startswith("gs://") for entry in final.outputs] == [True, True]
    # RELAY_DEFAULT_DEADLINE applies to a submit without one: 30 minutes after the job was created.
    assert job.deadline_at is not None
    assert job.updated_at is not None
    assert timedelta(minutes=29) < job.deadline_at - job.updated_at <= timedelta(minutes=30)
    assert final.deadline_at == job.deadline_at


def test_relay_submit_through_a_deployment_with_a_deadline(
    db: firestore.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["submit", "--deployment", DEPLOYMENT, "--input", "sim_duration=0.5", "--deadline", "5m", "--wait", "60"]
    )

    out = capsys.readouterr().out
    assert code == 0, out
    submitted, final = out.strip().splitlines()
    match = re.match(rf"job (\w+) submitted: prediction \w+ of {DEPLOYMENT}; deadline \S+$", submitted)
    assert match is not None, submitted
    assert " succeeded: outputs gs://" in final
    job = read_job(db, match.group(1))
    assert job is not None
    assert job.deadline_at is not None
    assert job.updated_at is not None
    assert job.deployment == DEPLOYMENT
    assert timedelta(minutes=4) < job.deadline_at - job.updated_at <= timedelta(minutes=5)


def test_relay_train_makes_a_training_job_that_ends_with_the_new_version(
    db: firestore.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "train",
            "--version",
            f"{MODEL}:{'a' * 64}",
            "--destination",
            "acme/restore-tuned",
            "--input",
            "sim_duration=0.5",
            "--wait",
            "60",
        ]
    )

    out = capsys.readouterr().out
    assert code == 0, out
    match = re.match(r"job (\w+) submitted: training \w+ of \S+ into acme/restore-tuned; deadline \S+\n", out)
    assert match is not None, out
    job = read_job(db, match.group(1))
    assert job is not None
    assert (job.kind, job.state) == ("training", "succeeded")
    assert str(job.trained_version).startswith("acme/restore-tuned:")


# ---- cancel ----


def test_cancel_from_the_client_ends_the_job_canceled_by_replicates_webhook(
    client: RelayClient, db: firestore.Client
) -> None:
    job = client.submit(MODEL, LONG)
    running(db, job.job_id)

    asked = client.cancel(job.job_id)

    assert asked.cancel_requested_at is not None
    final = ended(client, job.job_id)
    assert (final.state, final.replicate_status) == ("canceled", "canceled")
    assert final.cancel_requested_at == asked.cancel_requested_at
    with pytest.raises(JobAlreadyFinal, match=rf"job {job.job_id} is final \(canceled\)") as raised:
        client.cancel(job.job_id)
    assert raised.value.job.state == "canceled"


def test_a_second_cancel_before_the_end_keeps_the_first_request(
    stack: LocalStack, client: RelayClient, db: firestore.Client
) -> None:
    # Replicate's canceled webhook is lost: the job stays open until the reconciler reads the prediction.
    job = client.submit(MODEL, {**LONG, "sim_drop_final": True})
    running(db, job.job_id)

    first = client.cancel(job.job_id)
    second = client.cancel(job.job_id)

    assert second.state == "processing"
    assert second.cancel_requested_at == first.cancel_requested_at is not None
    time.sleep(3.5)  # RELAY_RECONCILE_QUIET_SECONDS in the test stack
    stack.reconcile()
    assert wait_for_job(db, job.job_id, "canceled").cancel_requested_at == first.cancel_requested_at


def test_relay_cancel_prints_the_job_then_exits_one_once_it_is_final(
    client: RelayClient, db: firestore.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    job = client.submit(MODEL, LONG)
    running(db, job.job_id)

    code = cli.main(["cancel", job.job_id])

    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith(f"job {job.job_id} processing: cancel of prediction {job.prediction_id} requested at ")
    assert ended(client, job.job_id).state == "canceled"
    assert cli.main(["cancel", job.job_id]) == 1
    assert f"relay: job {job.job_id} is final (canceled): there is nothing to cancel" in capsys.readouterr().err


def test_cancel_of_no_such_job_is_not_found(client: RelayClient, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(JobNotFound, match="no job no-such-job"):
        client.cancel("no-such-job")
    assert cli.main(["cancel", "no-such-job"]) == 1
    assert "relay: no job no-such-job" in capsys.readouterr().err


# ---- deadlines (Cancel-After) ----


@pytest.mark.parametrize(
    ("inputs", "state"),
    [
        pytest.param({"sim_start_delay": 30}, "aborted", id="before-start"),
        pytest.param({"sim_start_delay": 0.2}, "canceled", id="while-running"),
    ],
)
def test_a_deadline_ends_the_job_as_replicate_reports_it(
    client: RelayClient, inputs: dict[str, float], state: str
) -> None:
    job = client.submit(MODEL, {**FAST, "sim_duration": 60, **inputs}, deadline="2s")

    assert job.deadline_at is not None
    final = ended(client, job.job_id)
    assert (final.state, final.replicate_status) == (state, state)
    assert (final.started_at is None) == (state == "aborted")
    assert final.outputs == []


def test_a_zero_deadline_sets_none(client: RelayClient) -> None:
    job = client.submit(MODEL, FAST, deadline="off")

    assert job.deadline_at is None
    assert client.wait(job.job_id, timeout=WAIT_SECONDS).state == "succeeded"


# ---- 429 on create ----


def test_a_429_storm_shorter_than_the_backoff_is_ridden_out(client: RelayClient, simulator: httpx.Client) -> None:
    simulator.post("/_sim/config", json={"throttle_requests": 2}).raise_for_status()

    job = client.submit(MODEL, FAST)

    assert job.prediction_id is not None
    assert simulator.get("/_sim/config").json()["throttle_requests"] == 0
    assert client.wait(job.job_id, timeout=WAIT_SECONDS).state == "succeeded"


def test_a_429_storm_longer_than_the_backoff_fails_clearly_and_leaves_no_open_job(
    client: RelayClient, simulator: httpx.Client, db: firestore.Client
) -> None:
    simulator.post("/_sim/config", json={"throttle_requests": 50}).raise_for_status()

    with pytest.raises(SubmitFailed, match="throttled the prediction create 4 times") as raised:
        client.submit(MODEL, FAST)

    assert simulator.get("/_sim/config").json()["throttle_requests"] == 46  # four tries, then given up
    job = read_job(db, raised.value.job.job_id)
    assert job is not None
    assert (job.state, job.error_code, job.prediction_id) == ("failed", "submit_failed", None)
    assert "429" in str(job.error)
