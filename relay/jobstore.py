"""Firestore persistence of jobs: every event applied in one transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore

from relay.events import PredictionEvent
from relay.jobs import DEFAULT_POLICY, Decision, Failure, Job, Outcome, Policy, apply_event, finish_archive

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
    job: Job | None  # the job as it stands after the transaction

    @property
    def state(self) -> str | None:
        return self.job.state if self.job else None


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

    def apply(self, event: PredictionEvent, *, actor: str = "job-status") -> Applied:
        """Apply one event to its job in a transaction (retried by the client on contention).

        A webhook-id seen before is a no-op: the per-event record is the dedup key.
        """

        def work(transaction: firestore.Transaction, job_id: str, job: Job | None) -> Applied | Decision:
            event_ref = self._jobs.document(job_id).collection(EVENTS).document(_event_key(event.attributes.webhook_id))
            if event_ref.get(transaction=transaction).exists:
                return Applied(Outcome.DUPLICATE, job_id, job)
            now = self._clock()
            decision = apply_event(job, event, job_id=job_id, now=now, policy=self._policy, actor=actor)
            transaction.create(event_ref, self._event_record(event, decision.outcome, now))
            return decision

        return self._transact(event, work)

    def finish_archive(self, event: PredictionEvent, outputs: list[dict[str, Any]], failure: Failure | None) -> Applied:
        """Record archived outputs and make the job final: succeeded, or failed with `failure`."""

        def work(transaction: firestore.Transaction, job_id: str, job: Job | None) -> Decision:
            return finish_archive(
                job, event, job_id=job_id, outputs=outputs, failure=failure, now=self._clock(), policy=self._policy
            )

        return self._transact(event, work)

    def mark_announced(self, job_id: str) -> None:
        """Note that the job's final state went out on job-events (a final state never changes)."""
        self._jobs.document(job_id).update({"announced_at": self._clock()})

    def get(self, job_id: str) -> Job | None:
        snapshot = self._jobs.document(job_id).get()
        return Job.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def find_by_prediction(self, prediction_id: str) -> Job | None:
        mapping = self._client.collection(PREDICTIONS).document(prediction_id).get()
        return self.get(mapping.get("job_id")) if mapping.exists else self.get(prediction_id)

    @property
    def _jobs(self) -> firestore.CollectionReference:
        return self._client.collection(JOBS)

    def _transact(
        self,
        event: PredictionEvent,
        work: Callable[[firestore.Transaction, str, Job | None], Applied | Decision],
    ) -> Applied:
        """Read the mapping and the job, let `work` decide, write what it decided — atomically."""

        @firestore.transactional
        def run(transaction: firestore.Transaction) -> Applied:
            prediction_id = event.attributes.prediction_id
            mapping_ref = self._client.collection(PREDICTIONS).document(prediction_id)
            mapping = mapping_ref.get(transaction=transaction)
            # A webhook for a prediction nobody submitted through us still gets a job, keyed by
            # the prediction id, so no event is ever dropped.
            job_id: str = mapping.get("job_id") if mapping.exists else prediction_id
            job_ref = self._jobs.document(job_id)
            snapshot = job_ref.get(transaction=transaction)
            job = Job.model_validate(snapshot.to_dict()) if snapshot.exists else None
            result = work(transaction, job_id, job)
            if isinstance(result, Applied):
                return result
            if not mapping.exists:
                transaction.set(mapping_ref, {"job_id": job_id, "created_at": self._clock()})
            if result.job is not None:
                transaction.set(job_ref, result.job.to_document())
            return Applied(result.outcome, job_id, result.job or job)

        applied: Applied = run(self._client.transaction())
        return applied

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


def _event_key(webhook_id: str) -> str:
    # webhook-ids are any printable ASCII; Firestore ids may not contain "/" nor be "." or "..".
    return hashlib.sha256(webhook_id.encode("utf-8")).hexdigest()[:40]
