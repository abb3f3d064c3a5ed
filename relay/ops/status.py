"""One screen on the pipeline: subscription backlogs, jobs by state, stuck jobs, the last event."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core import exceptions as google_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from relay.jobs import Job, JobState
from relay.jobstore import JOBS
from relay.ops.context import OpsSettings
from relay.ops.errors import OpsError
from relay.ops.jobs_view import OPEN_STATES
from relay.ops.render import age, duration, iso, table
from relay.ops.replay import pull, release
from relay.topology import Topology

COUNT_CAP = 1000  # dead letters counted by pulling; beyond this the backlog shows as "1000+"
PUSH_LOCALLY = "n/a locally (Cloud Monitoring in production)"
PUSH_IN_PRODUCTION = (
    "n/a (Cloud Monitoring: pubsub.googleapis.com/subscription/num_undelivered_messages; "
    "google-cloud-monitoring is not a dependency)"
)
VERIFICATION_FAILURES = "n/a (in the receiver's logs: outcome=rejected)"


@dataclass(frozen=True)
class SubscriptionStatus:
    name: str
    kind: str  # "push" or "dead-letter (pull)"
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
    verification_failures: str

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
) -> Status:
    """Everything `relay status` shows. Dead-letter backlogs are counted by pulling and handing
    every message straight back (nothing is acknowledged); push backlogs need Cloud Monitoring."""
    subscriptions: list[SubscriptionStatus] = []
    with settings.pubsub_errors():
        for subscription in topology.subscriptions:
            note = PUSH_LOCALLY if settings.on_emulators else PUSH_IN_PRODUCTION
            subscriptions.append(SubscriptionStatus(subscription.name, "push", None, False, None, note))
        for subscription in topology.subscriptions:
            subscriptions.append(dead_letter_backlog(subscriber, settings, subscription.dead_letter.subscription, now))
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
    last_event_at = Job.model_validate(latest[0].to_dict()).last_event_at if latest else None
    return Status(
        project=settings.project,
        at=now,
        subscriptions=subscriptions,
        jobs_by_state=by_state,
        stuck_jobs=stuck,
        stuck_after_seconds=settings.quiet.total_seconds(),
        last_event_at=last_event_at,
        verification_failures=VERIFICATION_FAILURES,
    )


def _count(query: Any, settings: OpsSettings) -> int:
    results = query.count(alias="n").get(**settings.rpc())
    return int(results[0][0].value)


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
    return SubscriptionStatus(name, "dead-letter (pull)", count, count >= COUNT_CAP, age_seconds, note)


def render_status(status: Status) -> str:
    now = status.at
    rows: list[list[object]] = []
    for sub in status.subscriptions:
        if sub.backlog is None:
            rows.append([sub.name, sub.kind, sub.note, ""])
            continue
        oldest = duration(timedelta(seconds=sub.oldest_age_seconds)) if sub.oldest_age_seconds is not None else "-"
        rows.append([sub.name, sub.kind, f"{sub.backlog}{'+' if sub.backlog_capped else ''}", oldest])
    quiet = duration(timedelta(seconds=status.stuck_after_seconds))
    states = [[state, count] for state, count in status.jobs_by_state.items()]
    lines = [
        f"Relay status: project {status.project}, {iso(now)}",
        "",
        table(["subscription", "kind", "backlog", "oldest unacked"], rows),
        "",
        table(["jobs by state", "count"], states),
        "",
        f"stuck jobs             {status.stuck_jobs}   (not final, not written for {quiet}: relay jobs list --stuck)",
        f"last event on a job    {iso(status.last_event_at)}   ({age(status.last_event_at, now)})",
        f"verification failures  {status.verification_failures}",
    ]
    return "\n".join(lines)
