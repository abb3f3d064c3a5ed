"""functions-framework entry point (`--asgi --target receive`): adapts the request, maps errors."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time

from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.errors import MethodNotAllowed, Rejected
from receiver.intake import Intake, client_key
from receiver.rejections import RejectionSampler
from receiver.settings import ReceiverSettings
from replicate_relay import logs, telemetry, telemetry_setup
from replicate_relay.bodies import BodyStore
from replicate_relay.config import load_or_exit
from replicate_relay.publisher import AsyncTopicPublisher
from replicate_relay.serve import HEALTH_PATH, PerProcess

log = logging.getLogger("relay.receiver")

SETTINGS = load_or_exit(lambda: ReceiverSettings.from_env(os.environ), "receiver")
logs.configure("receiver", level=SETTINGS.log_level, project=SETTINGS.project)


def _make_intake() -> Intake:
    # Made on first use, inside the worker's running event loop: the grpc.aio channel belongs to it.
    publisher = AsyncTopicPublisher(SETTINGS.topic_path, deadline_seconds=SETTINGS.publish_deadline_seconds)
    intake = Intake(SETTINGS, publisher, bodies=_body_store())
    tune_gc()
    return intake


_INTAKE = PerProcess(_make_intake)
# 4xx answers are logged sampled, so a flood of them cannot run up the logging bill; 5xx all.
_REJECTIONS = RejectionSampler()


def _body_store() -> BodyStore | None:
    """Where bodies too large for a message go (RELAY_MAX_STORED_BODY_BYTES > 0): the archive bucket."""
    if not SETTINGS.max_stored_body_bytes:
        return None
    # Imported here: only a receiver that stores large bodies needs the storage client.
    import google.cloud.storage as storage  # noqa: PLC0415

    bucket = storage.Client(project=SETTINGS.project).bucket(SETTINGS.bucket)
    return BodyStore(bucket, inline_bytes=SETTINGS.max_body_bytes)


def tune_gc() -> None:
    """Call once the worker has made its long-lived objects.

    Everything made so far (modules, clients, the telemetry SDK) lives as long as the worker:
    frozen, collections stop walking it. And a webhook's spans allocate enough that the default
    threshold (700) would run a collection every few requests, costing peak throughput and tail
    latency (docs/PERFORMANCE.md). Reference counting still frees almost everything at once; only
    cycles wait.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def receive(request: Request) -> Response:
    """Verify one Replicate webhook and answer 200 only once Pub/Sub holds it."""
    telemetry_setup.setup(SETTINGS.telemetry)  # in the worker, after gunicorn's fork; at once after the first
    # scope["path"] rather than request.url: building a URL object costs ~5% of a request here.
    if request.scope["path"] == HEALTH_PATH and request.method in {"GET", "HEAD"}:
        return JSONResponse({"status": "ok"})  # deliberately does not touch Pub/Sub

    started = time.perf_counter()
    # One pass over the raw ASGI headers (already lower-case) into a dict: Starlette's Headers
    # scans its list on every lookup, and a webhook needs six of them.
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in request.scope["headers"]}
    with telemetry.tracer().start_as_current_span(
        f"{request.method} /",
        context=telemetry.extract_http(headers),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": request.method, "url.path": request.scope["path"]},
    ) as span:
        response = await _receive(request, headers, span, started)
    if telemetry.flush_each_request():
        await asyncio.to_thread(telemetry.flush)
    return response


async def _receive(request: Request, headers: dict[str, str], span: Span, started: float) -> Response:
    """One line of log, one set of metrics and one answer per webhook, whatever its outcome."""
    client = client_key(
        request.client.host if request.client else None,
        headers.get("x-forwarded-for"),
        SETTINGS.trusted_proxy_hops,
    )
    if unlogged := _REJECTIONS.ended_window(time.monotonic()):
        log.warning(
            "webhook rejections not logged one by one: %s",
            ", ".join(f"{count} {reason}" for reason, count in sorted(unlogged.items())),
            extra=logs.fields(outcome="rejected", unlogged=unlogged),
        )
    try:
        if request.method != "POST":
            raise MethodNotAllowed("method_not_allowed", f"{request.method} is not accepted; Replicate POSTs")
        accepted = await _INTAKE.get().handle(headers, request.stream(), client=client)
    except Rejected as rejected:
        outcome = "unavailable" if rejected.status >= 500 else "rejected"
        _record(span, started, outcome, rejected.status, rejected.reason)
        if rejected.verification:
            telemetry.METRICS.verification_failures.add(1, {"reason": rejected.reason})
        if rejected.status >= 500:
            span.set_status(Status(StatusCode.ERROR, rejected.message))
        elif not _REJECTIONS.log_in_full(rejected.reason, time.monotonic()):
            return _refusal(rejected)
        log.log(
            logging.ERROR if rejected.status >= 500 else logging.WARNING,
            "webhook rejected: %s",
            rejected.message,
            extra=logs.fields(
                outcome=outcome,
                http_status=rejected.status,
                reason=rejected.reason,
                webhook_id=_printable(headers.get("webhook-id")),
                client=client,
                latency_ms=_elapsed_ms(started),
            ),
        )
        return _refusal(rejected)
    _record(
        span,
        started,
        "accepted",
        200,
        prediction={
            telemetry.PREDICTION_ID: accepted.prediction_id,
            telemetry.STATUS: accepted.status,
            telemetry.WEBHOOK_ID: accepted.webhook_id,
        },
    )
    log.info(
        "webhook accepted",
        extra=logs.fields(
            outcome="accepted",
            http_status=200,
            prediction_id=accepted.prediction_id,
            status=accepted.status,
            webhook_id=accepted.webhook_id,
            message_id=accepted.message_id,
            latency_ms=_elapsed_ms(started),
        ),
    )
    return Response(_accepted_body(accepted.message_id), media_type="application/json")


def _record(
    span: Span,
    started: float,
    outcome: str,
    status: int,
    reason: str | None = None,
    *,
    prediction: dict[str, str] | None = None,
) -> None:
    """The webhook's outcome on its span (in one call: each one takes the span's lock and checks
    every value) and in the metrics."""
    span_attributes: dict[str, str | int] = {"http.response.status_code": status, telemetry.OUTCOME: outcome}
    attributes = {"outcome": outcome}
    if reason:
        span_attributes["error.type"] = reason
        attributes["reason"] = reason
    span.set_attributes({**span_attributes, **(prediction or {})})
    telemetry.METRICS.webhooks.add(1, attributes)
    telemetry.METRICS.webhook_duration.record(time.perf_counter() - started, {"outcome": outcome})


def _refusal(rejected: Rejected) -> Response:
    return JSONResponse({"error": rejected.reason, "message": rejected.message}, status_code=rejected.status)


def _accepted_body(message_id: str) -> bytes:
    return b'{"status":"accepted","message_id":' + json.dumps(message_id).encode() + b"}"


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _printable(value: str | None) -> str | None:
    """A header value that is safe to log: printable ASCII, cut to 128 characters."""
    if value is None:
        return None
    return "".join(ch if ch.isascii() and ch.isprintable() else "?" for ch in value[:128])
