"""The reconciler: the safety net for what webhooks cannot cover. Cloud Scheduler calls it every few
minutes (RELAY_RECONCILE period, 5 minutes in infra/terraform/scheduler.tf). Each run:

- asks Replicate about jobs that went quiet (a final event that never arrived) and publishes what it
  learns into `replicate-events`, so the same handlers apply it;
- cancels at Replicate every open job past its `deadline_at`, and any job whose requested cancel
  Replicate has not confirmed, publishing Replicate's answer the same way. Each such cancel is
  counted on the job (`cancel_attempts`); the run that makes the count reach `cancel_tries` without
  the job ending ends it `aborted` (error_code `deadline_exceeded`, or `cancel_unconfirmed` for a
  requested cancel), with Replicate's last answer or error. So no job stays open later than its
  deadline plus `cancel_tries` periods (docs/OPERATIONS.md).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from opentelemetry import trace

from replicate_relay import announcements, telemetry
from replicate_relay.bodies import BodyStore
from replicate_relay.events import EventAttributes, PayloadError, Prediction, Source, parse_prediction
from replicate_relay.jobs import DEADLINE_EXCEEDED, TERMINAL_STATES, Job, JobState
from replicate_relay.jobstore import JobStore, utcnow
from replicate_relay.publisher import PublishError, TopicPublisher
from replicate_relay.replicate_api import ReplicateAPI, ReplicateAPIError

log = logging.getLogger("relay.reconciler")

ACTOR = "reconciler"
# Replicate's view can move these on; `submitted` ones without a prediction id never will.
_OPEN_STATES = [JobState.SUBMITTED.value, JobState.STARTING.value, JobState.PROCESSING.value, JobState.ARCHIVING.value]
# A deadline bounds the run at Replicate: a job `archiving` has finished there (Relay is copying its
# files, bounded by archive-outputs's retries), so it is not canceled.
_RUNNING_STATES = _OPEN_STATES[:3]


@dataclass(frozen=True)
class ReconcileSettings:
    quiet_after: timedelta = timedelta(minutes=10)  # a running job silent this long is checked
    # Adopted jobs (`relay adopt`) belong to predictions created without a webhook: silence is all
    # they will ever send, so they are polled after this much shorter wait.
    adopted_after: timedelta = timedelta(seconds=60)
    submitted_after: timedelta = timedelta(minutes=5)  # a job never linked to a prediction is aborted
    max_jobs: int = 500
    concurrency: int = 4
    requests_per_second: float = 5.0
    # Cancels asked of Replicate for one job (one per run) before it is aborted without Replicate's word.
    cancel_tries: int = 3


@dataclass
class Summary:
    checked: int = 0
    recovered: int = 0  # Replicate knew more than the job showed: an event was published
    still_running: int = 0
    aborted: int = 0  # jobs ended here: never got a prediction, or a cancel Replicate did not confirm
    canceled: int = 0  # cancels asked of Replicate: past the deadline, or requested and not yet confirmed
    announced: int = 0  # final jobs whose announcement had been lost
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int | list[str]]:
        return {
            "checked": self.checked,
            "recovered": self.recovered,
            "still_running": self.still_running,
            "aborted": self.aborted,
            "canceled": self.canceled,
            "announced": self.announced,
            "errors": self.errors,
            "error_samples": self.error_samples[:5],
        }


class _RateLimit:
    """At most `per_second` calls a second across threads."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        time.sleep(max(0.0, slot - now))


@dataclass
class Reconciler:
    store: JobStore
    replicate: ReplicateAPI
    events: TopicPublisher
    job_events: TopicPublisher
    settings: ReconcileSettings = field(default_factory=ReconcileSettings)
    clock: Callable[[], datetime] = utcnow
    bodies: BodyStore | None = None  # where a body too large for a message goes (replicate_relay/bodies.py)

    def run(self) -> Summary:
        """One pass. Safe to run twice at once: what it publishes is deduplicated by the handlers."""
        now = self.clock()
        summary = Summary()
        lock = threading.Lock()
        due = self.store.find_past_deadline(_RUNNING_STATES, now, limit=self.settings.max_jobs)
        seen = {job.job_id for job in due}
        quiet = [job for job in self._find_quiet(now) if job.job_id not in seen]
        limiter = _RateLimit(self.settings.requests_per_second)

        def check(job: Job) -> None:
            if job.job_id in seen:
                outcome, error = self._past_deadline(job, now, limiter)
            else:
                outcome, error = self._check(job, now, limiter)
            with lock:
                summary.checked += 1
                setattr(summary, outcome, getattr(summary, outcome) + 1)
                if error:
                    summary.error_samples.append(error)

        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            # Each check runs in a copy of this context, so its spans stay in the run's trace.
            checks = [pool.submit(contextvars.copy_context().run, check, job) for job in due + quiet]
            for done in checks:
                done.result()
        summary.announced = self._announce_lost(now)
        return summary

    def _find_quiet(self, now: datetime) -> list[Job]:
        """Open jobs quiet for `quiet_after`, then adopted ones quiet for `adopted_after`; at most `max_jobs`."""
        limit = self.settings.max_jobs
        quiet = self.store.find_quiet(_OPEN_STATES, now - self.settings.quiet_after, limit=limit)
        if self.settings.adopted_after >= self.settings.quiet_after or len(quiet) >= limit:
            return quiet
        seen = {job.job_id for job in quiet}
        adopted = self.store.find_quiet(
            _OPEN_STATES, now - self.settings.adopted_after, limit=limit, source=Source.ADOPTED.value
        )
        return (quiet + [job for job in adopted if job.job_id not in seen])[:limit]

    def _check(self, job: Job, now: datetime, limiter: _RateLimit) -> tuple[str, str | None]:
        if job.prediction_id is None:
            if job.updated_at and now - job.updated_at >= self.settings.submitted_after:
                aborted = self.store.abort_unsubmitted(job.job_id)
                if aborted is not None:
                    self._announce(aborted)
                    return "aborted", None
            return "still_running", None
        if job.cancel_requested_at is not None and now - job.cancel_requested_at >= self.settings.quiet_after:
            # Asked to cancel a while ago and still open: its `canceled` webhook was lost, or the
            # cancel never reached Replicate. Asking again answers with Replicate's state either way.
            return self._cancel(job, now, limiter, error_code=None)
        limiter.wait()
        read = self.replicate.get_training if job.kind == "training" else self.replicate.get_prediction
        try:
            body = read(job.prediction_id)
            prediction = parse_prediction(body)
        except (ReplicateAPIError, PayloadError) as error:
            log.warning("reconciler could not read %s %s: %s", job.kind, job.prediction_id, error)
            return "errors", f"{job.prediction_id}: {error}"
        return self._recover(job, body, prediction, now)

    def _recover(self, job: Job, body: bytes, prediction: Prediction, now: datetime) -> tuple[str, str | None]:
        """Publish what Replicate said when it moves the job on."""
        if prediction.status == job.replicate_status and not prediction.is_terminal:
            return "still_running", None
        attributes = EventAttributes.observed(prediction, Source.RECONCILER, now)
        try:
            self._publish_recovery(job, body, attributes)
        except PublishError as error:
            return "errors", f"{job.prediction_id}: {error}"
        telemetry.METRICS.recovered.add(1)
        log.info(
            "reconciler recovered %s %s: %s → %s",
            job.kind,
            prediction.id,
            job.replicate_status,
            prediction.status,
            extra={"fields": {"job_id": job.job_id, "prediction_id": prediction.id, "status": prediction.status}},
        )
        return "recovered", None

    def _past_deadline(self, job: Job, now: datetime, limiter: _RateLimit) -> tuple[str, str | None]:
        """An open job past its deadline: aborted if it has no prediction yet, else canceled at Replicate."""
        if job.prediction_id is None:
            aborted = self.store.abort(
                job.job_id,
                error_code=DEADLINE_EXCEEDED,
                error=f"the deadline ({_when(job.deadline_at)}) passed before Replicate ran it",
                only_if=lambda current: current.prediction_id is None,
            )
            return self._ended(aborted)
        return self._cancel(job, now, limiter, error_code=DEADLINE_EXCEEDED)

    def _cancel(
        self, job: Job, now: datetime, limiter: _RateLimit, *, error_code: str | None
    ) -> tuple[str, str | None]:
        """Ask Replicate to cancel the job's run, counted on the job, and publish its answer; the
        `cancel_tries`-th that does not end the job ends it `aborted` with what Replicate last said."""
        if job.prediction_id is None:  # for the type checker: callers only cancel linked jobs
            return "still_running", None
        reason = (
            f"the deadline ({_when(job.deadline_at)}) passed; Relay asked Replicate to cancel the {job.kind}"
            if error_code
            else None
        )
        recorded = self.store.record_cancel(job.job_id, error_code=error_code, error=reason)
        if recorded is None:
            return "still_running", None  # it ended meanwhile
        last_try = recorded.cancel_attempts >= self.settings.cancel_tries
        limiter.wait()
        try:
            body = self.replicate.cancel(job.kind, job.prediction_id)
            prediction = parse_prediction(body)
        except (ReplicateAPIError, PayloadError) as error:
            log.warning("reconciler could not cancel %s %s: %s", job.kind, job.prediction_id, error)
            if last_try:
                return self._give_up(recorded, error_code, f"Replicate could not be reached: {error}")
            return "errors", f"{job.prediction_id}: {error}"
        outcome = self._recover(recorded, body, prediction, now)
        if last_try and not prediction.is_terminal:
            return self._give_up(recorded, error_code, f"Replicate still reported it {prediction.status}")
        return ("canceled", None) if outcome[0] != "errors" else outcome

    def _give_up(self, job: Job, error_code: str | None, why: str) -> tuple[str, str | None]:
        """End a job whose cancel Replicate did not confirm in `cancel_tries` tries."""
        tries = f"after {job.cancel_attempts} cancel requests"
        if error_code == DEADLINE_EXCEEDED:
            message = f"the deadline ({_when(job.deadline_at)}) passed and {why} {tries}; it may still run there"
        else:
            message = f"a cancel was asked for and {why} {tries}; it may still run there"
        aborted = self.store.abort(job.job_id, error_code=error_code or "cancel_unconfirmed", error=message[:1000])
        return self._ended(aborted)

    def _ended(self, aborted: Job | None) -> tuple[str, str | None]:
        if aborted is None:
            return "still_running", None  # it ended (or moved on) meanwhile
        self._announce(aborted)
        log.info(
            "reconciler aborted job %s: %s",
            aborted.job_id,
            aborted.error_code,
            extra={"fields": {"job_id": aborted.job_id, "error_code": aborted.error_code}},
        )
        return "aborted", None

    def _publish_recovery(self, job: Job, body: bytes, attributes: EventAttributes) -> None:
        """Publish what Replicate said as an event, in a trace of its own, as a webhook would have
        started one; that trace and the run's link to each other."""
        run = trace.get_current_span()
        with telemetry.tracer().start_as_current_span(
            "reconcile recover",
            context=telemetry.new_trace(),
            links=[trace.Link(run.get_span_context(), {"relay.link": "reconcile_run"})],
            attributes={
                telemetry.PREDICTION_ID: attributes.prediction_id,
                telemetry.JOB_ID: job.job_id,
                telemetry.STATUS: attributes.status,
                "relay.reconcile.previous_status": job.replicate_status or "",
            },
        ) as span:
            run.add_link(span.get_span_context(), {"relay.link": "recovered_prediction"})
            data, message = body, attributes.to_message()
            if self.bodies is not None:  # a training's body with hours of logs can exceed a message
                data, message = self.bodies.message(body, message, attributes.prediction_id)
            self.events.publish(data, message)

    def _announce_lost(self, now: datetime) -> int:
        """Announce final jobs whose announcer failed to (for example a submit that Pub/Sub refused)."""
        lost = self.store.find_unannounced(
            [state.value for state in TERMINAL_STATES], now - self.settings.quiet_after, limit=self.settings.max_jobs
        )
        return sum(self._announce(job) for job in lost)

    def _announce(self, job: Job) -> bool:
        try:
            return announcements.announce_once(self.store, self.job_events, job)
        except PublishError as error:
            log.warning("reconciler could not announce job %s: %s", job.job_id, error)
            return False


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "unknown"
