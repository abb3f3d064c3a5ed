"""`relay dev --demo`: send a signed sample lifecycle through the running stack and show the job change."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from google.cloud import firestore

from relay.devstack.stack import LocalStack
from relay.jobs import Job
from relay.jobstore import JOBS
from relay.testing import prediction_lifecycle, sign_webhook


def run_demo(stack: LocalStack, *, say: Callable[[str], None] = print, timeout: float = 30.0) -> Job:
    """Send start → processing → succeeded for a fresh prediction; print the job after each step."""
    os.environ.update(stack.emulator_env)
    db = firestore.Client(project=stack.config.project)
    prediction_id = f"demo{uuid.uuid4().hex[:12]}"
    say(f"\nSending a signed sample lifecycle for prediction {prediction_id} to {stack.receiver_url}")
    job: Job | None = None
    with httpx.Client(timeout=10) as http:
        for body in prediction_lifecycle(prediction_id, output=["Restored ", "photo ", "ready."]):
            webhook = sign_webhook(body, stack.config.webhook_secrets)
            response = http.post(stack.receiver_url, content=webhook.body, headers=webhook.headers)
            say(f"  POST {body['status']:<11} → {response.status_code} {response.json()}")
            job = _wait_for_state(db, prediction_id, body["status"], timeout)
            say(f"    jobs/{job.job_id}: {_summary(job)}")
    if job is None:
        raise RuntimeError("the sample lifecycle is empty")
    return job


def _wait_for_state(db: firestore.Client, job_id: str, status: str, timeout: float) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = db.collection(JOBS).document(job_id).get()
        if snapshot.exists and snapshot.get("replicate_status") == status:
            return Job.model_validate(snapshot.to_dict())
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not reach status {status} within {timeout:g} s")


def _summary(job: Job) -> str:
    shown: dict[str, Any] = {
        "state": job.state,
        "replicate_status": job.replicate_status,
        "logs_tail": job.logs_tail.strip().replace("\n", " | ") or None,
        "output_value": job.output_value,
        "completed_at": job.completed_at.isoformat() if job.completed_at else None,
    }
    return ", ".join(f"{name}={value!r}" for name, value in shown.items() if value is not None)
