"""Faults injected into a running local pipeline, each case bounded, loopback only, each ending
with the invariants of tests/faults/harness.py. `make test-faults` runs them (and so does CI)."""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from google.cloud import firestore, storage

from replicate_relay.cli import main as relay_main
from replicate_relay.devstack.stack import DEFAULT_TOPOLOGY, LocalStack
from replicate_relay.jobs import Job
from replicate_relay.jobstore import JOBS
from replicate_relay.testing import SignedWebhook, prediction_lifecycle
from tests.faults.conftest import FAULT_TOPOLOGY
from tests.faults.harness import Invariants, Load, StateSampler, Submitted, wait_all_final, write_series
from tests.faults.proxy import FaultProxy
from tests.integration.conftest import Deliver, Sign, unique_id, wait_for
from tests.integration.fileserver import Answer, FileServer


def test_fault_topology_differs_from_production_only_in_its_numbers() -> None:
    """The fast retry budget must not hide a wiring difference from infra/topology.yaml."""

    def shape(path: Path) -> Any:
        document = yaml.safe_load(path.read_text())
        for subscription in document["subscriptions"]:
            del subscription["ack_deadline_seconds"], subscription["retry_policy"]
            del subscription["dead_letter"]["max_delivery_attempts"]
        return document

    assert shape(FAULT_TOPOLOGY) == shape(DEFAULT_TOPOLOGY)


def test_pubsub_emulator_killed_and_restarted_under_load(
    stack: LocalStack, db: firestore.Client, load: Load, invariants: Invariants
) -> None:
    """The receiver answers 503 while Pub/Sub is gone, the simulator retries like Replicate, and
    nothing acknowledged after the restart is lost.

    The emulator keeps its messages in memory: those acknowledged before the kill but not yet
    pushed die with it (real Pub/Sub stores them durably). Those are counted, not hidden; their
    jobs still end right because the reconciler asks Replicate about every quiet job.
    """
    started = time.time()
    with StateSampler(db, lambda: [case.job_id for case in load.submitted]) as sampler:
        load.start(count=10, per_second=2, files=1, duration=1.5)
        wait_for(lambda: len(load.submitted) >= 3, timeout=60, what="the first predictions")
        invariants.job_events()  # what was announced so far, before the emulator forgets it
        stack.emulators["pubsub"].stop()
        killed = time.time()
        # Down until the receiver has turned webhooks away for a while (4 s at least).
        time.sleep(4)
        wait_for(
            lambda: _answered_since(invariants, load.submitted, killed, 503),
            timeout=60,
            what="a webhook answered 503 while Pub/Sub is down",
        )
        stack.restart_emulator("pubsub")
        stack.provision()
        invariants.job_events.subscribe()
        back = time.time()
        load.join(timeout=120)
        assert len(load.submitted) == 10
        wait_all_final(db, load.submitted, timeout=150, reconcile=stack.reconcile)
    report = invariants.check(load.submitted, sampler, exempt=lambda delivery: delivery["at"] < back, lost_before=back)
    outage = [
        d
        for case in load.submitted
        for d in invariants.deliveries(case.prediction_id)
        if killed <= d["at"] < back and d["status_code"] == 503
    ]
    assert outage, "no webhook arrived while Pub/Sub was down: the fault was not exercised"
    write_series("pubsub-restart", invariants, load.submitted, started, f"Pub/Sub emulator down {back - killed:.1f} s")
    print(f"pubsub restart: {report}, 503s during the outage: {len(outage)}")


def test_handler_killed_while_archiving_a_large_file(
    stack: LocalStack,
    db: firestore.Client,
    files: FileServer,
    bucket: storage.Bucket,
    deliver: Deliver,
    invariants: Invariants,
) -> None:
    """SIGKILL mid-download: Pub/Sub redelivers to the restarted handler, which copies the file
    once more from the start; one object, with the right bytes, and one announcement."""
    prediction_id = unique_id()
    body = bytes(range(256)) * (48 * 4096)  # 48 MiB; about 4 s at the served pace
    path = f"/{prediction_id}/big.bin"
    url = files.serve(path, Answer(body=body, content_type="application/octet-stream", chunk_delay=0.005))
    final = prediction_lifecycle(prediction_id, output=[url], progress_events=0)[-1]
    webhook = deliver(final)
    wait_for(lambda: files.requests[path] >= 1, timeout=30, what="the archive handler to start the download")
    time.sleep(1.0)
    stack.functions["archive-outputs"].kill()
    stack.start_function("archive-outputs")

    job = _final_job(db, prediction_id, timeout=120, what="the job to end after the handler's restart")
    assert job.state == "succeeded", (job.error_code, job.error)
    assert files.requests[path] >= 2  # the first copy died with the handler; the file was fetched again
    [stored] = list(bucket.list_blobs(prefix=f"predictions/{prediction_id}/"))
    assert stored.size == len(body)
    assert stored.download_as_bytes() == body
    invariants.check([Submitted(prediction_id, prediction_id, files=1, posted=(webhook.webhook_id,))], None)


def test_firestore_emulator_restarted_under_load(
    stack: LocalStack, db: firestore.Client, load: Load, invariants: Invariants
) -> None:
    """Handlers answer 503 while Firestore is gone, and Pub/Sub redelivers until it is back.

    The emulator's data dies with it (Cloud Firestore's does not), so the invariant becomes: every
    webhook acknowledged after the restart is applied, and each prediction's job is rebuilt from
    the events that follow (a webhook for an unknown prediction creates its job, keyed by the
    prediction id) and ends final, files archived, announced once. What was recorded before the
    restart is exempt, counted in the report.
    """
    started = time.time()
    for _ in range(5):
        load.submit(files=1, duration=20)  # long enough to be running across the restart
    wait_for(
        lambda: all((j := _job(db, c.job_id)) and j.state in {"starting", "processing"} for c in load.submitted),
        timeout=60,
        what="every job to be running",
    )
    invariants.job_events()
    stack.restart_emulator("firestore")
    back = time.time()
    cases = [Submitted(c.prediction_id, c.prediction_id, c.files) for c in load.submitted]
    with StateSampler(db, lambda: [c.job_id for c in cases]) as sampler:
        wait_all_final(db, cases, timeout=120, reconcile=stack.reconcile)
    report = invariants.check(cases, sampler, exempt=lambda delivery: delivery["at"] < back)
    for case in cases:
        job = _job(db, case.job_id)
        assert job is not None
        assert job.source == "webhook"  # rebuilt from the final webhook, not from the lost submission
    write_series("firestore-restart", invariants, load.submitted, started, "Firestore emulator restarted")
    print(f"firestore restart: {report}")


def test_cloud_storage_unavailable_then_hanging(
    stack: LocalStack, db: firestore.Client, load: Load, invariants: Invariants, gcs_proxy: FaultProxy
) -> None:
    """503s from Cloud Storage, then connections that never answer: the archive handler retries
    through Pub/Sub until Cloud Storage is back; every file is stored once."""
    started = time.time()
    with StateSampler(db, lambda: [case.job_id for case in load.submitted]) as sampler:
        # Each fault stays on until the handlers have met it a few times, then Cloud Storage is back.
        with gcs_proxy.failing("unavailable"):
            load.start(count=6, per_second=2, files=2, duration=0.5)
            wait_for(lambda: gcs_proxy.counts["unavailable"] >= 3, timeout=60, what="requests answered 503")
        with gcs_proxy.failing("hang"):
            wait_for(lambda: gcs_proxy.counts["hang"] >= 2, timeout=60, what="requests left hanging")
            time.sleep(2)
        load.join()
        wait_all_final(db, load.submitted, timeout=120, reconcile=stack.reconcile)
    report = invariants.check(load.submitted, sampler)
    write_series("storage-faults", invariants, load.submitted, started, "Cloud Storage answering 503, then hanging")
    print(f"storage faults: {report}, proxy connections {gcs_proxy.counts}")


def test_receiver_down_longer_than_replicates_retries(
    stack: LocalStack, db: firestore.Client, load: Load, invariants: Invariants, simulator: httpx.Client
) -> None:
    """Replicate gives up on the final webhook; the reconciler recovers every job."""
    simulator.post("/_sim/config", json={"retry_delays": [0.2, 0.2, 0.2]}).raise_for_status()
    stack.stop_function("receiver")
    try:
        for _ in range(4):
            load.submit(files=1, duration=0.5)
        for case in load.submitted:
            wait_for(
                lambda pid=case.prediction_id: _final(simulator, pid) == "gave_up",
                timeout=30,
                what="the simulator to give up on the final webhook",
            )
    finally:
        stack.start_function("receiver")
    with StateSampler(db, lambda: [case.job_id for case in load.submitted]) as sampler:
        wait_all_final(db, load.submitted, timeout=90, reconcile=stack.reconcile)
    invariants.check(load.submitted, sampler)
    assert all(not invariants.acknowledged(case.prediction_id) for case in load.submitted)


def test_sigterm_to_the_receiver_under_load(stack: LocalStack, db: firestore.Client, sign: Sign) -> None:
    """In-flight requests finish or fail; none is acknowledged without its publish."""
    webhooks = [sign(prediction_lifecycle(unique_id(), progress_events=0)[-1]) for _ in range(300)]
    results: dict[str, int | str] = {}

    def send(webhook: SignedWebhook) -> None:
        try:
            with httpx.Client(timeout=10) as http:
                response = http.post(stack.receiver_url, content=webhook.body, headers=webhook.headers)
            results[webhook.webhook_id] = response.status_code
        except httpx.HTTPError as error:
            results[webhook.webhook_id] = type(error).__name__

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(send, webhook) for webhook in webhooks]
        wait_for(lambda: len(results) >= 30, timeout=30, what="the first answers")
        stack.stop_function("receiver")  # SIGTERM to the group; gunicorn drains in-flight requests
        concurrent.futures.wait(futures, timeout=120)
    stack.start_function("receiver")

    acknowledged = [w for w in webhooks if results.get(w.webhook_id) == 200]
    refused = [w for w in webhooks if results.get(w.webhook_id) != 200]
    assert acknowledged, results
    assert refused, "every request finished before the shutdown: the fault was not exercised"
    assert not [code for code in results.values() if isinstance(code, int) and 200 <= code < 300 and code != 200]
    for webhook in acknowledged:
        prediction_id = json.loads(webhook.body)["id"]
        wait_for(
            lambda pid=prediction_id: (j := _job(db, pid)) and j.state == "succeeded",
            timeout=60,
            what=f"acknowledged webhook {webhook.webhook_id} applied",
        )
    print(f"sigterm: {len(acknowledged)} acknowledged and applied, {len(refused)} refused or cut")


def test_poison_message_is_dead_lettered_then_replayed_once_fixed(
    stack: LocalStack,
    db: firestore.Client,
    files: FileServer,
    deliver: Deliver,
    invariants: Invariants,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An output that cannot be fetched (503 every time) exhausts archive-outputs' delivery
    attempts and lands on its dead-letter topic; once the file is back, `relay replay` brings the
    message back and the job ends succeeded, its file archived once."""
    prediction_id = unique_id()
    path = f"/{prediction_id}/late.png"
    url = files.serve(path, Answer(503, b"busy"))
    webhook = deliver(prediction_lifecycle(prediction_id, output=[url], progress_events=0)[-1])

    attempts = stack.topology.subscriptions[1].dead_letter.max_delivery_attempts
    wait_for(lambda: files.requests[path] >= attempts, timeout=120, what=f"{attempts} delivery attempts")

    def dead_lettered() -> bool:
        assert relay_main(["replay", "--from", "archive-outputs-dead-letter", "--dry-run"]) == 0
        return "Dry run: 1 message(s)" in capsys.readouterr().out

    wait_for(dead_lettered, timeout=60, what="the message on the dead-letter topic")
    assert _job(db, prediction_id).state == "archiving"  # type: ignore[union-attr]
    print(f"poison: {files.requests[path]} fetches before dead-lettering")

    files.serve(path, Answer(body=b"\x89PNG-recovered", content_type="image/png"))
    assert relay_main(["replay", "--from", "archive-outputs-dead-letter"]) == 0
    assert "republished 1" in capsys.readouterr().out
    job = _final_job(db, prediction_id, timeout=60, what="the replay")
    assert job.state == "succeeded"
    invariants.check([Submitted(prediction_id, prediction_id, files=1, posted=(webhook.webhook_id,))], None)


POISON_MODEL = "acme/" + "m" * 1_100_000  # any job document holding it is over Firestore's 1 MiB


@pytest.mark.parametrize(
    ("final", "with_file"),
    [({"status": "failed", "error": "CUDA out of memory"}, False), ({"status": "succeeded"}, True)],
    ids=["failed, job-status ends it", "succeeded with a file, archive-outputs ends it"],
)
def test_a_prediction_firestore_can_never_store_still_ends_its_job_and_nothing_is_dead_lettered(
    db: firestore.Client,
    files: FileServer,
    bucket: storage.Bucket,
    deliver: Deliver,
    invariants: Invariants,
    capsys: pytest.CaptureFixture[str],
    final: dict[str, Any],
    with_file: bool,
) -> None:
    """A poison message: the prediction's own `model` makes every document that holds it too large,
    so Firestore refuses each write with InvalidArgument, however often it is retried. The handlers
    treat that as permanent: the job is written without the prediction's values, in the state
    Replicate reported, marked `not_stored`, and each message is acknowledged, not dead-lettered."""
    prediction_id = unique_id()
    url = files.serve(f"/{prediction_id}/out.png", Answer(body=b"\x89PNG-poison", content_type="image/png"))
    bodies = prediction_lifecycle(prediction_id, model=POISON_MODEL, output=[url] if with_file else None)
    bodies[-1].update(final)
    posted = [deliver(body).webhook_id for body in bodies]

    job = _final_job(db, prediction_id, timeout=90, what="the job to end")
    assert (job.state, job.error_code) == (final["status"], "not_stored")
    assert "InvalidArgument" in str(job.error), job.error
    assert job.model is None  # what could not be kept is not on the job
    copies = [f"gs://{bucket.name}/predictions/{prediction_id}/0-out.png"] if with_file else []
    assert [entry["gs_uri"] for entry in job.outputs] == copies
    case = Submitted(prediction_id, prediction_id, files=int(with_file), posted=tuple(posted), expected=final["status"])
    invariants.check([case], None)
    time.sleep(3)  # longer than the fault topology's retry backoff: a refused message would be back by now
    for subscription in ("job-status-dead-letter", "archive-outputs-dead-letter"):
        assert relay_main(["replay", "--from", subscription, "--dry-run"]) == 0
        assert "Dry run: 0 message(s)" in capsys.readouterr().out, subscription


def _job(db: firestore.Client, job_id: str) -> Job | None:
    snapshot = db.collection(JOBS).document(job_id).get()
    return Job.from_document(snapshot.to_dict() or {}) if snapshot.exists else None


def _final_job(db: firestore.Client, job_id: str, *, timeout: float, what: str) -> Job:
    return wait_for(lambda: (job := _job(db, job_id)) and job.is_terminal and job, timeout=timeout, what=what)


def _answered_since(invariants: Invariants, cases: list[Submitted], since: float, status: int) -> bool:
    return any(
        d["at"] >= since and d["status_code"] == status
        for case in list(cases)
        for d in invariants.deliveries(case.prediction_id)
    )


def _final(simulator: httpx.Client, prediction_id: str) -> str:
    return str(simulator.get(f"/_sim/predictions/{prediction_id}/deliveries").json()["final"])
