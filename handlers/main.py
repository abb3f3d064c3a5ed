"""functions-framework entry points (`--target job_status`): adapt the push request, map errors."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import flask
from google.cloud import firestore

from handlers import job_status as job_status_handler
from handlers.errors import HandlerError
from handlers.push import PushEnvelope, decode_event, parse_envelope
from handlers.settings import HandlerSettings
from relay import logs
from relay.config import ConfigError
from relay.jobstore import JobStore

log = logging.getLogger("relay.handlers")

try:
    SETTINGS = HandlerSettings.from_env(os.environ)
except ConfigError as config_error:
    logs.configure("handlers")
    log.critical("handlers cannot start: %s", config_error)
    sys.exit(2)
logs.configure(os.environ.get("K_SERVICE", "handlers"), level=SETTINGS.log_level)

_lock = threading.Lock()
_store: JobStore | None = None


def _job_store() -> JobStore:
    # Created on first use in the serving process (gRPC channels must not cross gunicorn's fork).
    global _store
    with _lock:
        if _store is None:
            _store = JobStore(
                firestore.Client(project=SETTINGS.project),
                policy=SETTINGS.policy,
                event_retention=SETTINGS.event_retention,
            )
        return _store


def job_status(request: flask.Request) -> flask.Response:
    """Push endpoint of the `job-status` subscription."""
    return _serve_push(request, "job-status", _apply_job_status)


def _apply_job_status(envelope: PushEnvelope) -> dict[str, Any]:
    event = decode_event(envelope)
    applied = job_status_handler.apply(_job_store(), event)
    return {
        "outcome": applied.outcome.value,
        "job_id": applied.job_id,
        "state": applied.state,
        "prediction_id": event.attributes.prediction_id,
        "status": event.attributes.status,
        "webhook_id": event.attributes.webhook_id,
        "source": event.attributes.source.value,
    }


def _serve_push(request: flask.Request, handler: str, work: Callable[[PushEnvelope], dict[str, Any]]) -> flask.Response:
    """One log line per message; HandlerError decides between acknowledging and retrying."""
    started = time.perf_counter()
    envelope: PushEnvelope | None = None
    try:
        if request.method != "POST":
            return flask.make_response(({"error": "method_not_allowed"}, 405))
        envelope = parse_envelope(request.get_data(cache=False))
        result = work(envelope)
    except HandlerError as error:
        retry = error.status >= 300
        log.log(
            logging.WARNING if retry else logging.ERROR,
            "%s message %s: %s",
            handler,
            "will be retried" if retry else "dropped as undeliverable",
            error.message,
            extra=logs.fields(
                handler=handler,
                outcome="retry" if retry else "permanent_failure",
                reason=error.reason,
                message_id=envelope.message.message_id if envelope else None,
                prediction_id=envelope.message.attributes.get("prediction_id") if envelope else None,
                latency_ms=_elapsed_ms(started),
            ),
        )
        return flask.make_response(({"error": error.reason, "message": error.message}, error.status))
    log.info(
        "%s message handled: %s",
        handler,
        result["outcome"],
        extra=logs.fields(
            handler=handler,
            message_id=envelope.message.message_id,
            latency_ms=_elapsed_ms(started),
            **result,
        ),
    )
    return flask.make_response((result, 200))


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
