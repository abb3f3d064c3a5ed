"""`job-events`: one announcement per job that reaches a final state, for downstream consumers."""

from __future__ import annotations

import json
from typing import Any

from relay.jobs import Job
from relay.jobstore import JobStore
from relay.publisher import TopicPublisher

SCHEMA_VERSION = "1"


def event_id(job: Job) -> str:
    """Deterministic, so a consumer drops the (rare) duplicate announcement of the same final state."""
    return f"{job.job_id}:{job.state}"


def job_event(job: Job) -> tuple[bytes, dict[str, str]]:
    """The message announcing `job`'s final state: JSON data and routing attributes."""
    body: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id(job),
        "type": f"job.{job.state}",
        "job_id": job.job_id,
        "prediction_id": job.prediction_id,
        "state": job.state,
        "model": job.model,
        "outputs": [
            {key: entry.get(key) for key in ("index", "gs_uri", "content_type", "size", "crc32c")}
            for entry in job.outputs
            if entry.get("gs_uri")
        ],
        "output_value": job.output_value,
        "error": job.error,
        "error_code": job.error_code,
        "metadata": job.metadata,
        "completed_at": job.completed_at.isoformat() if job.completed_at else None,
    }
    attributes = {
        "event_id": body["event_id"],
        "type": body["type"],
        "job_id": job.job_id,
        "state": job.state,
    }
    if job.prediction_id:
        attributes["prediction_id"] = job.prediction_id
    return json.dumps(body, default=str, separators=(",", ":")).encode("utf-8"), attributes


def announce(publisher: TopicPublisher, job: Job) -> str:
    """Publish the job's final state and wait for Pub/Sub; raises PublishError."""
    data, attributes = job_event(job)
    return publisher.publish(data, attributes)


def announce_once(store: JobStore, publisher: TopicPublisher, job: Job) -> bool:
    """Announce a final job unless it was announced or another process is announcing it.

    Returns whether this call published. Raises PublishError (the claim then lapses, so a retry
    announces it). A crash between publishing and recording leaves a duplicate, which consumers
    drop by `event_id`.
    """
    claimed = store.claim_announcement(job.job_id)
    if claimed is None:
        return False
    announce(publisher, claimed)
    store.mark_announced(claimed.job_id)
    return True
