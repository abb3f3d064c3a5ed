"""One screen on the pipeline: backlogs, jobs by state, stuck jobs, the last event, verification failures."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core import exceptions as google_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from replicate_relay.jobs import Job, JobState
from replicate_relay.jobstore import JOBS
from replicate_relay.ops import metrics_file, monitoring
from replicate_relay.ops.context import OpsSettings
from replicate_relay.ops.errors import OpsError
from replicate_relay.ops.jobs_view import OPEN_STATES
from replicate_relay.ops.render import age, duration, iso, table
from replicate_relay.ops.replay import pull, release
from replicate_relay.topology import Topology

COUNT_CAP = 1000  # dead letters counted by pulling (emulators); beyond this the backlog shows as "1000+"
DEAD_LETTER = "dead-letter (pull)"  # the kind of subscription: dead letters wait in pull subscriptions
PUSH_LOCALLY = "n/a locally (Cloud Monitoring in production)"
NO_MONITORING = "n/a (no Cloud Monitoring client)"
FAILURES_WINDOW = timedelta(hours=1)  # describe_failures says "hour"


@dataclass(frozen=True)
class SubscriptionStatus:
    name: str
    kind: str  # "push" or DEAD_LETTER
    backlog: int | None  # None: not obtainable here (see note)
    backlog_capped: bool  # counting stopped at COUNT_CAP
    oldest_age_seconds: float | None
    note: str | None


@dataclass(frozen=True)
class Status:
    project: str
    at: datetime
    subscriptions: list[SubscriptionStatus]
    jobs_by_state: dict[str, int]
    stuck_jobs: int
    stuck_after_seconds: float
    last_event_at: datetime | None
    verification_failures: str  # as shown: a count in the last hour with its reasons, or why there is none
    verification_failures_by_reason: dict[str, int] | None = None  # None: not obtainable

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["seconds_since_last_event"] = (
            (self.at - self.last_event_at).total_seconds() if self.last_event_at else None
        )
        return document


def collect_status(
    subscriber: pubsub_v1.SubscriberClient,
    db: firestore.Client,
    topology: Topology,
    settings: OpsSettings,
    *,
    now: datetime,
    metrics: monitoring.MetricQuery | None = None,
    metrics_path: Path | None = None,
) -> Status:
    """Everything `relay status` shows. Backlogs, dead letters' included, and verification failures
    come from Cloud Monitoring (`metrics`) in production, so nothing there needs a Pub/Sub role (the
    status page holds none: a role that pulls can acknowledge). On the emulators, which have no
    metrics, dead-letter backlogs are counted by pulling and handing every message straight back
    (nothing is acknowledged), push backlogs are not available, and failures come from the local
    metrics file (`metrics_path`, default RELAY_METRICS_FILE)."""
    subscriptions = push_subscriptions(metrics, settings, [s.name for s in topology.subscriptions], now=now)
    dead_letters = [subscription.dead_letter.subscription for subscription in topology.subscriptions]
    subscriptions.extend(dead_letter_subscriptions(subscriber, metrics, settings, dead_letters, now=now))
    with settings.firestore_errors():
        jobs = db.collection(JOBS)
        by_state = {
            state.value: _count(jobs.where(filter=FieldFilter("state", "==", state.value)), settings)
            for state in JobState
        }
        stuck = _count(
            jobs.where(filter=FieldFilter("state", "in", OPEN_STATES)).where(
                filter=FieldFilter("updated_at", "<", now - settings.quiet)
            ),
            settings,
        )
        latest = list(jobs.order_by("last_event_at", direction="DESCENDING").limit(1).stream(**settings.rpc()))
    last_event_at = Job.from_document(latest[0].to_dict() or {}).last_event_at if latest else None
    failures_text, by_reason = recent_verification_failures(metrics, settings, metrics_path, now=now)
    return Status(
        project=settings.project,
        at=now,
        subscriptions=subscriptions,
        jobs_by_state=by_state,
        stuck_jobs=stuck,
        stuck_after_seconds=settings.quiet.total_seconds(),
        last_event_at=last_event_at,
        verification_failures=failures_text,
        verification_failures_by_reason=by_reason,
    )


def push_subscriptions(
    metrics: monitoring.MetricQuery | None, settings: OpsSettings, names: list[str], *, now: datetime
) -> list[SubscriptionStatus]:
    if settings.on_emulators:
        return [SubscriptionStatus(name, "push", None, False, None, PUSH_LOCALLY) for name in names]
    if metrics is None:
        return [SubscriptionStatus(name, "push", None, False, None, NO_MONITORING) for name in names]
    return [
        SubscriptionStatus(b.subscription, "push", b.undelivered, False, b.oldest_age_seconds, b.note)
        for b in monitoring.push_backlogs(metrics, settings, names, now=now)
    ]


def recent_verification_failures(
    metrics: monitoring.MetricQuery | None, settings: OpsSettings, path: Path | None, *, now: datetime
) -> tuple[str, dict[str, int] | None]:
    """What the status shows for the receiver's verification failures in the last hour, and the
    counts by reason (None when they cannot be had; the text then says why)."""
    if settings.on_emulators:
        return _local_failures(path or metrics_file.metrics_file_path(os.environ), now=now)
    if metrics is None:
        return NO_MONITORING, None
    try:
        by_reason = monitoring.verification_failures(metrics, settings, now=now, window=FAILURES_WINDOW)
    except google_exceptions.NotFound:
        # The counter reaches Cloud Monitoring with its first failure; no metric yet means none yet.
        return describe_failures({}, "Cloud Monitoring: none recorded yet"), {}
    except monitoring.MONITORING_ERRORS as error:
        return monitoring.explain(error, settings.timeout), None
    return describe_failures(by_reason, "Cloud Monitoring"), by_reason


def _local_failures(path: Path, *, now: datetime) -> tuple[str, dict[str, int] | None]:
    try:
        counted = metrics_file.read_failures(path, now=now, window=FAILURES_WINDOW)
    except FileNotFoundError:
        return f"n/a: no local metrics file (dev stack not running?) at {path}", None
    except OSError as error:
        return f"n/a: cannot read {path}: {error.strerror}", None
    return describe_failures(counted.by_reason, "local metrics file"), counted.by_reason


def describe_failures(by_reason: dict[str, int], source: str) -> str:
    """'3 in the last hour (bad_signature 2, stale_timestamp 1; local metrics file)'."""
    total = sum(by_reason.values())
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(by_reason.items()) if count)
    return f"{total} in the last hour ({reasons + '; ' if reasons else ''}{source})"


def _count(query: Any, settings: OpsSettings) -> int:
    results = query.count(alias="n").get(**settings.rpc())
    return int(results[0][0].value)


def dead_letter_subscriptions(
    subscriber: pubsub_v1.SubscriberClient,
    metrics: monitoring.MetricQuery | None,
    settings: OpsSettings,
    names: list[str],
    *,
    now: datetime,
) -> list[SubscriptionStatus]:
    """Dead-letter backlogs: Cloud Monitoring's latest samples in production (as the push backlogs),
    counted by pulling on the emulators."""
    if settings.on_emulators:
        with settings.pubsub_errors():
            return [dead_letter_backlog(subscriber, settings, name, now) for name in names]
    if metrics is None:
        return [SubscriptionStatus(name, DEAD_LETTER, None, False, None, NO_MONITORING) for name in names]
    return [
        SubscriptionStatus(b.subscription, DEAD_LETTER, b.undelivered, False, b.oldest_age_seconds, b.note)
        for b in monitoring.push_backlogs(metrics, settings, names, now=now)
    ]


def dead_letter_backlog(
    subscriber: pubsub_v1.SubscriberClient, settings: OpsSettings, name: str, now: datetime
) -> SubscriptionStatus:
    """Count a pull subscription's messages by pulling them, then hand every one back (ack deadline 0)."""
    path = subscriber.subscription_path(settings.project, name)
    held: list[str] = []
    oldest: datetime | None = None
    count = 0
    try:
        while count < COUNT_CAP:
            received = pull(subscriber, path, settings, max_messages=min(100, COUNT_CAP - count))
            if not received:
                break
            count += len(received)
            held.extend(message.ack_id for message in received)
            times = [message.message.publish_time for message in received]
            oldest = min([*times, *([oldest] if oldest else [])])
    except google_exceptions.NotFound:
        raise OpsError(f"subscription {path} does not exist: is the topology provisioned in this project?") from None
    finally:
        release(subscriber, path, held, settings)
    age_seconds = (now - oldest).total_seconds() if oldest else None
    note = "counted by pulling; nothing acknowledged"
    return SubscriptionStatus(name, DEAD_LETTER, count, count >= COUNT_CAP, age_seconds, note)


def render_status(status: Status) -> str:
    now = status.at
    rows: list[list[object]] = []
    for sub in status.subscriptions:
        if sub.backlog is None:
            rows.append([sub.name, sub.kind, sub.note, "", ""])
            continue
        oldest = duration(timedelta(seconds=sub.oldest_age_seconds)) if sub.oldest_age_seconds is not None else "-"
        rows.append([sub.name, sub.kind, f"{sub.backlog}{'+' if sub.backlog_capped else ''}", oldest, sub.note])
    quiet = duration(timedelta(seconds=status.stuck_after_seconds))
    states = [[state, count] for state, count in status.jobs_by_state.items()]
    lines = [
        f"Relay status: project {status.project}, {iso(now)}",
        "",
        table(["subscription", "kind", "backlog", "oldest unacked", "source"], rows),
        "",
        table(["jobs by state", "count"], states),
        "",
        f"stuck jobs             {status.stuck_jobs}   (not final, not written for {quiet}: relay jobs list --stuck)",
        f"last event on a job    {iso(status.last_event_at)}   ({age(status.last_event_at, now)})",
        f"verification failures  {status.verification_failures}",
    ]
    return "\n".join(lines)
