"""The image as Cloud Run runs it: every service a container, read-only, as its own user, with
Terraform's environment; one signed lifecycle end to end; a clean start and a clean SIGTERM.

The shutdown tests stop containers for good, so they come last in this file, in the order that
leaves each what it needs running (archive-outputs' test posts through the receiver).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import google_crc32c
import httpx
import pytest
from google.cloud import firestore, pubsub_v1, storage

from replicate_relay.client import RelayClient
from replicate_relay.devstack.processes import StackError, free_port, http_answers
from replicate_relay.devstack.stack import API, DEV_WEBHOOK_SECRET, HANDLERS, RECEIVER
from replicate_relay.jobs import TERMINAL_STATES
from replicate_relay.testing import prediction_lifecycle, sign_webhook
from replicate_relay.traceview.lookup import find_in_file
from replicate_relay.traceview.model import Trace
from tests.image.conftest import PROJECT, SERVICES, ImageStack
from tests.integration.conftest import Tap, unique_id, wait_for, wait_for_job
from tests.integration.fileserver import Answer, FileServer
from tests.integration.json_shapes import SHAPES, Shape, exact, handler_lines, lifecycle, timestamps

SPECS = {"receiver": RECEIVER, **HANDLERS, "api": API}
CLOUD_RUN_KILL_SECONDS = 10.0  # Cloud Run sends SIGKILL this long after SIGTERM
PIPELINE_WAIT = 90.0  # bound on waiting for the pipeline, not a figure it must meet


def _error_lines(text: str) -> list[str]:
    """Lines at ERROR or worse, in our JSON logs or in gunicorn's and Python's own formats."""
    found = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("severity") in {"ERROR", "CRITICAL", "ALERT", "EMERGENCY"}:
                found.append(line)
            continue
        if "[ERROR]" in line or "[CRITICAL]" in line or line.startswith("Traceback"):
            found.append(line)
    return found


# ---- how the containers run ----


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_starts_without_an_error_line(image_stack: ImageStack, service: str) -> None:
    log = image_stack.start_logs[service]
    assert _error_lines(log) == [], f"{service} logged errors at start:\n{log}"


@pytest.mark.parametrize("service", SERVICES)
def test_each_container_runs_read_only_as_the_images_own_user(image_stack: ImageStack, service: str) -> None:
    process = image_stack.stack.functions[service]
    container = process.container  # type: ignore[attr-defined]
    engine = image_stack.engine
    inspected = json.loads(engine.run("container", "inspect", container))[0]
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert engine.run("exec", container, "id", "-u").strip() == "10001"
    # Nothing writable but what the test mounted: not the code, not /tmp.
    probe = "import pathlib,sys; p=pathlib.Path(sys.argv[1]); p.write_text('x')"
    for path in ("/app/replicate_relay/probe", "/tmp/probe", "/nonexistent/probe"):  # noqa: S108
        refused = engine.run("exec", container, "python", "-c", probe, path, check=False)
        assert refused == "", f"{service} could write {path}"
        assert engine.run("exec", container, "test", "-e", path, check=False) == ""


@pytest.mark.parametrize(
    ("service", "variable"), [("archive-outputs", "RELAY_PROJECT"), ("receiver", "FUNCTION_TARGET")]
)
def test_a_variable_terraform_forgot_stops_the_container_at_start_naming_it(
    image_stack: ImageStack, tmp_path: Path, service: str, variable: str
) -> None:
    """What the test would meet if infra/terraform dropped or misspelt one of a service's variables."""
    stack = image_stack.stack
    terraform = image_stack.launcher.environments[service]
    values = {name: value for name, value in terraform.values.items() if name != variable}
    launcher = dataclasses.replace(
        image_stack.launcher,
        environments={service: dataclasses.replace(terraform, values=values)},
    )
    spec = SPECS[service]
    port = free_port()
    process = launcher(
        service,
        spec,
        host=stack.config.host,
        port=port,
        env={**stack.client_env, "RELAY_WEBHOOK_SECRETS": DEV_WEBHOOK_SECRET},
        log_path=tmp_path / f"{service}.log",
        ready=http_answers(stack.url(port) + "/health"),
    )
    process.start()
    try:
        with pytest.raises(StackError, match="exited during start-up"):
            process.wait_ready(60)
    finally:
        process.stop()
    log = (tmp_path / f"{service}.log").read_text()
    assert "required but not set" in log
    assert variable in log


def test_every_variable_terraform_sets_is_read_by_code_in_the_image(image_stack: ImageStack) -> None:
    """A misspelt name starts fine (the code falls back to its default) but is read by nothing: look
    for each name in the image's code and libraries."""
    names = sorted({name for env in image_stack.launcher.environments.values() for name in [*env.values, *env.secrets]})
    script = 'for n in "$@"; do grep -rqF --include=*.py "$n" /app /opt/venv/lib || echo "$n"; done'
    unread = image_stack.engine.run(
        "run", "--rm", "--network", "none", image_stack.image, "sh", "-c", script, "sh", *names
    )
    assert unread.split() == []


def test_start_times_are_recorded(image_stack: ImageStack) -> None:
    """Every service answered 200 on /health; how long each took is printed for the report."""
    for service in SERVICES:
        assert image_stack.start_seconds[service] > 0
    print(  # shown with pytest -s; docs/BENCHMARKS.md records bench/image.py's figures
        "start to first 200 (all six starting at once): "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in image_stack.start_seconds.items())
    )


# ---- one signed lifecycle through the containers ----


@pytest.fixture
def job_events(image_stack: ImageStack) -> Any:
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(PROJECT, f"tap-{uuid.uuid4().hex[:8]}")
    yield Tap(subscriber, path, f"projects/{PROJECT}/topics/job-events")
    subscriber.delete_subscription(request={"subscription": path})
    subscriber.close()


def test_a_signed_lifecycle_through_the_containers_archives_both_files_and_announces_once(
    image_stack: ImageStack, db: firestore.Client, files: FileServer, job_events: Tap
) -> None:
    stack = image_stack.stack
    prediction_id = unique_id()
    bodies = {
        "restored.png": b"\x89PNG\r\n" + uuid.uuid4().bytes * 2048,
        "restored-2x.png": b"\x89PNG\r\n" + uuid.uuid4().bytes * 4096,
    }
    urls = [
        files.serve(f"/{prediction_id}/{name}", Answer(body=body, content_type="image/png"))
        for name, body in bodies.items()
    ]
    lifecycle = prediction_lifecycle(prediction_id, output=urls)
    webhooks = [sign_webhook(body, (DEV_WEBHOOK_SECRET,)) for body in lifecycle]
    with httpx.Client(timeout=15) as http:
        for webhook in webhooks:
            response = http.post(stack.receiver_url, content=webhook.body, headers=webhook.headers)
            assert response.status_code == 200, response.text

    job_id = wait_for(lambda: _job_id(db, prediction_id), timeout=PIPELINE_WAIT, what="the job")
    job = wait_for_job(db, job_id, "succeeded", timeout=PIPELINE_WAIT)

    # Both files in the bucket, each with the CRC32C of what was served.
    bucket = storage.Client(project=PROJECT).bucket(stack.topology.bucket.name(PROJECT))
    blobs = {
        blob.name.rsplit("/", 1)[-1].split("-", 1)[1]: blob
        for blob in bucket.list_blobs(prefix=f"predictions/{prediction_id}/")
    }
    assert set(blobs) == set(bodies)
    for name, body in bodies.items():
        assert blobs[name].size == len(body)
        assert blobs[name].crc32c == _crc32c(body)
    assert sorted(output["crc32c"] for output in job.outputs) == sorted(_crc32c(body) for body in bodies.values())

    # Exactly one announcement.
    def mine() -> list[dict[str, Any]]:
        job_events()
        return [json.loads(m.message.data) for m in job_events.received if m.message.attributes.get("job_id") == job_id]

    wait_for(mine, timeout=PIPELINE_WAIT, what="the job's announcement")
    time.sleep(3)  # a duplicate would arrive within this
    announced = mine()
    assert len(announced) == 1
    assert announced[0]["state"] == "succeeded"

    # The final webhook is one trace with spans from each container it went through.
    final = webhooks[-1].webhook_id

    def whole_trace() -> Trace | None:
        for trace in find_in_file(stack.trace_file, prediction_id).traces:
            if any(span.attributes.get("relay.webhook_id") == final for span in trace.spans):
                wanted = {"receiver", "job-status", "archive-outputs"}
                return trace if wanted <= set(trace.services) else None
        return None

    trace = wait_for(whole_trace, timeout=PIPELINE_WAIT, what="the final webhook's trace from three containers")
    assert len({span.trace_id for span in trace.spans}) == 1


def _job_id(db: firestore.Client, prediction_id: str) -> str | None:
    snapshot = db.collection("predictions").document(prediction_id).get()
    data = snapshot.to_dict() if snapshot.exists else None
    return str(data["job_id"]) if data else None


def _crc32c(data: bytes) -> str:
    checksum = google_crc32c.Checksum(data)
    return base64.b64encode(checksum.digest()).decode()


def test_the_api_container_submits_to_the_simulator_and_reads_the_job_the_pipeline_finished(
    image_stack: ImageStack,
) -> None:
    """Terraform's environment for the api service, with auth off (no Google tokens here; the
    launcher sets RELAY_API_AUTH=off as it does RELAY_PUSH_AUTH): a submission through it becomes a
    prediction whose webhooks reach the receiver's container and finish the job."""
    stack = image_stack.stack
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        assert api.get("/health").status_code == 200
        created = api.post(
            "/v1/jobs",
            json={"model": "acme/upscaler", "input": {"sim_duration": 0.2, "sim_files": 0}},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        assert created.json()["prediction_id"]
        final = wait_for(
            lambda: ((body := api.get(f"/v1/jobs/{job_id}").json())["state"] == "succeeded" and body) or None,
            timeout=PIPELINE_WAIT,
            what="the api's job to succeed",
        )
        assert final["created_at"]
        refused = api.post("/v1/jobs", content=b"{", headers={"Content-Type": "application/json"})
        assert (refused.status_code, refused.headers["content-type"]) == (400, "application/problem+json")


@pytest.mark.parametrize("shape", SHAPES, ids=[shape.id for shape in SHAPES])
def test_each_json_shape_through_the_containers_ends_succeeded_and_reads_back_exactly(
    image_stack: ImageStack, shape: Shape
) -> None:
    """Issue 21's six shapes: the receiver's container takes the signed lifecycle, the handlers'
    containers write the job; the api container, and RelayClient on Firestore, read it back exact."""
    stack = image_stack.stack
    prediction_id = unique_id()  # the job's id too: nobody submitted it
    bodies = lifecycle(prediction_id, shape)
    with httpx.Client(timeout=15) as http:
        for body, timestamp in zip(bodies, timestamps(len(bodies)), strict=True):
            webhook = sign_webhook(body, (DEV_WEBHOOK_SECRET,), timestamp=timestamp)
            response = http.post(stack.receiver_url, content=webhook.body, headers=webhook.headers)
            assert response.status_code == 200, response.text

        def final() -> dict[str, Any] | None:
            response = http.get(f"{stack.api_url}/v1/jobs/{prediction_id}")
            served: dict[str, Any] = response.json() if response.status_code == 200 else {}
            return served if served.get("state") in TERMINAL_STATES else None

        served = wait_for(final, timeout=PIPELINE_WAIT, what=f"job {prediction_id} to be final")
    context = handler_lines(stack, prediction_id)
    assert (served["state"], served["error"]) == ("succeeded", None), context
    assert exact(served["input"]) == exact(shape.input), context
    assert exact(served["output"]) == exact(shape.output), context
    with RelayClient.from_env(stack.client_env, submitting=False) as relay:
        job = relay.get(prediction_id)
    assert job is not None
    assert job.state == "succeeded"
    assert (job.input, exact(job.input)) == (shape.input, exact(shape.input))
    assert (job.output, exact(job.output)) == (shape.output, exact(shape.output))


# ---- SIGTERM: requests in flight finish, telemetry is flushed, the container exits before the kill ----


def test_sigterm_lets_archive_outputs_finish_a_slow_copy(
    image_stack: ImageStack, db: firestore.Client, files: FileServer
) -> None:
    stack = image_stack.stack
    prediction_id = unique_id()
    body = uuid.uuid4().bytes * 16384  # 256 KiB, served in 64 KiB chunks 0.7 s apart: ~2 s in flight
    path = f"/{prediction_id}/slow.png"
    url = files.serve(path, Answer(body=body, content_type="image/png", chunk_delay=0.7))
    final = prediction_lifecycle(prediction_id, output=[url])[-1]
    webhook = sign_webhook(final, (DEV_WEBHOOK_SECRET,))
    with httpx.Client(timeout=15) as http:
        assert http.post(stack.receiver_url, content=webhook.body, headers=webhook.headers).status_code == 200
    wait_for(lambda: files.requests[path] >= 1, timeout=PIPELINE_WAIT, what="the copy to start")
    stopped = _stop_in_background(stack.functions["archive-outputs"])
    stopped.join(CLOUD_RUN_KILL_SECONDS + 40)
    log = stack.functions["archive-outputs"].log_path.read_text()
    assert stopped.status == 0, f"archive-outputs exited with {stopped.status} after SIGTERM (137: killed at 10 s)"
    assert any(prediction_id in line and '"outcome": "applied"' in line for line in log.splitlines()), log[-2000:]
    assert files.requests[path] == 1  # finished in the first attempt, not redelivered
    job_id = wait_for(lambda: _job_id(db, prediction_id), timeout=PIPELINE_WAIT, what="the job")
    job = wait_for_job(db, job_id, "succeeded", timeout=PIPELINE_WAIT)
    assert [output["size"] for output in job.outputs] == [len(body)]


def test_sigterm_lets_the_receivers_request_in_flight_finish_and_flushes_its_spans(image_stack: ImageStack) -> None:
    stack = image_stack.stack
    receiver = stack.functions["receiver"]
    prediction_id = unique_id()
    webhook = sign_webhook(prediction_lifecycle(prediction_id)[0], (DEV_WEBHOOK_SECRET,))
    head = b"".join(
        [
            b"POST / HTTP/1.1\r\n",
            f"Host: {stack.config.host}:{stack.config.receiver_port}\r\n".encode(),
            *(f"{name}: {value}\r\n".encode() for name, value in webhook.headers.items()),
            f"Content-Length: {len(webhook.body)}\r\nConnection: close\r\n\r\n".encode(),
        ]
    )
    half = len(webhook.body) // 2
    with socket.create_connection((stack.config.host, stack.config.receiver_port), timeout=30) as connection:
        connection.sendall(head + webhook.body[:half])
        time.sleep(0.5)  # the request is being read: in flight
        stopped = _stop_in_background(receiver)
        time.sleep(1.0)  # SIGTERM has arrived; the request goes on
        connection.sendall(webhook.body[half:])
        answer = connection.makefile("rb").read()
    stopped.join(CLOUD_RUN_KILL_SECONDS + 40)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert stopped.status == 0, f"the receiver exited with {stopped.status} after SIGTERM (137: killed at 10 s)"
    # Its spans were exported at exit (the receiver batches spans; nothing flushed them per request).
    assert any(
        span.service == "receiver"
        for trace in find_in_file(stack.trace_file, prediction_id).traces
        for span in trace.spans
    )


@pytest.mark.parametrize("service", ["job-status", "reconciler", "status-page", "api"])
def test_sigterm_stops_each_service_before_cloud_runs_kill(image_stack: ImageStack, service: str) -> None:
    stopped = _stop_in_background(image_stack.stack.functions[service])
    stopped.join(CLOUD_RUN_KILL_SECONDS + 40)
    log = image_stack.stack.functions[service].log_path.read_text()
    assert stopped.status == 0, f"{service} exited with {stopped.status} after SIGTERM (137: killed at 10 s)"
    assert _error_lines(log) == []


class _Stop(threading.Thread):
    """Stops the container as Cloud Run does (SIGTERM, SIGKILL 10 s later, timed by the engine), then
    holds its exit status: 0 if it exited by itself in time."""

    def __init__(self, process: Any) -> None:
        super().__init__(daemon=True)
        self._process = process
        self.status: int | None = None

    def run(self) -> None:
        self.status = self._process.stop(timeout=CLOUD_RUN_KILL_SECONDS)


def _stop_in_background(process: Any) -> _Stop:
    stop = _Stop(process)
    stop.start()
    return stop
