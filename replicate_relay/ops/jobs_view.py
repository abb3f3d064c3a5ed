"""Listing and showing jobs from Firestore for an operator: `relay jobs list` and `relay jobs show`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from replicate_relay.jobs import TERMINAL_STATES, Job, JobState
from replicate_relay.jobstore import EVENTS, JOBS, PREDICTIONS, JobStore
from replicate_relay.ops.context import OpsSettings
from replicate_relay.ops.errors import OpsError
from replicate_relay.ops.render import age, iso, table
from replicate_relay.ops.usage import PriceTable, estimate_cell, seconds_cell, usd
from replicate_relay.usage import predict_time, total_time
from replicate_relay.values import ValueStore, dumps

OPEN_STATES = [state.value for state in JobState if state not in TERMINAL_STATES]
RECENT_EVENTS = 20
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime) -> datetime:
    """`2h`, `15m`, `90s`, `3d` before `now`, or an ISO 8601 time (UTC when it names no zone)."""
    text = text.strip()
    match = _DURATION.fullmatch(text)
    if match:
        return now - timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise OpsError(f"--since takes a duration such as 2h, 15m, 3d or an ISO 8601 time, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class JobFilter:
    state: str | None = None
    stuck: bool = False  # not final, and not written for `OpsSettings.quiet`
    since: datetime | None = None  # written at or after
    limit: int = 50


def list_jobs(db: firestore.Client, settings: OpsSettings, selection: JobFilter, *, now: datetime) -> list[Job]:
    """Jobs matching `selection`. Filtered by state (or stuck): oldest first, which the composite
    index (state, updated_at) in infra/firestore.indexes.json serves; otherwise newest first."""
    query: Any = db.collection(JOBS)
    if selection.stuck and selection.state and selection.state not in OPEN_STATES:
        raise OpsError(f"a {selection.state} job is final, so never stuck; stuck jobs are {', '.join(OPEN_STATES)}")
    if selection.stuck:
        states = [selection.state] if selection.state else OPEN_STATES
        query = query.where(filter=FieldFilter("state", "in", states))
        query = query.where(filter=FieldFilter("updated_at", "<", now - settings.quiet))
    elif selection.state:
        query = query.where(filter=FieldFilter("state", "==", selection.state))
    if selection.since is not None:
        query = query.where(filter=FieldFilter("updated_at", ">=", selection.since))
    filtered = selection.stuck or selection.state
    query = query.order_by("updated_at", direction="ASCENDING" if filtered else "DESCENDING").limit(selection.limit)
    with settings.firestore_errors():
        return [Job.from_document(snapshot.to_dict() or {}) for snapshot in query.stream(**settings.rpc())]


@dataclass(frozen=True)
class EventRecord:
    """One `jobs/{id}/events` document: an event the handlers saw, and what it did."""

    received_at: datetime | None
    status: str | None
    source: str | None
    outcome: str | None
    webhook_id: str | None
    webhook_timestamp: int | None

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> EventRecord:
        return cls(**{name: document.get(name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class JobDetail:
    job: Job
    found_by: str  # "job id" or "prediction id"
    events: list[EventRecord]  # the most recent, oldest first


def show_job(
    db: firestore.Client, settings: OpsSettings, identifier: str, *, values: ValueStore | None = None
) -> JobDetail:
    """The job with this id, else the job of the prediction with this id; OpsError if neither.

    With `values`, the values the job keeps in the bucket are read back into it."""
    if not identifier or "/" in identifier:
        raise OpsError(f"{identifier!r} is not a job or prediction id")
    with settings.firestore_errors():
        snapshot = db.collection(JOBS).document(identifier).get(**settings.rpc())
        found_by = "job id"
        if not snapshot.exists:
            mapping = db.collection(PREDICTIONS).document(identifier).get(**settings.rpc())
            if not mapping.exists:
                raise OpsError(f"no job or prediction {identifier} in project {settings.project}")
            found_by = "prediction id"
            snapshot = db.collection(JOBS).document(mapping.get("job_id")).get(**settings.rpc())
            if not snapshot.exists:
                raise OpsError(f"prediction {identifier} points to job {mapping.get('job_id')}, which does not exist")
        job = Job.from_document(snapshot.to_dict() or {})
        events_query = (
            db.collection(JOBS)
            .document(job.job_id)
            .collection(EVENTS)
            .order_by("received_at", direction="DESCENDING")
            .limit(RECENT_EVENTS)
        )
        events = [EventRecord.from_document(event.to_dict() or {}) for event in events_query.stream(**settings.rpc())]
    if values is not None and job.stored_values:
        job = JobStore(db, values=values).resolve(job)
    return JobDetail(job=job, found_by=found_by, events=events[::-1])


def trace_hint(job_id: str) -> str:
    return f"trace: relay trace {job_id}   (--html FILE for a page, --gcp for Cloud Trace)"


def render_jobs(jobs: list[Job], *, now: datetime, prices: PriceTable | None = None) -> str:
    """One line per job, with Replicate's predict time; with `prices`, a cost estimate too."""
    if not jobs:
        return "No jobs match."
    headers = ["job", "state", "replicate", "prediction", "model", "predict s"]
    headers += ["estimate"] if prices is not None else []
    rows = [
        [
            job.job_id,
            job.state,
            job.replicate_status,
            job.prediction_id,
            job.model,
            seconds_cell(predict_time(job)),
            *([estimate_cell(prices, job)] if prices is not None else []),
            age(job.updated_at, now),
            outcome_summary(job),
        ]
        for job in jobs
    ]
    listing = table([*headers, "updated", "outputs / error"], rows)
    return listing + ("\n\n" + estimate_note(prices) if prices is not None else "")


def estimate_note(prices: PriceTable) -> str:
    return f"estimate: predict s × USD per second from {prices.source}; Replicate reports no cost"


def outcome_summary(job: Job) -> str:
    """The error, the number of files, or the plain output, on one line."""
    if job.error_code or job.error:
        return f"{job.error_code or 'error'}: {_one_line(job.error)}"
    if job.outputs:
        return f"{len(job.outputs)} file(s)"
    if job.output_value is not None:
        return _one_line(job.output_value)
    return ""


def _one_line(value: object, width: int = 60) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def usage_fields(job: Job, prices: PriceTable | None) -> list[tuple[str, object]]:
    """Replicate's predict and total time, and with `prices` the estimate (or why there is none)."""
    predicted, total = predict_time(job), total_time(job)
    fields: list[tuple[str, object]] = [
        ("predict time", f"{predicted:.3f} s" if predicted is not None else "-   (Replicate reported none)"),
        ("total time", f"{total:.3f} s" if total is not None else "-"),
    ]
    if prices is not None:
        price, amount = prices.price(job), prices.estimate(job)
        if amount is not None and price is not None:
            shown = f"{usd(amount)}   (estimate: predict time × {usd(price)}/s from {prices.source})"
        elif price is None:
            shown = f"-   (no price for {job.deployment or job.model or 'this job'} in {prices.source})"
        else:
            shown = "-   (no predict time)"
        fields.append(("cost estimate", shown))
    return fields


def render_job(detail: JobDetail, *, now: datetime, prices: PriceTable | None = None) -> str:
    job = detail.job
    fields: list[tuple[str, object]] = [
        ("job", f"{job.job_id}   (found by {detail.found_by})"),
        ("prediction", job.prediction_id),
        ("state", f"{job.state}   (Replicate: {job.replicate_status or '-'})"),
        ("kind", job.kind),
        ("model", job.model),
        ("deployment", job.deployment),
        ("source", job.source),
        ("created", iso(job.created_at)),
        ("updated", f"{iso(job.updated_at)}   ({age(job.updated_at, now)})"),
        ("last event", iso(job.last_event_at)),
        ("completed", iso(job.completed_at)),
        ("announced", f"{iso(job.announced_at)}   (by {job.announcer or '-'})"),
        ("metadata", ", ".join(f"{key}={value}" for key, value in sorted(job.metadata.items())) or "-"),
    ]
    fields += usage_fields(job, prices)
    if job.error is not None or job.error_code:
        fields.append(("error", f"{job.error_code or '-'}: {_one_line(job.error, 200)}"))
    if job.input is not None:
        fields.append(("input", _one_line(dumps(job.input), 200)))
    if job.output is not None:
        fields.append(("output", _one_line(dumps(job.output), 200)))
    if job.stored_values:
        fields.append(("in the bucket", ", ".join(f"{name} {link.gs_uri}" for name, link in job.stored_values.items())))
    if job.logs_tail:
        fields.append(("logs (last line)", _one_line(job.logs_tail.strip().splitlines()[-1], 200)))
    lines = [f"{name:<17}{value if value is not None else '-'}" for name, value in fields]
    lines += ["", f"outputs ({len(job.outputs)})"]
    if job.outputs:
        rows = [
            [e.get("index"), e.get("content_type"), e.get("size"), e.get("gs_uri") or e.get("error")]
            for e in job.outputs
        ]
        lines.append(table(["#", "type", "bytes", "gs:// URI"], rows, indent="  "))
    lines += ["", f"events (last {RECENT_EVENTS}, oldest first)"]
    if detail.events:
        rows = [[e.received_at, e.status, e.source, e.outcome, e.webhook_id] for e in detail.events]
        lines.append(table(["received", "status", "source", "outcome", "webhook_id"], rows, indent="  "))
    else:
        lines.append("  none recorded")
    return "\n".join([*lines, "", trace_hint(job.job_id)])


def job_detail_json(detail: JobDetail, *, prices: PriceTable | None = None) -> dict[str, Any]:
    job = detail.job
    usage: dict[str, Any] = {"predict_time": predict_time(job), "total_time": total_time(job)}
    if prices is not None:
        usage |= {"estimate_usd": prices.estimate(job), "usd_per_second": prices.price(job), "prices": prices.source}
    return {
        "job": job.json_form(),
        "found_by": detail.found_by,
        "usage": usage,
        "events": [
            {**event.__dict__, "received_at": event.received_at.isoformat() if event.received_at else None}
            for event in detail.events
        ],
        "trace": f"relay trace {detail.job.job_id}",
    }
