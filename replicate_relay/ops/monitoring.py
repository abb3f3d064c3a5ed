"""Push-subscription backlogs and verification failures from Cloud Monitoring, for `relay status` in production.

Pub/Sub samples a subscription's undelivered messages and oldest unacknowledged age every minute;
the receiver's OpenTelemetry counter reaches Monitoring as `workload.googleapis.com/...`
(cumulative). A query that fails says why in a few words instead of failing the whole status.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions

from replicate_relay.ops.context import OpsSettings, rpc_options
from replicate_relay.ops.errors import NO_CREDENTIALS, OpsError

if TYPE_CHECKING:  # imported when a client is made: ~130 ms that no local command needs
    from google.cloud import monitoring_v3

UNDELIVERED = "pubsub.googleapis.com/subscription/num_undelivered_messages"
OLDEST_UNACKED_AGE = "pubsub.googleapis.com/subscription/oldest_unacked_message_age"
VERIFICATION_FAILURES = "workload.googleapis.com/relay.webhook.verification_failures"
RECENT = timedelta(minutes=10)  # Pub/Sub writes a point a minute; older than this is not "now"


class MetricQuery(Protocol):
    """The one method of `monitoring_v3.MetricServiceClient` used here (a fake in unit tests)."""

    def list_time_series(
        self, request: dict[str, Any], *, retry: Any, timeout: float
    ) -> Iterable[monitoring_v3.TimeSeries]: ...


def monitoring_client() -> monitoring_v3.MetricServiceClient:
    from google.cloud import monitoring_v3  # noqa: PLC0415 - see TYPE_CHECKING above

    try:
        return monitoring_v3.MetricServiceClient()
    except auth_exceptions.DefaultCredentialsError:
        raise OpsError(NO_CREDENTIALS) from None


@dataclass(frozen=True)
class PushBacklog:
    subscription: str
    undelivered: int | None
    oldest_age_seconds: float | None
    note: str


def push_backlogs(
    client: MetricQuery, settings: OpsSettings, subscriptions: Sequence[str], *, now: datetime
) -> list[PushBacklog]:
    """The latest sample of each subscription's backlog and oldest unacknowledged age (last 10 minutes)."""
    try:
        undelivered = _latest(client, settings, UNDELIVERED, subscriptions, now=now)
        oldest = _latest(client, settings, OLDEST_UNACKED_AGE, subscriptions, now=now)
    except MONITORING_ERRORS as error:
        note = explain(error, settings.timeout)
        return [PushBacklog(name, None, None, note) for name in subscriptions]
    backlogs = []
    for name in subscriptions:
        if name not in undelivered:
            backlogs.append(PushBacklog(name, None, None, f"n/a: no Cloud Monitoring sample in the last {_minutes()}"))
            continue
        count, sampled_at = undelivered[name]
        age = oldest.get(name, (None, sampled_at))[0]
        seconds_ago = max(0, int((now - sampled_at).total_seconds()))
        note = f"Cloud Monitoring, sampled {seconds_ago}s ago"
        backlogs.append(PushBacklog(name, int(count), float(age) if age is not None else None, note))
    return backlogs


def _latest(
    client: MetricQuery, settings: OpsSettings, metric_type: str, subscriptions: Sequence[str], *, now: datetime
) -> dict[str, tuple[float, datetime]]:
    names = ", ".join(_quote(name) for name in subscriptions)
    request = {
        "name": f"projects/{settings.project}",
        "filter": (
            f'metric.type = "{metric_type}" AND resource.type = "pubsub_subscription" '
            f"AND resource.labels.subscription_id = one_of({names})"
        ),
        "interval": _interval(now - RECENT, now),
        "view": "FULL",
    }
    latest: dict[str, tuple[float, datetime]] = {}
    for series in client.list_time_series(request, **rpc_options(settings.timeout)):
        name = series.resource.labels.get("subscription_id", "")
        for point in series.points:
            sampled_at = point.interval.end_time
            if name not in latest or sampled_at > latest[name][1]:
                latest[name] = (_value(point), sampled_at)
    return latest


def verification_failures(
    client: MetricQuery, settings: OpsSettings, *, now: datetime, window: timedelta = timedelta(hours=1)
) -> dict[str, int]:
    """Failures per reason within `window`: the counter's increase (ALIGN_DELTA), summed over every
    receiver instance (REDUCE_SUM by reason). Raises the client's errors; see `explain`."""
    seconds = int(window.total_seconds())
    request = {
        "name": f"projects/{settings.project}",
        "filter": f'metric.type = "{VERIFICATION_FAILURES}"',
        "interval": _interval(now - window, now),
        "aggregation": {
            "alignment_period": {"seconds": seconds},
            "per_series_aligner": "ALIGN_DELTA",
            "cross_series_reducer": "REDUCE_SUM",
            "group_by_fields": ["metric.labels.reason"],
        },
        "view": "FULL",
    }
    by_reason: dict[str, int] = {}
    for series in client.list_time_series(request, **rpc_options(settings.timeout)):
        reason = series.metric.labels.get("reason", "") or "unknown"
        # Alignment may cut the window into two periods; their deltas add up to the window's.
        total = sum(round(_value(point)) for point in series.points)
        by_reason[reason] = by_reason.get(reason, 0) + total
    return dict(sorted(by_reason.items()))


MONITORING_ERRORS = (google_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError)


def explain(error: Exception, timeout: float) -> str:
    """A few words on why Cloud Monitoring gave no figure, for the one cell it leaves empty."""
    if isinstance(error, auth_exceptions.GoogleAuthError):
        return "n/a: no Google credentials for Cloud Monitoring"
    if isinstance(error, google_exceptions.PermissionDenied):
        if _api_disabled(error):
            return "n/a: the Cloud Monitoring API is disabled in this project"
        return "n/a: no permission to read Cloud Monitoring (roles/monitoring.viewer)"
    if isinstance(
        error, google_exceptions.ServiceUnavailable | google_exceptions.DeadlineExceeded | google_exceptions.RetryError
    ):
        return f"n/a: Cloud Monitoring did not answer within {timeout:g} s"
    if isinstance(error, google_exceptions.NotFound):
        return "n/a: Cloud Monitoring has no such metric in this project yet"
    code = getattr(error, "code", None)
    return f"n/a: Cloud Monitoring refused the query ({code or type(error).__name__})"


def _api_disabled(error: google_exceptions.PermissionDenied) -> bool:
    reason = getattr(error, "reason", None)
    return reason == "SERVICE_DISABLED" or "has not been used in project" in str(error.message)


def _interval(start: datetime, end: datetime) -> dict[str, Any]:
    return {"start_time": _timestamp(start), "end_time": _timestamp(end)}


def _timestamp(moment: datetime) -> dict[str, int]:
    return {"seconds": int(moment.timestamp()), "nanos": moment.microsecond * 1000}


def _value(point: monitoring_v3.Point) -> float:
    value = point.value
    return float(value.double_value) if "double_value" in value else float(value.int64_value)


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _minutes() -> str:
    return f"{int(RECENT.total_seconds() // 60)} minutes"
