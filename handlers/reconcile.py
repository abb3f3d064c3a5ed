"""The reconciler: the safety net for the one failure webhooks cannot cover, a final event that
never arrived. Cloud Scheduler calls it every few minutes; it asks Replicate about jobs that went
quiet and publishes what it learns into `replicate-events`, so the same handlers apply it."""

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
from replicate_relay.events import EventAttributes, PayloadError, Source, parse_prediction
from replicate_relay.jobs import TERMINAL_STATES, Job, JobState
from replicate_relay.jobstore import JobStore, utcnow
from replicate_relay.publisher import PublishError, TopicPublisher
from replicate_relay.replicate_api import ReplicateAPI, ReplicateAPIError

log = logging.getLogger("relay.reconciler")

ACTOR = "reconciler"
# Replicate's view can move these on; `submitted` ones without a prediction id never will.
_OPEN_STATES = [JobState.SUBMITTED.value, JobState.STARTING.value, JobState.PROCESSING.value, JobState.ARCHIVING.value]


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


@dataclass
class Summary:
    checked: int = 0
    recovered: int = 0  # Replicate knew more than the job showed: an event was published
    still_running: int = 0
    aborted: int = 0  # submitted jobs that never got a prediction
    announced: int = 0  # final jobs whose announcement had been lost
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int | list[str]]:
        return {
            "checked": self.checked,
            "recovered": self.recovered,
            "still_running": self.still_running,
            "aborted": self.aborted,
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

    def run(self) -> Summary:
        """One pass. Safe to run twice at once: what it publishes is deduplicated by the handlers."""
        now = self.clock()
        summary = Summary()
        lock = threading.Lock()
        quiet = self._find_quiet(now)
        limiter = _RateLimit(self.settings.requests_per_second)

        def check(job: Job) -> None:
            outcome, error = self._check(job, now, limiter)
            with lock:
                summary.checked += 1
                setattr(summary, outcome, getattr(summary, outcome) + 1)
                if error:
                    summary.error_samples.append(error)

        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            # Each check runs in a copy of this context, so its spans stay in the run's trace.
            checks = [pool.submit(contextvars.copy_context().run, check, job) for job in quiet]
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
        limiter.wait()
        try:
            body = self.replicate.get_prediction(job.prediction_id)
            prediction = parse_prediction(body)
        except (ReplicateAPIError, PayloadError) as error:
            log.warning("reconciler could not read prediction %s: %s", job.prediction_id, error)
            return "errors", f"{job.prediction_id}: {error}"
        if prediction.status == job.replicate_status and not prediction.is_terminal:
            return "still_running", None
        attributes = EventAttributes.observed(prediction, Source.RECONCILER, now)
        try:
            self._publish_recovery(job, body, attributes)
        except PublishError as error:
            return "errors", f"{job.prediction_id}: {error}"
        telemetry.METRICS.recovered.add(1)
        log.info(
            "reconciler recovered prediction %s: %s → %s",
            prediction.id,
            job.replicate_status,
            prediction.status,
            extra={"fields": {"job_id": job.job_id, "prediction_id": prediction.id, "status": prediction.status}},
        )
        return "recovered", None

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
            self.events.publish(body, attributes.to_message())

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
