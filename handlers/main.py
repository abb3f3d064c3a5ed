"""functions-framework entry points (`--target job_status`, `--target archive_outputs`):
adapt the push request, call the handler, map errors, announce final states."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flask
import google.cloud.storage as storage
from google.cloud import firestore
from opentelemetry import trace
from opentelemetry.trace import Span

from handlers import archive_outputs as archive_handler
from handlers import job_status as job_status_handler
from handlers.auth import PushAuthenticator, scheduler_authenticator
from handlers.errors import TRANSIENT_ERRORS, HandlerError, TransientError
from handlers.push import PushEnvelope, decode_event, parse_envelope
from handlers.reconcile import ACTOR as RECONCILER
from handlers.reconcile import Reconciler
from handlers.settings import HandlerSettings
from replicate_relay import announcements, logs, telemetry, telemetry_setup
from replicate_relay.archive import Archiver
from replicate_relay.bodies import BodyStore
from replicate_relay.config import load_or_exit
from replicate_relay.downloads import Downloader
from replicate_relay.jobstore import Applied, JobStore, utcnow
from replicate_relay.publisher import PublishError, TopicPublisher
from replicate_relay.replicate_api import ReplicateAPI
from replicate_relay.serve import PerProcess, flask_headers, flask_health
from replicate_relay.topology import load as load_topology
from replicate_relay.values import ValueStore

log = logging.getLogger("relay.handlers")

SETTINGS = load_or_exit(lambda: HandlerSettings.from_env(os.environ), "handlers")
logs.configure(SETTINGS.telemetry.service, level=SETTINGS.log_level, project=SETTINGS.project)
# After how many refused deliveries Pub/Sub dead-letters a subscription's message.
MAX_DELIVERY_ATTEMPTS = {
    subscription.name: subscription.dead_letter.max_delivery_attempts
    for subscription in load_topology().subscriptions
    if subscription.dead_letter
}
# Checks Pub/Sub's OIDC token on each push request (or not, with RELAY_PUSH_AUTH=off). None where
# FUNCTION_TARGET names no push target (functions-framework sets it to the target it serves): such a
# process refuses push requests rather than serve them unchecked.
PUSH_AUTH = PushAuthenticator(SETTINGS.push) if SETTINGS.push else None
# Checks Cloud Scheduler's OIDC token on each reconcile call (RELAY_RECONCILE_INVOKER's e-mail, the
# service's own URL), where FUNCTION_TARGET is reconcile.
RECONCILE_AUTH = scheduler_authenticator(SETTINGS.reconciler.caller) if SETTINGS.reconciler else None


@dataclass(frozen=True)
class Clients:
    """Google clients and helpers, created once per serving process."""

    store: JobStore
    job_events: TopicPublisher
    archiver: Archiver
    bodies: BodyStore  # event bodies too large for a message (replicate_relay/bodies.py)


def _make_clients() -> Clients:
    bucket = storage.Client(project=SETTINGS.project).bucket(SETTINGS.bucket)
    return Clients(
        store=JobStore(
            firestore.Client(project=SETTINGS.project),
            policy=SETTINGS.policy,
            event_retention=SETTINGS.event_retention,
            values=ValueStore(bucket),
        ),
        job_events=_publisher(SETTINGS.job_events_topic),
        archiver=Archiver(
            bucket,
            Downloader(SETTINGS.downloads),
            chunk_bytes=SETTINGS.upload_chunk_bytes,
            weights_max_bytes=SETTINGS.weights_max_bytes,
        ),
        bodies=BodyStore(bucket),
    )


def _publisher(topic: str) -> TopicPublisher:
    return TopicPublisher(SETTINGS.topic_path(topic), deadline_seconds=SETTINGS.publish_deadline_seconds)


_CLIENTS = PerProcess(_make_clients)


def _setup_telemetry() -> None:
    # In the worker, after gunicorn's fork (gRPC channels must not cross it), and before the first
    # Google client is made, so the instrumentations see it. At once after the first call.
    telemetry_setup.setup(SETTINGS.telemetry, instrument=("firestore", "requests", "httpx"))


def job_status(request: flask.Request) -> flask.Response:
    """Push endpoint of the `job-status` subscription."""
    return _serve_push(request, "job-status", _apply_job_status)


def archive_outputs(request: flask.Request) -> flask.Response:
    """Push endpoint of the `archive-outputs` subscription."""
    return _serve_push(request, archive_handler.ACTOR, _archive_outputs)


def reconcile(request: flask.Request) -> flask.Response:
    """What Cloud Scheduler calls every few minutes: check quiet jobs against Replicate."""
    if (health := flask_health(request)) is not None:
        return health
    _setup_telemetry()
    if request.method != "POST":
        return flask.make_response(({"error": "method_not_allowed"}, 405))
    if SETTINGS.reconciler is None:  # the deployment did not set FUNCTION_TARGET=reconcile
        log.error("reconcile called but its settings were not loaded: set FUNCTION_TARGET=reconcile")
        return flask.make_response(({"error": "not_configured"}, 500))
    if (refused := _refuse_caller(request)) is not None:
        return refused
    started = time.perf_counter()
    # Each run is a trace of its own (Cloud Scheduler's request is only linked): a recovered
    # prediction's trace links back to it.
    request_context = trace.get_current_span(telemetry.extract_http(flask_headers(request))).get_span_context()
    with telemetry.tracer().start_as_current_span(
        "reconcile run",
        context=telemetry.new_trace(),
        links=[trace.Link(request_context)] if request_context.is_valid else [],
    ) as span:
        response = _reconcile(span, started)
    if telemetry.flush_each_request():
        telemetry.flush()
    return response


def _refuse_caller(request: flask.Request) -> flask.Response | None:
    """401/403 (and a log line) unless the call carries Cloud Scheduler's token for this service;
    503 when Google's certificates cannot be had."""
    if RECONCILE_AUTH is None:
        return flask.make_response(({"error": "not_configured"}, 500))
    try:
        RECONCILE_AUTH.authenticate(request.headers.get("Authorization"), host=request.headers.get("Host"))
    except HandlerError as error:
        log.warning(
            "reconcile call refused: %s",
            error.message,
            extra=logs.fields(handler="reconciler", outcome="refused", reason=error.reason, status=error.status),
        )
        return flask.make_response(({"error": error.reason, "message": error.message}, error.status))
    return None


def _make_reconciler() -> Reconciler:
    settings = SETTINGS.reconciler
    if settings is None:  # checked by reconcile() before the first use
        raise RuntimeError("no reconciler settings")
    clients = _CLIENTS.get()
    return Reconciler(
        store=clients.store,
        replicate=ReplicateAPI.connect(settings.replicate_token.value, base_url=settings.replicate_base_url),
        events=_publisher(SETTINGS.events_topic),
        job_events=clients.job_events,
        settings=settings.run,
        bodies=clients.bodies,
    )


_RECONCILER = PerProcess(_make_reconciler)


def _reconcile(span: Span, started: float) -> flask.Response:
    try:
        summary = _RECONCILER.get().run().as_dict()
    except TRANSIENT_ERRORS as error:
        telemetry.mark_error(span, "unavailable", str(error)[:300])
        _record_handling(RECONCILER, "retry", started)
        log.warning("reconcile run failed: %s", error, extra=logs.fields(outcome="retry"))
        return flask.make_response(({"error": "unavailable", "message": str(error)[:300]}, 503))
    span.set_attributes({f"relay.reconcile.{key}": value for key, value in summary.items() if isinstance(value, int)})
    _record_handling(RECONCILER, "ok", started)
    log.info(
        "reconcile run: %(checked)s checked, %(recovered)s recovered, %(errors)s errors",
        summary,
        extra=logs.fields(handler="reconciler", latency_ms=_elapsed_ms(started), **summary),
    )
    return flask.make_response((summary, 200))


def _apply_job_status(envelope: PushEnvelope, span: Span) -> dict[str, Any]:
    clients = _CLIENTS.get()
    event = decode_event(envelope, clients.bodies)
    applied = job_status_handler.apply(clients.store, event)
    span.set_attribute(telemetry.JOB_ID, applied.job_id)
    announced = _announce_if_owed(clients, applied, "job-status")
    return {
        "outcome": applied.outcome.value,
        "job_id": applied.job_id,
        "state": applied.state,
        "announced": announced,
        **_not_stored(applied),
        **_event_fields(envelope, event.attributes.source.value),
    }


def _archive_outputs(envelope: PushEnvelope, span: Span) -> dict[str, Any]:
    clients = _CLIENTS.get()
    event = decode_event(envelope, clients.bodies)
    result = archive_handler.archive(event, store=clients.store, archiver=clients.archiver)
    job = result.applied.job if result.applied else None
    if result.applied:
        span.set_attribute(telemetry.JOB_ID, result.applied.job_id)
    announced = _announce_if_owed(clients, result.applied, archive_handler.ACTOR)
    archived_bytes = sum(int(entry.get("size") or 0) for entry in result.outputs if not entry.get("already_archived"))
    telemetry.METRICS.archive_bytes.add(archived_bytes)
    return {
        "outcome": result.outcome,
        "job_id": result.applied.job_id if result.applied else None,
        "state": job.state if job else None,
        "files": len([entry for entry in result.outputs if entry.get("gs_uri")]),
        "bytes_archived": archived_bytes,
        "error_code": result.failure.code if result.failure else None,
        "announced": announced,
        **_not_stored(result.applied),
        **_event_fields(envelope, event.attributes.source.value),
    }


def _not_stored(applied: Applied | None) -> dict[str, Any]:
    """A job written without the prediction's values because Firestore refused them: the message
    is done with (acknowledged) and the job final if Replicate's event was, but someone should know."""
    if applied is None or applied.not_stored is None:
        return {}
    telemetry.METRICS.not_stored.add(1, {"state": applied.state or "unknown"})
    return {"error_code": "not_stored", "not_stored": applied.not_stored}


def _announce_if_owed(clients: Clients, applied: Applied | None, actor: str) -> bool:
    """Publish the final state on job-events if this handler made the job final and has not yet."""
    if applied is None:
        return False
    job = applied.job
    try:
        announced = announcements.announce_owed(clients.store, clients.job_events, job, actor, claimed=applied.claimed)
    except PublishError as error:
        # The transition is committed; redelivery of this message announces it then.
        raise TransientError("announce_failed", str(error)) from error
    if announced and job is not None and job.completed_at is not None:
        # Once per job (the announcement is claimed once): Replicate finished → the job is final.
        latency = (utcnow() - job.completed_at).total_seconds()
        telemetry.METRICS.end_to_end.record(max(latency, 0.0), {"state": job.state})
    return announced


def _event_fields(envelope: PushEnvelope, source: str) -> dict[str, Any]:
    attributes = envelope.message.attributes
    return {
        "prediction_id": attributes.get("prediction_id"),
        "status": attributes.get("status"),
        "webhook_id": attributes.get("webhook_id"),
        "source": source,
    }


def _serve_push(
    request: flask.Request, handler: str, work: Callable[[PushEnvelope, Span], dict[str, Any]]
) -> flask.Response:
    """One span and one log line per message; HandlerError decides between acknowledging and retrying."""
    if (health := flask_health(request)) is not None:
        return health
    _setup_telemetry()
    started = time.perf_counter()
    if request.method != "POST":
        return flask.make_response(({"error": "method_not_allowed"}, 405))
    try:
        _authenticate(request)  # before the body is read: a refused request is not processed at all
        envelope = parse_envelope(request.get_data(cache=False))
    except HandlerError as error:
        response = _failed(handler, error, None, started)
    else:
        with telemetry.consumer_span(
            envelope.subscription_name or handler,
            envelope.message.attributes,
            message_id=envelope.message.message_id,
            delivery_attempt=envelope.delivery_attempt,
            request_headers=flask_headers(request),
        ) as span:
            response = _handle(handler, envelope, work, span, started)
    if telemetry.flush_each_request():
        telemetry.flush()
    return response


def _authenticate(request: flask.Request) -> None:
    """Unauthenticated (401/403) unless the request carries Pub/Sub's token for this service."""
    if PUSH_AUTH is None:
        raise HandlerError("not_configured", "push settings not loaded: FUNCTION_TARGET must name the push target")
    PUSH_AUTH.authenticate(request.headers.get("Authorization"), host=request.headers.get("Host"))


def _handle(
    handler: str,
    envelope: PushEnvelope,
    work: Callable[[PushEnvelope, Span], dict[str, Any]],
    span: Span,
    started: float,
) -> flask.Response:
    try:
        result = work(envelope, span)
    except HandlerError as error:
        telemetry.mark_error(span, error.reason, error.message)
        return _failed(handler, error, envelope, started)
    span.set_attribute(telemetry.OUTCOME, result["outcome"])
    if result.get("error_code"):
        telemetry.mark_error(span, result["error_code"])
    _record_handling(handler, result["outcome"], started)
    # A job that ended failed because of its outputs (expired, refused) is an ERROR for whoever is on
    # call, though the message itself is done with and acknowledged.
    log.log(
        logging.ERROR if result.get("error_code") else logging.INFO,
        "%s message handled: %s",
        handler,
        result["outcome"],
        extra=logs.fields(
            handler=handler, message_id=envelope.message.message_id, latency_ms=_elapsed_ms(started), **result
        ),
    )
    return flask.make_response((result, 200))


def _failed(handler: str, error: HandlerError, envelope: PushEnvelope | None, started: float) -> flask.Response:
    retry = error.status >= 300
    outcome = "retry" if retry else "permanent_failure"
    _record_handling(handler, outcome, started)
    if retry and envelope and _last_attempt(envelope):
        telemetry.METRICS.dead_lettered.add(1, {"handler": handler})
    log.log(
        logging.WARNING if retry else logging.ERROR,
        "%s message %s: %s",
        handler,
        "will be retried" if retry else "dropped as undeliverable",
        error.message,
        extra=logs.fields(
            handler=handler,
            outcome=outcome,
            reason=error.reason,
            message_id=envelope.message.message_id if envelope else None,
            prediction_id=envelope.message.attributes.get("prediction_id") if envelope else None,
            delivery_attempt=envelope.delivery_attempt if envelope else None,
            latency_ms=_elapsed_ms(started),
        ),
    )
    return flask.make_response(({"error": error.reason, "message": error.message}, error.status))


def _last_attempt(envelope: PushEnvelope) -> bool:
    """Whether Pub/Sub dead-letters this message once it is refused (known only where Pub/Sub says
    which attempt this is: the real service does, the emulator does not)."""
    limit = MAX_DELIVERY_ATTEMPTS.get(envelope.subscription_name)
    return limit is not None and envelope.delivery_attempt is not None and envelope.delivery_attempt >= limit


def _record_handling(handler: str, outcome: str, started: float) -> None:
    telemetry.METRICS.handler_duration.record(time.perf_counter() - started, {"handler": handler, "outcome": outcome})


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
