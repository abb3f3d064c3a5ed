"""The status page: `relay status` as a self-refreshing web page, plus recent jobs, a latency chart and
GPU seconds by model or deployment (with cost estimates where RELAY_PRICE_TABLE prices them).

A functions-framework entry point (`--source replicate_relay/ops/statuspage.py --target status_page`), served
by the dev stack, by `relay status --serve`, or as a private Cloud Run service.
`GET /` is the page, `GET /status.json` what `relay status --json` prints. Plain HTML with inline
CSS and an inline SVG chart: no scripts, no external assets. Everything shown is escaped (job ids
and errors come from outside). When a Google API cannot be read, the page is an error panel with
the operator command's one-sentence message and HTTP 503.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import flask
import google.cloud.pubsub_v1 as pubsub_v1
import jinja2
from google.cloud import firestore

from replicate_relay import logs
from replicate_relay.config import ConfigError, Env
from replicate_relay.jobs import Job
from replicate_relay.ops import context, monitoring
from replicate_relay.ops.chart import LatencyChart, job_latency, latency_chart, latency_points, seconds_text
from replicate_relay.ops.context import OpsSettings
from replicate_relay.ops.errors import OpsError
from replicate_relay.ops.jobs_view import JobFilter, list_jobs, outcome_summary
from replicate_relay.ops.render import age, duration, iso, to_json
from replicate_relay.ops.status import Status, SubscriptionStatus, collect_status
from replicate_relay.ops.usage import PriceTable, UsageSummary, estimate_cell, seconds_cell, summarize_usage, usd
from replicate_relay.serve import PerProcess, flask_health
from replicate_relay.topology import Topology, load
from replicate_relay.usage import predict_time

log = logging.getLogger("relay.ops.statuspage")

REFRESH_SECONDS = 10
RECENT_JOBS = 50  # read for the chart and GPU seconds; the table shows the first JOBS_SHOWN
JOBS_SHOWN = 20
DEFAULT_TIMEOUT = 5.0  # per Google API call: a refresh every 10 s must not wait longer on a dead emulator
TIMEOUT_VARIABLE = "RELAY_STATUS_TIMEOUT_SECONDS"
NOT_FOUND = "not found: the page is at / and its figures at /status.json\n"
SOURCE = Path(__file__).resolve()
TARGET = "status_page"

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


@dataclass(frozen=True)
class PageData:
    status: Status
    jobs: list[Job]  # most recently written first, at most RECENT_JOBS
    prices: PriceTable | None = None  # RELAY_PRICE_TABLE: estimates only where it is set


@dataclass(frozen=True)
class Clients:
    """Google clients of one serving process, created on its first request."""

    settings: OpsSettings
    subscriber: pubsub_v1.SubscriberClient
    db: firestore.Client
    metrics: monitoring.MetricQuery | None  # Cloud Monitoring; None on the emulators, which have none
    topology: Topology
    prices: PriceTable | None  # RELAY_PRICE_TABLE


_collecting = threading.Lock()


def collect_page(clients: Clients, *, now: datetime) -> PageData:
    """What `relay status` collects, and the most recent jobs; OpsError when a Google API cannot be read."""
    settings = clients.settings
    # One collection at a time: on the emulators dead letters are counted by pulling them and
    # handing them back, so two at once would each see part of the backlog.
    with _collecting:
        status = collect_status(
            clients.subscriber, clients.db, clients.topology, settings, now=now, metrics=clients.metrics
        )
    jobs = list_jobs(clients.db, settings, JobFilter(limit=RECENT_JOBS), now=now)
    return PageData(status=status, jobs=jobs, prices=clients.prices)


# Rendering ------------------------------------------------------------------------------------


def render_page(data: PageData) -> str:
    status, now = data.status, data.status.at
    dead_letters = [s for s in status.subscriptions if s.kind != "push" and s.backlog is not None]
    capped = any(s.backlog_capped for s in dead_letters)
    by_reason = status.verification_failures_by_reason
    return _templates.get_template("status.html").render(
        refresh_seconds=REFRESH_SECONDS,
        project=status.project,
        at=iso(now),
        error=None,
        status=status,
        stuck_after=duration(timedelta(seconds=status.stuck_after_seconds)),
        last_event_age=duration(now - status.last_event_at) if status.last_event_at else "-",
        last_event_at=iso(status.last_event_at),
        dead_letters=f"{sum(s.backlog or 0 for s in dead_letters)}{'+' if capped else ''}" if dead_letters else "-",
        failures_figure=sum(by_reason.values()) if by_reason is not None else "n/a",
        subscriptions=[_subscription_row(s) for s in status.subscriptions],
        chart=chart_for(data.jobs),
        jobs=[_job_row(job, now, data.prices) for job in data.jobs[:JOBS_SHOWN]],
        priced=data.prices is not None,
        usage=usage_view(summarize_usage(data.jobs, now=now, prices=data.prices, limit=RECENT_JOBS), data.prices),
    )


def usage_view(summary: UsageSummary, prices: PriceTable | None) -> dict[str, object]:
    """The GPU seconds table as the template shows it: rows, the total, and what the figures cover."""
    rows = [
        {
            "target": row.target,
            "kind": row.kind,
            "jobs": row.jobs,
            "seconds": seconds_cell(row.predict_seconds),
            "estimate": _estimate_text(row.estimate_usd, row.unpriced_jobs),
        }
        for row in summary.rows
    ]
    coverage = "every job that ended in the last 24 h"
    if not summary.complete and summary.reaches_back is not None:
        coverage = (
            f"only the {RECENT_JOBS} most recently written jobs, which reach back {duration(summary.reaches_back)}; "
            "relay.job.predict_time (the dashboard's GPU seconds chart) counts every job"
        )
    estimate_note = ""
    if prices is not None:
        estimate_note = (
            f"Cost estimates: predict time × USD per second from {prices.source}. Replicate reports no cost; "
            "its bill may differ (private models and deployments bill their instances' setup and idle time too)."
        )
    return {
        "rows": rows,
        "total_seconds": seconds_cell(summary.predict_seconds),
        "total_jobs": sum(row.jobs for row in summary.rows),
        "total_estimate": usd(summary.estimate_usd) if summary.estimate_usd is not None else "-",
        "coverage": coverage,
        "estimate_note": estimate_note,
    }


def _estimate_text(amount: float | None, unpriced: int) -> str:
    shown = usd(amount) if amount is not None else "-"
    return f"{shown} ({unpriced} unpriced)" if unpriced else shown


def chart_for(jobs: list[Job]) -> LatencyChart:
    return latency_chart(latency_points(jobs))


def render_error(message: str, *, project: str | None, now: datetime) -> str:
    return _templates.get_template("status.html").render(
        refresh_seconds=REFRESH_SECONDS, project=project, at=iso(now), error=message
    )


def _subscription_row(sub: SubscriptionStatus) -> dict[str, object]:
    if sub.backlog is None:
        return {"name": sub.name, "kind": sub.kind, "backlog": "-", "oldest": "-", "note": sub.note or ""}
    oldest = duration(timedelta(seconds=sub.oldest_age_seconds)) if sub.oldest_age_seconds is not None else "-"
    backlog = f"{sub.backlog}{'+' if sub.backlog_capped else ''}"
    return {"name": sub.name, "kind": sub.kind, "backlog": backlog, "oldest": oldest, "note": sub.note or ""}


def _job_row(job: Job, now: datetime, prices: PriceTable | None) -> dict[str, object]:
    latency = "-"
    if job.is_terminal and job.completed_at and job.updated_at:
        latency = seconds_text(job_latency(job.completed_at, job.updated_at))
    return {
        "job_id": job.job_id,
        "state": job.state,
        "replicate_status": job.replicate_status or "-",
        "prediction_id": job.prediction_id or "-",
        "model": job.model or "-",
        "updated": age(job.updated_at, now),
        "latency": latency,
        "predict": seconds_cell(predict_time(job)) or "-",
        "estimate": estimate_cell(prices, job) if prices is not None else "",
        "outcome": outcome_summary(job),
    }


# Serving --------------------------------------------------------------------------------------


def _make_clients() -> Clients:
    logs.configure(os.environ.get("K_SERVICE", "status-page"))
    timeout = Env(os.environ).get_float(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT, minimum=0.1)
    settings = OpsSettings.from_env(os.environ, timeout=timeout)
    metrics = None if settings.on_emulators else monitoring.monitoring_client()
    return Clients(
        settings=settings,
        subscriber=context.subscriber_client(settings),
        db=context.firestore_client(settings),
        metrics=metrics,
        topology=load(),
        prices=PriceTable.from_env(os.environ),
    )


_CLIENTS = PerProcess(_make_clients)


def status_page(request: flask.Request) -> flask.Response:
    """functions-framework entry point: `/` the page, `/status.json` the status as JSON, `/health`;
    GET and HEAD only."""
    health = flask_health(request)
    return health if health is not None else _page(request)


def _page(request: flask.Request) -> flask.Response:
    if request.method not in ("GET", "HEAD"):
        return flask.Response("only GET and HEAD\n", status=405, headers={"Allow": "GET, HEAD"}, mimetype="text/plain")
    as_json = request.path == "/status.json"
    if request.path not in ("/", "/status.json"):
        return flask.Response(NOT_FOUND, 404, mimetype="text/plain")
    now = datetime.now(UTC)
    project = os.environ.get("RELAY_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT")
    try:
        data = collect_page(_CLIENTS.get(), now=now)
    except ConfigError as error:  # OpsError included: one sentence the operator can act on
        log.warning("status unavailable: %s", error)
        return _failure(str(error), 503, as_json=as_json, project=project, now=now)
    except Exception:
        log.exception("status page failed")
        message = "the status page failed unexpectedly; its logs have the details"
        return _failure(message, 500, as_json=as_json, project=project, now=now)
    if as_json:
        return _no_store(flask.Response(to_json(data.status.as_dict()) + "\n", mimetype="application/json"))
    return _no_store(flask.Response(render_page(data), mimetype="text/html"))


def _failure(message: str, code: int, *, as_json: bool, project: str | None, now: datetime) -> flask.Response:
    if as_json:
        return _no_store(flask.Response(to_json({"error": message}) + "\n", code, mimetype="application/json"))
    return _no_store(flask.Response(render_error(message, project=project, now=now), code, mimetype="text/html"))


def _no_store(response: flask.Response) -> flask.Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def serve(host: str, port: int) -> None:
    """Serve the page with functions-framework's app, as deployed, until Ctrl-C (`relay status --serve`)."""
    import functions_framework  # noqa: PLC0415 - only this command serves
    from werkzeug.serving import make_server  # noqa: PLC0415

    # werkzeug prints its own message and exits when it cannot bind: check first, to say it in one sentence.
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise OpsError(f"cannot serve the status page on {host}:{port}: {reason} (try another --port)") from None
    app = functions_framework.create_app(target=TARGET, source=str(SOURCE))  # type: ignore[no-untyped-call]  # untyped upstream
    server = make_server(host, port, app, threaded=True)
    print(f"Relay status page at http://{host}:{server.port}/ (JSON at /status.json); Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
