"""`relay dev --demo`: what `make run` shows once the stack is up.

1. A signed sample lifecycle (start → processing → succeeded, text output) posted straight to the
   receiver, with the job printed as it changes.
2. Three predictions submitted through Replicate's own client to the local simulator: one
   succeeds with two image files, one fails, one loses its final webhook and is recovered by the
   reconciler. Progress is shown per job, then a table of where each ended.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
from google.cloud import firestore

from replicate_relay.devstack.stack import LocalStack
from replicate_relay.jobs import Job
from replicate_relay.jobstore import JOBS, JobStore
from replicate_relay.replicate_api import ModelRef, ReplicateAPI
from replicate_relay.submit import DEFAULT_MODEL, SubmitFailed, Submitter
from replicate_relay.testing import prediction_lifecycle, sign_webhook

Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoJob:
    label: str
    expected: str
    sim: dict[str, Any]


DEMO_JOBS = (
    DemoJob("restored photo, two files", "succeeded", {"sim_files": 2, "sim_file_bytes": 200_000, "sim_logs": 4}),
    DemoJob("model error", "failed", {"sim_outcome": "failed", "sim_error": "CUDA out of memory", "sim_logs": 2}),
    DemoJob("final webhook lost", "succeeded", {"sim_files": 1, "sim_drop_final": True, "sim_logs": 2}),
)


def run_demo(stack: LocalStack, *, say: Say = print, timeout: float = 90.0) -> list[Job]:
    """Run both parts; returns the final jobs (the signed sample first)."""
    os.environ.update(stack.client_env)
    db = firestore.Client(project=stack.config.project)
    sample = _signed_lifecycle(stack, db, say, timeout=30.0)
    submitted = _submitted_jobs(stack, db, say, timeout=timeout)
    archived = next((job for job in submitted if job.outputs), None)
    if archived is not None:
        _draw_trace(stack, archived, say)
    return [sample, *submitted]


def _signed_lifecycle(stack: LocalStack, db: firestore.Client, say: Say, *, timeout: float) -> Job:
    prediction_id = f"demo{uuid.uuid4().hex[:12]}"
    say(f"\n1. A signed sample lifecycle for prediction {prediction_id}, posted to {stack.receiver_url}")
    job: Job | None = None
    with httpx.Client(timeout=10) as http:
        for body in prediction_lifecycle(prediction_id, output=["Restored ", "photo ", "ready."]):
            webhook = sign_webhook(body, stack.config.webhook_secrets)
            response = http.post(stack.receiver_url, content=webhook.body, headers=webhook.headers)
            say(f"  POST {body['status']:<11} → {response.status_code} {response.json()}")
            job = _wait_for_status(db, prediction_id, body["status"], timeout)
            say(f"    jobs/{job.job_id}: {_summary(job)}")
    if job is None:
        raise RuntimeError("the sample lifecycle is empty")
    return job


def _submitted_jobs(stack: LocalStack, db: firestore.Client, say: Say, *, timeout: float) -> list[Job]:
    say(f"\n2. Three predictions submitted with Replicate's client to the simulator at {stack.simulator_url}")
    submitter = Submitter(
        store=JobStore(db),
        replicate=ReplicateAPI.connect(stack.client_env["REPLICATE_API_TOKEN"], base_url=stack.simulator_url),
        webhook_url=stack.receiver_url + "/",
    )
    model = ModelRef.parse(DEFAULT_MODEL)
    started: dict[str, tuple[DemoJob, float]] = {}
    for demo in DEMO_JOBS:
        inputs = {
            "input_image": "https://example.com/old-photo.jpg",
            "seed": 42,
            "output_format": "png",
            "safety_tolerance": 2,
            "sim_duration": 2.0,
            **demo.sim,
        }
        try:
            job = submitter.submit(model, inputs, metadata={"order": f"demo-{len(started) + 1}"})
        except SubmitFailed as error:
            say(f"  {demo.label}: submit failed: {error}")
            continue
        started[job.job_id] = (demo, time.monotonic())
        say(f"  {demo.label:<27} job {job.job_id}  prediction {job.prediction_id}")
    if stack.config.reconcile_every > 0:
        say(f"  (the reconciler runs every {stack.config.reconcile_every:g} s and checks jobs quiet for 10 s)")

    submitter.replicate.close()
    finals = _follow(db, started, say, timeout)
    say("\n  job                               expected   state      end-to-end  outputs")
    for job_id, (demo, _) in started.items():
        final = finals.get(job_id)
        state = final.state if final else "(still running)"
        latency = _end_to_end(final)
        uris = ", ".join(e["gs_uri"] for e in final.outputs if e.get("gs_uri")) if final else ""
        shown = uris or (final.error if final else "") or "-"
        say(f"  {job_id}  {demo.expected:<10} {state:<10} {latency:>10}  {shown}")
    return [finals[job_id] for job_id in started if job_id in finals]


def _follow(
    db: firestore.Client, started: dict[str, tuple[DemoJob, float]], say: Say, timeout: float
) -> dict[str, Job]:
    """Print each job's state as it changes, until all are final or `timeout` passes."""
    shown: dict[str, str] = {}
    finals: dict[str, Job] = {}
    deadline = time.monotonic() + timeout
    while len(finals) < len(started) and time.monotonic() < deadline:
        for job_id, (demo, began) in started.items():
            if job_id in finals:
                continue
            snapshot = db.collection(JOBS).document(job_id).get()
            if not snapshot.exists:
                continue
            job = Job.from_document(snapshot.to_dict() or {})
            if shown.get(job_id) != job.state:
                shown[job_id] = job.state
                say(f"  +{time.monotonic() - began:5.1f} s  {demo.label:<27} {job.state}")
            if job.is_terminal:
                finals[job_id] = job
        time.sleep(0.25)
    return finals


def _draw_trace(stack: LocalStack, job: Job, say: Say, *, timeout: float = 10.0) -> None:
    """The trace of the job's final webhook: receiver → Pub/Sub → both handlers → Cloud Storage."""
    from replicate_relay.traceview.lookup import find_in_file  # noqa: PLC0415 - only the demo draws
    from replicate_relay.traceview.text import render_text  # noqa: PLC0415

    say(f"\n3. The trace of job {job.job_id}'s final webhook (all of its traces: relay trace {job.job_id})")
    deadline = time.monotonic() + timeout
    while True:
        found = find_in_file(stack.trace_file, job.job_id)
        final = [
            trace
            for trace in found.traces
            if {"archive file", "process archive-outputs"} <= {span.name for span in trace.spans}
        ]
        if final or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # each process writes its spans as it answers; the last may be a moment behind
    if not final:
        say(f"  (no trace with its archive spans in {stack.trace_file} yet)")
        return
    say(render_text(replace(found, traces=(final[-1],)), width=110))


def _wait_for_status(db: firestore.Client, job_id: str, status: str, timeout: float) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = db.collection(JOBS).document(job_id).get()
        if snapshot.exists and snapshot.get("replicate_status") == status:
            return Job.from_document(snapshot.to_dict() or {})
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not show status {status} within {timeout:g} s")


def _end_to_end(job: Job | None) -> str:
    """Replicate's completed_at → the job's final write."""
    if job is None or job.completed_at is None or job.updated_at is None:
        return "-"
    return f"{(job.updated_at - job.completed_at).total_seconds():.2f} s"


def _summary(job: Job) -> str:
    shown: dict[str, Any] = {
        "state": job.state,
        "replicate_status": job.replicate_status,
        "logs_tail": job.logs_tail.strip().replace("\n", " | ") or None,
        "output_value": job.output_value,
    }
    return ", ".join(f"{name}={value!r}" for name, value in shown.items() if value is not None)
