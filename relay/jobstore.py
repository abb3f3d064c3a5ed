"""Firestore persistence of jobs: every event applied in one transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore

from relay.events import PredictionEvent
from relay.jobs import DEFAULT_POLICY, Job, Outcome, Policy, apply_event

JOBS = "jobs"
PREDICTIONS = "predictions"
EVENTS = "events"  # jobs/{job_id}/events/{hash of webhook-id}: dedup and audit record


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Applied:
    """What applying one event did, for the handler's log line and response."""

    outcome: Outcome
    job_id: str
    state: str | None


class JobStore:
    """Jobs in Firestore. One instance per process; the client is created by the caller."""

    def __init__(
        self,
        client: firestore.Client,
        *,
        policy: Policy = DEFAULT_POLICY,
        event_retention: timedelta = timedelta(days=30),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._client = client
        self._policy = policy
        self._event_retention = event_retention
        self._clock = clock

    def apply(self, event: PredictionEvent) -> Applied:
        """Apply one event to its job in a transaction (retried by the client on contention)."""
        applied: Applied = _run_apply(self._client.transaction(), self, event)
        return applied

    def get(self, job_id: str) -> Job | None:
        snapshot = self._client.collection(JOBS).document(job_id).get()
        return Job.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def find_by_prediction(self, prediction_id: str) -> Job | None:
        mapping = self._client.collection(PREDICTIONS).document(prediction_id).get()
        job_id = mapping.get("job_id") if mapping.exists else None
        return self.get(job_id) if job_id else None

    def _apply_in(self, transaction: firestore.Transaction, event: PredictionEvent) -> Applied:
        attributes = event.attributes
        mapping_ref = self._client.collection(PREDICTIONS).document(attributes.prediction_id)
        mapping = mapping_ref.get(transaction=transaction)
        # A webhook for a prediction nobody submitted through us still gets a job, keyed by
        # the prediction id, so no event is ever dropped.
        job_id: str = mapping.get("job_id") if mapping.exists else attributes.prediction_id
        job_ref = self._client.collection(JOBS).document(job_id)
        event_ref = job_ref.collection(EVENTS).document(_event_key(attributes.webhook_id))
        job_snapshot = job_ref.get(transaction=transaction)
        if event_ref.get(transaction=transaction).exists:
            state = job_snapshot.get("state") if job_snapshot.exists else None
            return Applied(Outcome.DUPLICATE, job_id, state)

        job = Job.model_validate(job_snapshot.to_dict()) if job_snapshot.exists else None
        now = self._clock()
        decision = apply_event(job, event, job_id=job_id, now=now, policy=self._policy)
        transaction.create(event_ref, self._event_record(event, decision.outcome, now))
        if not mapping.exists:
            transaction.set(mapping_ref, {"job_id": job_id, "created_at": now})
        if decision.job is not None:
            transaction.set(job_ref, decision.job.to_document())
        final = decision.job or job
        return Applied(decision.outcome, job_id, final.state if final else None)

    def _event_record(self, event: PredictionEvent, outcome: Outcome, now: datetime) -> dict[str, Any]:
        attributes = event.attributes
        return {
            "webhook_id": attributes.webhook_id,
            "webhook_timestamp": attributes.webhook_timestamp,
            "status": attributes.status,
            "source": attributes.source.value,
            "outcome": outcome.value,
            "received_at": now,
            "expire_at": now + self._event_retention,  # Firestore TTL policy field
        }


@firestore.transactional
def _run_apply(transaction: firestore.Transaction, store: JobStore, event: PredictionEvent) -> Applied:
    return store._apply_in(transaction, event)


def _event_key(webhook_id: str) -> str:
    # webhook-ids are any printable ASCII; Firestore ids may not contain "/" nor be "." or "..".
    return hashlib.sha256(webhook_id.encode("utf-8")).hexdigest()[:40]
