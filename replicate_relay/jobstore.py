"""Firestore persistence of jobs: every event applied in one transaction."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.api_core import exceptions as google_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.watch import Watch
from opentelemetry.trace import SpanKind

from replicate_relay import telemetry
from replicate_relay.announcements import with_claim
from replicate_relay.events import Prediction, PredictionEvent
from replicate_relay.jobs import (
    DEFAULT_POLICY,
    Decision,
    Failure,
    Job,
    JobState,
    Outcome,
    Policy,
    absorbs,
    apply_event,
    finish_archive,
    left_to_archive,
    needs_archive,
)
from replicate_relay.values import VALUE_FIELDS, StoredValue, Unstorable, ValueStore, dumps, object_name, place

T = TypeVar("T")
# The snapshots of the documents a transaction's `work` asked for besides the job (see _transact).
_Others = Sequence["firestore.DocumentSnapshot[Any]"]
# Where `work` adds its own writes: the transaction, or the batch of a job's first write (_create_first).
_Writer = firestore.Transaction | firestore.WriteBatch
# What a write decides, given the writer, the job id, the job (None if absent) and the other snapshots.
_Work = Callable[[_Writer, str, Job | None, _Others], "Applied | Decision"]
# The other documents a write reads with the job, given the job id.
_AlsoRead = Callable[[str], list[firestore.DocumentReference]]

JOBS = "jobs"
PREDICTIONS = "predictions"
EVENTS = "events"  # jobs/{job_id}/events/{hash of webhook-id}: dedup and audit record
# How long a transaction keeps retrying on contention before the caller is told (Aborted): a
# handler then answers 503 and Pub/Sub redelivers after its backoff, instead of holding a push slot.
CONTENTION_BUDGET = timedelta(seconds=10)
_TRANSACTION_ATTEMPTS = 10  # per round: the client's immediate retries, which keep their place in line


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Located:
    """Where a prediction's job is, read outside any transaction."""

    job_id: str
    mapped: bool  # predictions/{id} exists: it never changes once written, so job_id is settled
    job: Job | None
    update_time: datetime | None = None  # the job document's, as read: the precondition of a write based on it


@dataclass(frozen=True)
class Applied:
    """What applying one event did, for the handler's log line and response."""

    outcome: Outcome
    job_id: str
    job: Job | None  # the job as it stands after the transaction
    # The transaction made the job final and, in the same write, claimed its announcement (no one
    # else can hold a claim on a job that was open): the caller publishes without claiming again.
    claimed: bool = False
    # Firestore refused the job as the event had it: this is why, and what was written instead is
    # the event without the prediction's values (see JobStore.apply).
    not_stored: str | None = None

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
        contention_budget: timedelta = CONTENTION_BUDGET,
        values: ValueStore | None = None,
    ) -> None:
        """`values`: where values too large for a job document go (replicate_relay.values). Without one, a
        value that does not fit is left out of an open job and makes a final write `not_stored`."""
        self._client = client
        self._values = values
        self._policy = policy
        self._event_retention = event_retention
        self._clock = clock
        self._contention_budget = contention_budget.total_seconds()

    def apply(self, event: PredictionEvent, *, actor: str = "job-status") -> Applied:
        """Apply one event to its job in a transaction (retried by the client on contention).

        A webhook-id seen before is a no-op: the per-event record is the dedup key. A succeeded
        event left to archive-outputs (replicate_relay.jobs.left_to_archive) is only recorded, outside any
        transaction, when its job exists: see _defer.

        If Firestore refuses the job as the event has it (Unstorable: no retry can change that),
        the event is applied again without the prediction's values, so the job still takes the
        state Replicate reported; it is marked `not_stored` (Applied.not_stored says why).
        """
        if left_to_archive(event):
            deferred = self._defer(event)
            if deferred is not None:
                return deferred
        try:
            return self._apply(event, actor, refused=None)
        except Unstorable as refused:
            return self._apply(_without_values(event), actor, refused=str(refused))

    def _apply(self, event: PredictionEvent, actor: str, *, refused: str | None) -> Applied:

        def record_refs(job_id: str) -> list[firestore.DocumentReference]:
            return [self._record_ref(job_id, event.attributes.webhook_id)]

        def work(transaction: _Writer, job_id: str, job: Job | None, others: _Others) -> Applied | Decision:
            [record] = others
            if record.exists:
                return Applied(Outcome.DUPLICATE, job_id, job)
            now = self._clock()
            decision = apply_event(job, event, job_id=job_id, now=now, policy=self._policy, actor=actor)
            transaction.create(record.reference, self._event_record(event, decision.outcome, now))
            return _marked(decision, refused)

        return self._transact("apply_event", event, work, also_read=record_refs, refused=refused)

    def _defer(self, event: PredictionEvent) -> Applied | None:
        """Record a succeeded event whose job archive-outputs finishes, without touching the job.

        No transaction: nothing is decided about the job, so the record alone is written, and
        `create` fails if the webhook-id was recorded meanwhile (the dedup stays exact). The job
        document is only read, outside any transaction, so it holds no lock against
        archive-outputs's write. None when there is no job yet (a prediction nobody submitted,
        whose succeeded webhook came first): the caller's transaction creates it in `archiving`,
        so the job exists, and the reconciler can find it, even while archive-outputs is down.
        """
        attributes = event.attributes
        with telemetry.tracer().start_as_current_span(
            "firestore record deferred event",
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": "firestore", "db.operation.name": "defer_event"},
        ):
            located = self.locate(attributes.prediction_id)
            if located.job is None:
                return None
            record_ref = self._record_ref(located.job_id, attributes.webhook_id)
            try:  # no read first: `create` is the dedup check
                record_ref.create(self._event_record(event, Outcome.DEFERRED, self._clock()))
            except google_exceptions.AlreadyExists:  # this webhook-id was recorded before
                return Applied(Outcome.DUPLICATE, located.job_id, located.job)
            return Applied(Outcome.DEFERRED, located.job_id, located.job)

    def locate(self, prediction_id: str) -> Located:
        """The prediction's job id and job, read without a transaction (no locks held)."""
        mapping = self._mapping(prediction_id).get()
        job_id: str = mapping.get("job_id") if mapping.exists else prediction_id
        snapshot = self._jobs.document(job_id).get()
        if not snapshot.exists:
            return Located(job_id, mapping.exists, None)
        return Located(job_id, mapping.exists, Job.from_document(_data(snapshot)), snapshot.update_time)

    def absorbed(self, located: Located | None) -> Applied | None:
        """Applied(ABSORBED) when `located` read the job final (it never changes again), else None."""
        if located is None or located.job is None or not absorbs(located.job):
            return None
        return Applied(Outcome.ABSORBED, located.job_id, located.job)

    def finish_archive(
        self,
        event: PredictionEvent,
        outputs: list[dict[str, Any]],
        failure: Failure | None,
        *,
        located: Located | None = None,
    ) -> Applied:
        """Record archived outputs and make the job final: succeeded, or failed with `failure`.

        `located`, when the caller read it (mapping and job, while the files were being copied),
        lets the job be finished in one write, on the condition that the job document is still
        as read (`last_update_time`): one Commit instead of a transaction's three round trips,
        and no lock held. If anyone wrote the job since, nothing is written and the transaction
        decides afresh. The announcement is claimed in the same write that makes the job final
        (Applied.claimed). A job Firestore refuses is finished as in `apply`, without the
        prediction's values, and if need be without the outputs' entries (the copies stay in the
        bucket under their deterministic names).
        """
        try:
            return self._finish_archive(event, outputs, failure, located=located, refused=None)
        except Unstorable as refused:
            stripped = _without_values(event)
            try:
                return self._finish_archive(stripped, outputs, failure, located=None, refused=str(refused))
            except Unstorable:  # the outputs' entries themselves are too many for one document
                return self._finish_archive(stripped, [], failure, located=None, refused=str(refused))

    def _finish_archive(
        self,
        event: PredictionEvent,
        outputs: list[dict[str, Any]],
        failure: Failure | None,
        *,
        located: Located | None,
        refused: str | None,
    ) -> Applied:
        def work(_: _Writer, job_id: str, job: Job | None, __: _Others) -> Decision:
            decision = finish_archive(
                job, event, job_id=job_id, outputs=outputs, failure=failure, now=self._clock(), policy=self._policy
            )
            return _marked(decision, refused)

        if located is not None and located.mapped and located.job is not None and located.update_time is not None:
            finished = self._write_if_unchanged("finish_archive", located, work)
            if finished is not None:
                return finished
        mapped = located.job_id if located is not None and located.mapped else None
        return self._transact("finish_archive", event, work, mapped_job_id=mapped, refused=refused)

    def _write_if_unchanged(
        self, operation: str, located: Located, work: Callable[[_Writer, str, Job | None, _Others], Decision]
    ) -> Applied | None:
        """`work`'s decision on the job as `located` read it, written only if the job is unchanged
        since (optimistic: the write's precondition, not a lock); None when it changed (or `work`
        writes nothing), for the caller's transaction."""
        with telemetry.tracer().start_as_current_span(
            f"firestore write {operation} if unchanged",
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": "firestore", "db.operation.name": operation},
        ) as span:
            batch = self._client.batch()
            decision = work(batch, located.job_id, located.job, [])
            if decision.job is None:
                return None
            written, claimed = with_claim(located.job, decision.job, self._clock())
            option = self._client.write_option(last_update_time=located.update_time)
            document, written = self._document(written)
            # update, not set (which takes no precondition): every field is written, so the same document.
            with _refusals():
                batch.update(self._jobs.document(located.job_id), document, option=option)
                try:
                    batch.commit()
                except (google_exceptions.FailedPrecondition, google_exceptions.Conflict):
                    span.add_event("changed since read")
                    return None
        return Applied(decision.outcome, located.job_id, written, claimed=claimed)

    def now(self) -> datetime:
        """The store's clock, as it stamps what it writes."""
        return self._clock()

    def update_if(
        self, operation: str, job_id: str, decide: Callable[[Job | None, datetime], dict[str, Any] | None]
    ) -> Job | None:
        """In a transaction: the fields `decide` picks for the job as read now, written; the job as
        read, or None when `decide` picks none."""

        def run(transaction: firestore.Transaction) -> Job | None:
            ref, job = self._read(transaction, job_id)
            fields = decide(job, self._clock())
            if fields is None:
                return None
            transaction.update(ref, fields)
            return job

        updated: Job | None = self._commit(operation, run)
        return updated

    def update_fields(self, job_id: str, fields: dict[str, Any]) -> None:
        """Write `fields` of an existing job without reading it (fields nothing else writes)."""
        self._jobs.document(job_id).update(fields)

    def create_submitted(self, job: Job) -> Job:
        """Store a new job before its prediction exists (fails if the id is taken); returns it as stored."""
        document, stored = self._document(job.model_copy(update={"updated_at": self._clock()}))
        with _refusals():
            self._jobs.document(job.job_id).create(document)
        return stored

    def attach_prediction(self, job_id: str, prediction_id: str) -> str:
        """Record which prediction a submitted job became, atomically with `predictions/{id}`.

        If a webhook got there first and created a job of its own for the prediction, that job is
        kept (it already holds the events) and takes over this one's metadata; this one is deleted.
        Returns the id of the job that now stands for the prediction.

        First as one batch that creates the mapping (no read locks, so no 2 s stand-off with the
        prediction's first webhooks, see _create_first); if the mapping exists, the transaction.
        """
        now = self._clock()
        batch = self._client.batch()
        mapping_ref = self._mapping(prediction_id)
        batch.create(mapping_ref, {"job_id": job_id, "created_at": now})
        batch.update(self._jobs.document(job_id), {"prediction_id": prediction_id, "updated_at": now})
        try:
            batch.commit()
        except google_exceptions.Conflict:  # AlreadyExists: a webhook (or a retry of ours) mapped it first
            pass
        else:
            return job_id

        def run(transaction: firestore.Transaction) -> str:
            mapping_ref = self._mapping(prediction_id)
            mapping = mapping_ref.get(transaction=transaction)
            job_ref = self._jobs.document(job_id)
            submitted = job_ref.get(transaction=transaction)
            if not mapping.exists or mapping.get("job_id") == job_id:
                transaction.set(mapping_ref, {"job_id": job_id, "created_at": self._clock()})
                transaction.update(job_ref, {"prediction_id": prediction_id, "updated_at": self._clock()})
                return job_id
            winner_id: str = mapping.get("job_id")
            winner_ref = self._jobs.document(winner_id)
            winner = winner_ref.get(transaction=transaction)
            mine = submitted.to_dict() or {}
            theirs = winner.to_dict() or {}
            updates = {
                "source": "submit",
                "metadata": {**mine.get("metadata", {}), **theirs.get("metadata", {})},
                "model": theirs.get("model") or mine.get("model"),
                # What only the submission knows: the webhook's job took its kind from Replicate's URL.
                **{name: mine.get(name) for name in _SUBMITTED_ONLY if mine.get(name) is not None},
            }
            if theirs.get("input_json") is None and "input" not in (theirs.get("stored_values") or {}):
                # The webhook's job has no input yet: the submitted one's (the same, as sent).
                updates["input_json"] = mine.get("input_json")
                if "input" in (mine.get("stored_values") or {}):
                    updates["stored_values.input"] = mine["stored_values"]["input"]
            transaction.update(winner_ref, updates)
            transaction.delete(job_ref)
            return winner_id

        attached: str = self._commit("attach_prediction", run)
        return attached

    def fail_submission(self, job_id: str, message: str) -> Job:
        """Make a job whose prediction could not be created final: failed, submit_failed."""
        now = self._clock()
        updates = {
            "state": JobState.FAILED.value,
            "error_json": dumps(message),
            "error_code": "submit_failed",
            "updated_at": now,
            "announcer": "submit",
        }
        self._jobs.document(job_id).update(updates)
        job = self.get(job_id)
        if job is None:
            raise LookupError(f"job {job_id} vanished")
        return job

    def find_quiet(
        self, states: list[str], quiet_since: datetime, *, limit: int, source: str | None = None
    ) -> list[Job]:
        """Jobs in `states` (and of `source`, if given) not written since `quiet_since`, oldest first.

        Needs the composite index (state, updated_at), or (source, state, updated_at) with `source`,
        declared in infra/firestore.indexes.json.
        """
        query = self._jobs.where(filter=FieldFilter("state", "in", states))
        if source is not None:
            query = query.where(filter=FieldFilter("source", "==", source))
        query = query.where(filter=FieldFilter("updated_at", "<", quiet_since)).order_by("updated_at").limit(limit)
        return [Job.from_document(_data(snapshot)) for snapshot in query.stream()]

    def adopt(self, job: Job) -> bool:
        """Store the job of a prediction Relay has never heard of (`relay adopt`), linked as a first
        webhook's job is: `predictions/{id}` → `jobs/{job_id}`, atomically. Returns False, writing
        nothing, when the prediction is mapped or the job exists already, so adopting twice is a no-op.
        """
        if job.prediction_id is None:
            raise ValueError("an adopted job needs its prediction id")
        mapping_ref = self._mapping(job.prediction_id)
        job_ref = self._jobs.document(job.job_id)

        def run(transaction: firestore.Transaction) -> bool:
            if any(snapshot.exists for snapshot in transaction.get_all([mapping_ref, job_ref])):
                return False
            now = self._clock()
            transaction.set(mapping_ref, {"job_id": job.job_id, "created_at": now})
            transaction.set(job_ref, self._document(job.model_copy(update={"updated_at": now}))[0])
            return True

        adopted: bool = self._commit("adopt", run)
        return adopted

    def find_unannounced(self, states: list[str], quiet_since: datetime, *, limit: int) -> list[Job]:
        """Final jobs never announced on job-events and not written since `quiet_since`.

        Needs the composite index (state, announced_at, updated_at) in infra/firestore.indexes.json.
        """
        query = (
            self._jobs.where(filter=FieldFilter("state", "in", states))
            .where(filter=FieldFilter("announced_at", "==", None))
            .where(filter=FieldFilter("updated_at", "<", quiet_since))
            .order_by("updated_at")
            .limit(limit)
        )
        return [Job.from_document(_data(snapshot)) for snapshot in query.stream()]

    def abort_unsubmitted(self, job_id: str) -> Job | None:
        """Abort a job still `submitted` with no prediction; None if it moved on meanwhile."""
        return self.abort(
            job_id,
            error_code="submit_incomplete",
            error="the submission never recorded a prediction (a crash between creating the prediction and "
            "linking it?); a webhook for that prediction would have created its own job",
            only_if=lambda job: job.state == JobState.SUBMITTED and job.prediction_id is None,
        )

    def abort(
        self, job_id: str, *, error_code: str, error: str, only_if: Callable[[Job], bool] = lambda _: True
    ) -> Job | None:
        """End an open job `aborted` (announced by the reconciler), if `only_if` holds for it as read
        in the transaction; None if it is final, gone or no longer qualifies."""

        def run(transaction: firestore.Transaction) -> Job | None:
            ref, job = self._read(transaction, job_id)
            if job is None or job.is_terminal or not only_if(job):
                return None
            aborted = job.model_copy(
                update={
                    "state": JobState.ABORTED.value,
                    "error": error,
                    "error_code": error_code,
                    "announcer": "reconciler",
                    "updated_at": self._clock(),
                }
            )
            # No claim taken here: the caller announces through announcements.announce_once.
            document, written = self._document(aborted)
            transaction.set(ref, document)
            return written

        result: Job | None = self._commit("abort", run)
        return result

    def record_cancel(self, job_id: str, *, error_code: str | None, error: str | None) -> Job | None:
        """Count one more cancel the reconciler asks of Replicate for an open job: `cancel_attempts` + 1,
        `cancel_requested_at` set if it was not, and (past its deadline) `error_code` and `error`.
        Returns the job as written; None if it is final or gone."""

        def run(transaction: firestore.Transaction) -> Job | None:
            ref, job = self._read(transaction, job_id)
            if job is None or job.is_terminal:
                return None
            now = self._clock()
            fields: dict[str, Any] = {
                "cancel_attempts": job.cancel_attempts + 1,
                "cancel_requested_at": job.cancel_requested_at or now,
                "updated_at": now,
            }
            if error_code is not None:
                fields.update(error_code=error_code, error_json=dumps(error))
            transaction.update(ref, fields)
            return job.model_copy(update={**fields, "error": error} if error_code is not None else fields)

        result: Job | None = self._commit("record_cancel", run)
        return result

    def find_past_deadline(self, states: list[str], now: datetime, *, limit: int) -> list[Job]:
        """Jobs in `states` whose `deadline_at` is before `now`, the earliest deadline first.

        Needs the composite index (state, deadline_at) declared in infra/firestore.indexes.json.
        """
        query = (
            self._jobs.where(filter=FieldFilter("state", "in", states))
            .where(filter=FieldFilter("deadline_at", "<", now))
            .order_by("deadline_at")
            .limit(limit)
        )
        return [Job.from_document(_data(snapshot)) for snapshot in query.stream()]

    def get(self, job_id: str) -> Job | None:
        """The job as its document holds it: values kept in the bucket are null (see `resolve`)."""
        snapshot = self._jobs.document(job_id).get()
        return Job.from_document(_data(snapshot)) if snapshot.exists else None

    def load(self, job_id: str) -> Job | None:
        """The job with every value, those kept in the bucket read back."""
        job = self.get(job_id)
        return None if job is None else self.resolve(job)

    def resolve(self, job: Job) -> Job:
        """`job` with the values its document links to (`stored_values`) read from the bucket.

        Raises LookupError when the job has such values and this store has no ValueStore.
        """
        missing = {name: stored for name, stored in job.stored_values.items() if getattr(job, name) is None}
        if not missing:
            return job
        if self._values is None:
            raise LookupError(
                f"job {job.job_id} keeps {', '.join(sorted(missing))} in the bucket, and no bucket is configured "
                "(RELAY_BUCKET)"
            )
        values = self._values
        return job.model_copy(update={name: values.get(stored) for name, stored in missing.items()})

    def listen(self, job_id: str, on_change: Callable[[dict[str, Any] | None], None]) -> Watch:
        """A Firestore snapshot listener on `jobs/{job_id}`: `on_change` gets the document's data
        (None while there is no such document) once at the start and again after every change.

        It runs on the listener's own thread, so it should only hand the data over (the caller
        parses it where errors can reach someone). Each listener holds a gRPC stream and a thread
        until `unsubscribe()` on the returned Watch, which must not be called from `on_change`.
        """

        def on_snapshot(documents: list[firestore.DocumentSnapshot[Any]], _changes: Any, _read_time: Any) -> None:
            # A document listener's snapshot holds the document, or nothing once it is absent.
            snapshot = documents[0] if documents else None
            on_change(snapshot.to_dict() if snapshot is not None and snapshot.exists else None)

        return self._jobs.document(job_id).on_snapshot(on_snapshot)

    def find_by_prediction(self, prediction_id: str) -> Job | None:
        mapping = self._mapping(prediction_id).get()
        return self.get(mapping.get("job_id")) if mapping.exists else self.get(prediction_id)

    @property
    def _jobs(self) -> firestore.CollectionReference:
        return self._client.collection(JOBS)

    def _mapping(self, prediction_id: str) -> firestore.DocumentReference:
        """`predictions/{prediction_id}`: which job stands for the prediction."""
        return self._client.collection(PREDICTIONS).document(prediction_id)

    def _record_ref(self, job_id: str, webhook_id: str) -> firestore.DocumentReference:
        record: firestore.DocumentReference = (
            self._jobs.document(job_id).collection(EVENTS).document(event_key(webhook_id))
        )
        return record

    def _transact(
        self,
        operation: str,
        event: PredictionEvent,
        work: _Work,
        *,
        also_read: _AlsoRead = lambda _: [],
        mapped_job_id: str | None = None,
        refused: str | None = None,
    ) -> Applied:
        """Read the mapping and the job, let `work` decide, write what it decided — atomically.

        `also_read(job_id)` names the other documents `work` needs: they are fetched in the same
        request as the job (one round trip fewer inside the transaction, whose locks are held
        that much less long), and `work` gets their snapshots, in the same order. `mapped_job_id`:
        the job id from a `predictions/{id}` the caller saw exist, which is then not read again.
        A write that makes the job final also claims its announcement (replicate_relay.announcements).

        The mapping is first read outside the transaction: once written it never changes, so the
        transaction need not lock it, and when it is missing the job's first write is made without
        a transaction (_create_first).
        """
        if mapped_job_id is None:
            mapping = self._mapping(event.attributes.prediction_id).get()
            if mapping.exists:
                mapped_job_id = mapping.get("job_id")
            elif (created := self._create_first(operation, event, work, also_read, refused)) is not None:
                return created

        def run(transaction: firestore.Transaction) -> Applied:
            prediction_id = event.attributes.prediction_id
            mapping_ref = self._mapping(prediction_id)
            if mapped_job_id is not None:
                job_id, mapping_exists = mapped_job_id, True
            else:
                mapping = mapping_ref.get(transaction=transaction)
                # A webhook for a prediction nobody submitted through us still gets a job, keyed by
                # the prediction id, so no event is ever dropped.
                job_id = mapping.get("job_id") if mapping.exists else prediction_id
                mapping_exists = mapping.exists
            job_ref = self._jobs.document(job_id)
            other_refs = also_read(job_id)
            # get_all answers in any order.
            snapshots = {snapshot.reference.path: snapshot for snapshot in transaction.get_all([job_ref, *other_refs])}
            snapshot = snapshots[job_ref.path]
            job = Job.from_document(_data(snapshot)) if snapshot.exists else None
            result = work(transaction, job_id, job, [snapshots[ref.path] for ref in other_refs])
            if isinstance(result, Applied):
                return result
            if not mapping_exists:
                transaction.set(mapping_ref, {"job_id": job_id, "created_at": self._clock()})
            written, claimed = result.job, False
            if written is not None:
                # The claim rides on the final write: one transaction fewer before announcing.
                written, claimed = with_claim(job, written, self._clock())
                document, written = self._document(written)
                with _refusals():
                    transaction.set(job_ref, document)
            return Applied(result.outcome, job_id, written or job, claimed=claimed, not_stored=refused)

        applied: Applied = self._commit(operation, run)
        return applied

    def _create_first(
        self, operation: str, event: PredictionEvent, work: _Work, also_read: _AlsoRead, refused: str | None
    ) -> Applied | None:
        """The first write of a prediction nobody has mapped yet, as one batch of `create`s.

        The first webhooks of a prediction race the submitter's attach_prediction (Replicate sends
        `starting` as it creates the prediction) and each other (two pushes at once). In
        transactions all of them read the missing `predictions/{id}` and then write it: on the
        emulator they hold each other's locks until its 2 s timeout, chains of them cost a job
        10 s. A batch takes no read locks: the first to commit creates the mapping, and every
        other batch fails whole on that `create` (nothing written), whereupon the caller runs
        the ordinary transaction, which finds the mapping. None sends it there.
        """
        prediction_id = event.attributes.prediction_id
        job_ref = self._jobs.document(prediction_id)
        other_refs = also_read(prediction_id)
        snapshots = {snapshot.reference.path: snapshot for snapshot in self._client.get_all([job_ref, *other_refs])}
        if snapshots[job_ref.path].exists:
            return None  # a job without its mapping: the transaction decides (and writes the mapping)
        with telemetry.tracer().start_as_current_span(
            f"firestore batch {operation} (first write)",
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": "firestore", "db.operation.name": operation},
        ):
            batch = self._client.batch()
            result = work(batch, prediction_id, None, [snapshots[ref.path] for ref in other_refs])
            if isinstance(result, Applied):
                return result
            if result.job is None:
                return None
            written, claimed = with_claim(None, result.job, self._clock())
            mapping_ref = self._mapping(prediction_id)
            document, written = self._document(written)
            batch.create(mapping_ref, {"job_id": prediction_id, "created_at": self._clock()})
            with _refusals():
                batch.create(job_ref, document)
                try:
                    batch.commit()
                except google_exceptions.Conflict:  # AlreadyExists: someone mapped it first; Aborted: contended
                    return None
        return Applied(result.outcome, prediction_id, written, claimed=claimed, not_stored=refused)

    def _read(self, transaction: firestore.Transaction, job_id: str) -> tuple[firestore.DocumentReference, Job | None]:
        ref = self._jobs.document(job_id)
        snapshot = ref.get(transaction=transaction)
        return ref, Job.from_document(_data(snapshot)) if snapshot.exists else None

    def _commit(self, operation: str, work: Callable[[firestore.Transaction], T]) -> T:
        """Run `work` in a transaction, retried on contention for at most the contention budget.

        The client retries a commit refused as contended (Aborted) at once, up to its max_attempts,
        keeping its place in line, and then gives up (google-cloud-firestore 2.34 raises a ValueError
        chained to the last Aborted). Under load all of them can land while another transaction
        still holds the documents (the Firestore emulator holds a conflicting lock 2 s per attempt),
        so rounds of attempts follow after a jittered, growing pause. Contention is recognised by
        the Aborted the round ended on, raised or chained (_contended), never by the library's
        message text; anything else goes to the caller at once. No attempt starts once the budget
        is spent: contention is then `Aborted`, which callers treat as transient (a handler answers
        503 and Pub/Sub redelivers), so one request is held for the budget and one attempt at most,
        however many transactions fight.
        One span covers the whole transaction, its RPCs (traced by the gRPC instrumentation) and
        retries; no instrumentation knows where a Firestore transaction begins and ends.
        """
        started = time.monotonic()
        deadline = started + self._contention_budget
        attempts = 0

        def attempt(transaction: firestore.Transaction) -> T:
            nonlocal attempts
            if attempts and time.monotonic() >= deadline:
                raise _OutOfTime
            attempts += 1
            return work(transaction)

        run = firestore.transactional(attempt)
        with telemetry.tracer().start_as_current_span(
            f"firestore transaction {operation}",
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": "firestore", "db.operation.name": operation},
        ) as span:
            last: Exception
            for round_ in itertools.count():
                try:
                    result: T = run(self._client.transaction(max_attempts=_TRANSACTION_ATTEMPTS))
                    return result
                except google_exceptions.InvalidArgument as error:  # the commit refused what was written
                    raise Unstorable(_refusal(error)) from error
                except _OutOfTime as error:
                    last = error
                    break
                except Exception as error:
                    if not _contended(error):
                        raise
                    last = error
                pause = random.uniform(0.05, 0.2) * 2**round_  # noqa: S311 - jitter, not security
                if time.monotonic() + pause >= deadline:
                    break
                span.add_event("contended", {"round": round_ + 1, "attempts": attempts})
                time.sleep(pause)
            span.set_attribute("relay.transaction.attempts", attempts)
            message = (
                f"Firestore transaction {operation} still contended after {attempts} attempts "
                f"in {time.monotonic() - started:.1f} s (budget {self._contention_budget:g} s)"
            )
            raise google_exceptions.Aborted(message) from last  # type: ignore[no-untyped-call]

    def _document(self, job: Job) -> tuple[dict[str, Any], Job]:
        """The document to write for `job`, and the job as a reader of that document sees it.

        Each of the prediction's values is JSON text (replicate_relay.values); while they fit the inline
        budget together they stay in the document, and the largest go to the bucket first. A value
        goes to the bucket only for a final job, or for the input (which never changes): an open
        job's output and logs grow with every event, and only their final form is worth an object.
        So while a job runs, an output too large for the document is left out.
        """
        texts = {name: dumps(value) for name in VALUE_FIELDS if (value := getattr(job, name)) is not None}
        placement = place(texts, self._policy.inline_value_bytes)
        # A value read back as a link (null in the job) stays linked.
        stored = {name: link for name, link in job.stored_values.items() if name not in texts}
        left_out: list[str] = []
        for name, text in placement.to_bucket.items():
            if self._values is not None and (job.is_terminal or name == "input"):
                stored[name] = self._stored(job, name, text, self._values)
            elif not job.is_terminal:  # a later write, the final one at the latest, stores it
                left_out.append(name)
            else:
                raise Unstorable(f"the {name} ({len(text.encode())} bytes as JSON) does not fit the job document")
        if "output" in placement.to_bucket or "output" in left_out:  # decided now, the output in hand
            too_large = not needs_archive(job.output)
        else:  # in the document, or linked as read
            too_large = "output" in stored and job.output_value_too_large
        updates: dict[str, Any] = dict.fromkeys([*left_out, *stored])
        if "output" in updates:  # not in the document, so neither is its plain value
            updates["output_value"] = None
        updates.update(stored_values=stored, output_value_too_large=too_large)
        seen = job.model_copy(update=updates)
        return seen.document(placement.inline), seen

    @staticmethod
    def _stored(job: Job, name: str, text: str, values: ValueStore) -> StoredValue:
        """The link to `text` in the bucket: the job's own when it links to this very value (its name
        is its content's hash), else a new object."""
        linked = job.stored_values.get(name)
        if linked is not None and linked.gs_uri == values.uri(object_name(job.job_id, name, text)):
            return linked
        return values.put(job.job_id, name, text)

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


def _data(snapshot: firestore.DocumentSnapshot[Any]) -> dict[str, Any]:
    return snapshot.to_dict() or {}


def _without_values(event: PredictionEvent) -> PredictionEvent:
    """The event with only what every job document can hold: which prediction, its status and times."""
    kept = Prediction.model_validate(event.prediction.model_dump(include=_ALWAYS_STORABLE))
    return PredictionEvent(attributes=event.attributes, prediction=kept)


# The fields a submitted job holds that no webhook carries, kept when a webhook's job wins the link.
_SUBMITTED_ONLY = ("kind", "deployment", "deadline_at", "cancel_requested_at", "app")

_ALWAYS_STORABLE = {"id", "status", "created_at", "started_at", "completed_at", "data_removed"}


def _marked(decision: Decision, refused: str | None) -> Decision:
    """The decision on an event whose values Firestore refused: the job says so."""
    if refused is None or decision.job is None:
        return decision
    message = f"Firestore refused this job as Replicate sent it ({refused}); its values were not kept"
    return Decision(decision.outcome, decision.job.model_copy(update={"error_code": "not_stored", "error": message}))


def _refusal(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """Firestore's refusals of a write as invalid, as Unstorable: the client library's own checks
    (an empty or reserved field name, a string that is not UTF-8, an integer past 64 bits) raise
    ValueError, TypeError or OverflowError as the write is built; the service's (a document over
    1 MiB, too many fields or index entries, an invalid nesting) answer InvalidArgument at commit."""
    try:
        yield
    except (google_exceptions.InvalidArgument, ValueError, TypeError, OverflowError) as error:
        raise Unstorable(_refusal(error)) from error


def _contended(error: BaseException) -> bool:
    """Whether a transaction failed on contention: Firestore's ABORTED, raised as it is (a read's,
    which the client does not retry) or chained under what the client raises once its attempts
    ran out (google-cloud-firestore 2.34: a ValueError `from` the last Aborted)."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:  # a chain can loop
        chain.append(cause)
        cause = cause.__cause__
    return any(isinstance(link, google_exceptions.Aborted) for link in chain)


class _OutOfTime(Exception):
    """Raised inside a transaction attempt when the contention budget is spent (see _commit)."""


def event_key(webhook_id: str) -> str:
    """The id of a webhook's record under `jobs/{job}/events/`: webhook-ids are any printable
    ASCII, and Firestore ids may not contain "/" nor be "." or ".."."""
    return hashlib.sha256(webhook_id.encode("utf-8")).hexdigest()[:40]
