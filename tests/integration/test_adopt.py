"""The cut-over from a polling worker: predictions created without a webhook, adopted and finished by Relay."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import google.cloud.storage as storage
import httpx
import pytest
import replicate
from google.cloud import firestore

from handlers.reconcile import Reconciler, ReconcileSettings
from replicate_relay import cli
from replicate_relay.adopt import Action, Adopter, AdoptReport, render
from replicate_relay.devstack.stack import LocalStack
from replicate_relay.jobstore import EVENTS, JOBS, JobStore, utcnow
from replicate_relay.publisher import TopicPublisher
from replicate_relay.replicate_api import ReplicateAPI
from tests.integration.conftest import Tap, announcements, read_job, wait_for, wait_for_job

# The old worker's model and inputs; the sim_* keys steer the simulated run.
INPUT = {"input_image": "https://example.com/old-photo.jpg", "seed": 42, "output_format": "png", "safety_tolerance": 2}


@pytest.fixture
def model() -> str:
    """A model of this test's own, so that --model leaves out every other test's predictions."""
    return f"oldworker{uuid.uuid4().hex[:8]}/restore-image"


@pytest.fixture
def old_worker(stack: LocalStack) -> Iterator[replicate.Client]:
    """Replicate's client as the polling worker used it: predictions created without a webhook."""
    transport = httpx.HTTPTransport()
    yield replicate.Client(
        api_token=stack.client_env["REPLICATE_API_TOKEN"], base_url=stack.simulator_url, transport=transport
    )
    transport.close()


DEADLINE = timedelta(hours=1)  # RELAY_DEFAULT_DEADLINE as `relay adopt` would read it


@pytest.fixture
def events(stack: LocalStack) -> TopicPublisher:
    return TopicPublisher(f"projects/{stack.config.project}/topics/replicate-events", deadline_seconds=10)


@pytest.fixture
def adopter(db: firestore.Client, replicate_api: ReplicateAPI, events: TopicPublisher) -> Adopter:
    return Adopter(
        store=JobStore(db), replicate=replicate_api, events=events, requests_per_second=50, deadline=DEADLINE
    )


@pytest.fixture
def sim_clock(simulator: httpx.Client) -> Iterator[httpx.Client]:
    """The simulator's controls; its clock (moved on by the test) and switches are put back afterwards."""
    yield simulator
    simulator.post("/_sim/reset").raise_for_status()


def create(client: replicate.Client, model: str, **sim: Any) -> str:
    prediction = client.predictions.create(model=model, input={**INPUT, **{f"sim_{k}": v for k, v in sim.items()}})
    return str(prediction.id)


def wait_status(api: ReplicateAPI, prediction_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(
        lambda: (body := json.loads(api.get_prediction(prediction_id)))["status"] == status and body,
        timeout=timeout,
        what=f"prediction {prediction_id} to be {status} in the simulator",
    )


def actions(report: AdoptReport) -> dict[str, Action]:
    return {row.prediction_id: row.action for row in report.rows}


def event_records(db: firestore.Client, job_id: str) -> list[dict[str, Any]]:
    return [s.to_dict() for s in db.collection(JOBS).document(job_id).collection(EVENTS).stream()]


def test_cut_over_adopts_every_prediction_in_flight_once_and_finishes_each_in_its_right_state(
    stack: LocalStack,
    sim_clock: httpx.Client,
    old_worker: replicate.Client,
    replicate_api: ReplicateAPI,
    adopter: Adopter,
    db: firestore.Client,
    bucket: storage.Bucket,
    job_events: Tap,
    model: str,
    capsys: pytest.CaptureFixture[str],
    pytestconfig: pytest.Config,
) -> None:
    # Finished over an hour ago: the simulator's clock moves on past its retention, its files are gone.
    expired = create(old_worker, model, duration=0.2, files=1)
    wait_status(replicate_api, expired, "succeeded")
    sim_clock.post("/_sim/advance", json={"seconds": 3700}).raise_for_status()
    assert json.loads(replicate_api.get_prediction(expired))["data_removed"] is True
    assert sim_clock.get(f"/_sim/predictions/{expired}/deliveries").json()["deliveries"] == []  # no webhook

    recent = create(old_worker, model, duration=0.2, files=2)  # finished minutes ago, files still there
    failed = create(old_worker, model, duration=0.2, outcome="failed")
    running = create(old_worker, model, duration=12, files=1)  # still running at the switch
    other = create(old_worker, "flux-kontext-apps/restore-image", duration=0.2)  # left out by --model
    for prediction_id, status in ((recent, "succeeded"), (failed, "failed"), (other, "succeeded")):
        wait_status(replicate_api, prediction_id, status)
    mine = {expired: Action.EXPIRED, recent: Action.FINISHED, failed: Action.FINISHED, running: Action.ADOPT}
    # Small pages and two throttled answers: the walk follows `next` and waits out Replicate's 429s.
    sim_clock.post("/_sim/config", json={"page_size": 2, "throttle_requests": 2}).raise_for_status()

    # 1. The dry run, through the command line: the table, and nothing written.
    assert cli.main(["adopt", "--dry-run", "--since", "2h", "--model", model]) == 0
    dry = capsys.readouterr()
    show = pytestconfig.getoption("capture") == "no"  # with -s, the run docs/MIGRATION.md quotes
    if show:
        with capsys.disabled():
            print(f"\n$ relay adopt --dry-run --since 2h --model {model}\n{dry.err}{dry.out}")
    for prediction_id, action in mine.items():
        assert f"{prediction_id}  {model}" in dry.out
        assert any(prediction_id in line and f"  {action.value}" in line for line in dry.out.splitlines())
    assert "would adopt 4 (running 1, finished 2, expired 1)" in dry.out
    assert "page 1:" in dry.err
    assert all(read_job(db, prediction_id) is None for prediction_id in mine)
    assert sim_clock.get("/_sim/config").json()["throttle_requests"] == 0

    # 2. The real run, through the library, since 2 h.
    progress: list[str] = []
    adopter.progress = progress.append
    adopting = utcnow()
    report = adopter.run(utcnow() - timedelta(hours=2), model=model)
    adopted = utcnow()
    if show:
        with capsys.disabled():
            print(f"$ relay adopt --since 2h --model {model}\n" + "\n".join(progress) + "\n" + render(report))
    assert {pid: action for pid, action in actions(report).items() if pid in mine} == mine
    assert actions(report)[other] == Action.SKIPPED
    assert report.pages >= 3
    assert report.stopped is None
    assert report.summary["adopted"] == 4
    assert report.summary["errors"] == 0

    # Each adoptable prediction ends where Replicate's state says, through the normal handlers.
    finished = wait_for_job(db, recent, "succeeded")
    assert finished.source == "adopted"
    assert len(finished.outputs) == 2
    for entry in finished.outputs:
        blob = bucket.get_blob(entry["gs_uri"].split("/", 3)[3])
        assert blob is not None
        assert blob.size == entry["size"]
    assert wait_for_job(db, failed, "failed").error_code == "failed"
    gone = wait_for_job(db, expired, "failed")
    assert gone.error_code == "output_expired"
    assert gone.outputs == []

    # The running one: adopted as running, with the default deadline counted from its adoption (finished
    # ones need none), finished by a reconciler run once Replicate has finished it.
    in_flight = wait_for(lambda: (j := read_job(db, running)) and j.replicate_status == "processing" and j)
    assert in_flight.source == "adopted"
    assert in_flight.deadline_at is not None
    assert adopting + DEADLINE <= in_flight.deadline_at <= adopted + DEADLINE
    assert finished.deadline_at is None
    wait_status(replicate_api, running, "succeeded", timeout=40)
    time.sleep(3.5)  # RELAY_RECONCILE_QUIET_SECONDS in the test stack
    assert stack.reconcile()["recovered"] >= 1  # type: ignore[operator]
    done = wait_for_job(db, running, "succeeded")
    assert done.outputs[0]["gs_uri"].startswith(f"gs://{bucket.name}/predictions/{running}/")

    for prediction_id in mine:
        assert len(announcements(job_events, prediction_id, settle=0.5)) == 1
    records = {prediction_id: len(event_records(db, prediction_id)) for prediction_id in mine}

    # 3. Adopting again, through the command line: nothing adopted, nothing published, nothing announced.
    assert cli.main(["adopt", "--since", "2h", "--model", model, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["summary"]["adopted"] == 0
    assert {row["prediction_id"]: row["action"] for row in again["predictions"] if row["prediction_id"] in mine} == (
        dict.fromkeys(mine, "known")
    )
    time.sleep(2)
    for prediction_id in mine:
        assert len(announcements(job_events, prediction_id, settle=0.5)) == 1
        assert len(event_records(db, prediction_id)) == records[prediction_id]
    assert {read_job(db, prediction_id).source for prediction_id in mine} == {"adopted"}  # type: ignore[union-attr]


def test_reconciler_polls_adopted_jobs_long_before_the_quiet_threshold_of_jobs_with_webhooks(
    stack: LocalStack,
    old_worker: replicate.Client,
    replicate_api: ReplicateAPI,
    adopter: Adopter,
    db: firestore.Client,
    events: TopicPublisher,
    model: str,
) -> None:
    running = create(old_worker, model, duration=4, files=0)
    wait_status(replicate_api, running, "processing")
    report = adopter.run(utcnow() - timedelta(minutes=5), model=model)
    assert actions(report)[running] == Action.ADOPT
    wait_for(lambda: (j := read_job(db, running)) and j.replicate_status == "processing", what="the adoption")
    wait_status(replicate_api, running, "succeeded")
    time.sleep(1.5)

    def reconciler(adopted_after: timedelta) -> Reconciler:
        return Reconciler(
            store=JobStore(db),
            replicate=replicate_api,
            events=events,
            job_events=TopicPublisher(f"projects/{stack.config.project}/topics/job-events", deadline_seconds=10),
            settings=ReconcileSettings(quiet_after=timedelta(hours=1), adopted_after=adopted_after),
        )

    # Quiet for over a second, far under the hour a job with webhooks would wait here.
    assert reconciler(timedelta(hours=1)).run().recovered == 0
    assert read_job(db, running).state == "processing"  # type: ignore[union-attr]
    assert reconciler(timedelta(seconds=1)).run().recovered >= 1
    assert wait_for_job(db, running, "succeeded").source == "adopted"
