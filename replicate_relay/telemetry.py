"""OpenTelemetry for every process, through the API only: spans, metrics and the context that ties them together.

What the core records with (it needs only `opentelemetry-api`, so the app's plain install carries no
SDK): the tracer and the instruments are no-ops until a serving process installs the SDK's
providers with `replicate_relay.telemetry_setup.setup()`, which only the services import. Then:

- spans: `tracer()`; a webhook is one trace from the receiver's server span, through the publish
  span (W3C `traceparent` in the message attributes, see `inject_message`), to the handlers'
  consumer spans (`consumer_span`) and what they call;
- metrics: the instruments on `METRICS` (names are part of the dashboards' and alerts' contract:
  infra/terraform/monitoring.tf reads them as `workload.googleapis.com/<name>`);
- flushing: `flush()` before a response is returned (Cloud Run may throttle the CPU once it is),
  and at exit;
- where it goes: `TelemetrySettings`, read from the environment with the rest of a service's settings.

Written by hand, because no instrumentation can know them: the receiver's server span
(functions-framework builds its Starlette app after loading our module, so there is no hook for the
ASGI middleware), publish spans (the receiver's publisher is our own grpc.aio code), consumer spans
(their parent is the message's context, not the push request's), Firestore transactions, archive
files and the reconciler's runs. The exporters, propagators and library instrumentations (and
google-cloud-storage's own spans, with the two variables the image sets for them):
replicate_relay/telemetry_setup.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from replicate_relay.config import ConfigError, Env, on_cloud_run

log = logging.getLogger("relay.telemetry")

SCOPE = "relay"
DEFAULT_TRACE_FILE = Path(".relay/telemetry/spans.jsonl")
DEFAULT_METRICS_FILE = Path(".relay/telemetry/metrics.jsonl")

# Attribute keys of our own, on spans and in the span file (`relay trace` looks them up).
PREDICTION_ID: Final = "relay.prediction_id"
JOB_ID: Final = "relay.job_id"
WEBHOOK_ID: Final = "relay.webhook_id"
STATUS: Final = "relay.status"
OUTCOME: Final = "relay.outcome"
SOURCE: Final = "relay.source"

W3C: Final = TraceContextTextMapPropagator()
_OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

# Spans on Google Cloud: the Telemetry API's OTLP/HTTP endpoint (https://cloud.google.com/stackdriver/
# docs/reference/telemetry/api: POST https://telemetry.googleapis.com/v1/traces, protobuf body).
TELEMETRY_API_TRACES: Final = "https://telemetry.googleapis.com/v1/traces"
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class TelemetrySettings:
    """Where telemetry goes; read from the environment like every other setting."""

    service: str
    project: str | None = None
    gcp: bool = False  # spans to the Telemetry API (Cloud Trace), metrics to Cloud Monitoring
    gcp_traces_endpoint: str = TELEMETRY_API_TRACES  # RELAY_GCP_TRACES_ENDPOINT: loopback in tests
    otlp: bool = False  # OTEL_EXPORTER_OTLP_ENDPOINT (the exporters read the endpoint themselves)
    trace_file: Path | None = None
    metrics_file: Path | None = None
    metrics_interval_seconds: float = 60.0
    flush_each_request: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, service: str, project: str | None) -> TelemetrySettings:
        env = Env(environ)
        trace_file = env.get_optional("RELAY_TRACE_FILE")
        metrics_file = env.get_optional("RELAY_METRICS_FILE")
        return cls(
            service=env.get_str("OTEL_SERVICE_NAME", service),
            project=project,
            gcp=_flag(env, "RELAY_GCP_TELEMETRY", default=on_cloud_run(env)),
            gcp_traces_endpoint=_traces_endpoint(env),
            otlp=any(env.get_optional(name) for name in _OTLP_ENDPOINTS),
            trace_file=Path(trace_file) if trace_file else None,
            metrics_file=Path(metrics_file) if metrics_file else None,
            metrics_interval_seconds=env.get_float("RELAY_METRICS_INTERVAL_SECONDS", 60.0, minimum=1.0),
            flush_each_request=_flag(env, "RELAY_TELEMETRY_FLUSH_EACH_REQUEST", default=True),
        )


def _traces_endpoint(env: Env) -> str:
    """RELAY_GCP_TRACES_ENDPOINT: a full OTLP/HTTP traces URL. The requests carry a Google access
    token, so plain http is allowed to loopback only (a test's receiver)."""
    url = env.get_str("RELAY_GCP_TRACES_ENDPOINT", TELEMETRY_API_TRACES)
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return url
    raise ConfigError(f"RELAY_GCP_TRACES_ENDPOINT must be an https URL (or http to loopback), got {url!r}")


def _flag(env: Env, name: str, *, default: bool) -> bool:
    raw = (env.get_optional(name) or "").lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


# Every instrument the pipeline records, with its description; monitoring.tf's dashboards and alerts
# read them as workload.googleapis.com/<name>.
METRIC_DESCRIPTIONS: Final = {
    "relay.webhooks": "Webhook requests by outcome and reason",
    "relay.webhook.verification_failures": "Webhooks refused by signature or timestamp verification, by reason",
    "relay.webhook.duration": "Time to answer a webhook, by outcome",
    "relay.publish.duration": "Time until Pub/Sub confirmed a publish, by topic",
    "relay.handler.duration": "Time to handle a message or run, by handler and outcome",
    "relay.job.end_to_end_latency": "Replicate's completed_at to the job's final state, by state",
    "relay.archive.bytes": "Bytes copied into Cloud Storage",
    "relay.messages.dead_lettered": "Messages refused on their last delivery attempt, which Pub/Sub dead-letters",
    "relay.reconciler.recovered": "Jobs the reconciler brought up to date",
    "relay.job.predict_time": (
        "Replicate's predict_time of each job announced final (GPU seconds), by model, deployment, kind and state"
    ),
    "relay.jobs.not_stored": (
        "Job writes Firestore refused as Replicate sent them, made without the prediction's values"
    ),
}
METRIC_NAMES: Final = tuple(METRIC_DESCRIPTIONS)


class Metrics:
    """Every instrument the pipeline records. No-ops until `setup()` installs a MeterProvider."""

    def __init__(self, meter: metrics.Meter) -> None:
        def counter(name: str, unit: str) -> metrics.Counter:
            return meter.create_counter(name, unit, METRIC_DESCRIPTIONS[name])

        def seconds(name: str) -> metrics.Histogram:
            return meter.create_histogram(name, "s", METRIC_DESCRIPTIONS[name])

        self.webhooks = counter("relay.webhooks", "{webhook}")
        self.verification_failures = counter("relay.webhook.verification_failures", "{webhook}")
        self.webhook_duration = seconds("relay.webhook.duration")
        self.publish_duration = seconds("relay.publish.duration")
        self.handler_duration = seconds("relay.handler.duration")
        self.end_to_end = seconds("relay.job.end_to_end_latency")
        self.archive_bytes = counter("relay.archive.bytes", "By")
        self.dead_lettered = counter("relay.messages.dead_lettered", "{message}")
        self.recovered = counter("relay.reconciler.recovered", "{job}")
        self.predict_time = counter("relay.job.predict_time", "s")
        self.not_stored = counter("relay.jobs.not_stored", "{job}")


# Instruments made through the global API proxy: they start recording once setup() sets the
# MeterProvider, so modules can import METRICS before (or without) setup.
METRICS = Metrics(metrics.get_meter(SCOPE))
# One tracer for the process (a proxy until setup() installs the provider): building one per
# span would cost about a third of a webhook's telemetry.
_TRACER = trace.get_tracer(SCOPE)

# What telemetry_setup.setup() installed: how to export the spans ended so far, and whether to
# before each response. Nothing until then (the app's side, the command line).
_flush: Callable[[int], object] | None = None
_flush_each_request = False


def exporting(flush: Callable[[int], object], *, each_request: bool) -> None:
    """Called once by `telemetry_setup.setup()`: `flush(timeout_millis)` exports the spans ended so far."""
    global _flush, _flush_each_request
    _flush, _flush_each_request = flush, each_request


def flush_each_request() -> bool:
    """Whether `flush()` should run before each response (RELAY_TELEMETRY_FLUSH_EACH_REQUEST, and
    only when spans go anywhere)."""
    return _flush_each_request


def flush(timeout_millis: int = 5_000) -> None:
    """Export the spans ended so far, before a response lets Cloud Run throttle the CPU."""
    if _flush is not None:
        _flush(timeout_millis)


def tracer() -> trace.Tracer:
    return _TRACER


# --- context across processes -------------------------------------------------------------------


def extract_http(headers: Mapping[str, str]) -> otel_context.Context:
    """The caller's context from HTTP headers (traceparent or X-Cloud-Trace-Context)."""
    return propagate.extract(headers)


def inject_message(attributes: MutableMapping[str, str]) -> None:
    """Put the current span's W3C context in Pub/Sub message attributes.

    Without a recording span (telemetry not set up, as in the command line), attributes keep any
    `traceparent` they already have: a replayed message goes on in its first trace.
    """
    if trace.get_current_span().get_span_context().is_valid:
        W3C.inject(attributes)


def message_context(attributes: Mapping[str, str]) -> otel_context.Context:
    """The producer's context from message attributes; an empty context starts a new trace."""
    return W3C.extract(attributes, context=otel_context.Context())


@dataclass
class Publish:
    """One publish in progress: the attributes to send (with the trace context) and its span."""

    attributes: dict[str, str]
    span: Span

    def sent(self, message_id: str) -> None:
        self.span.set_attribute("messaging.message.id", message_id)


@contextmanager
def publish_span(topic_path: str, attributes: Mapping[str, str], size: int) -> Iterator[Publish]:
    """A PRODUCER span around one publish, and its latency by topic and outcome.

    Send `Publish.attributes`: a copy of `attributes` carrying this span's W3C context.
    """
    topic = topic_path.rsplit("/", 1)[-1]
    started = time.perf_counter()
    outcome = "error"
    with tracer().start_as_current_span(
        f"send {topic}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "gcp_pubsub",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": topic,
            "messaging.message.body.size": size,
            **_relay_attributes(attributes),
        },
    ) as span:
        publish = Publish(dict(attributes), span)
        inject_message(publish.attributes)
        try:
            yield publish
            outcome = "ok"
        finally:
            METRICS.publish_duration.record(time.perf_counter() - started, {"topic": topic, "outcome": outcome})


@contextmanager
def consumer_span(
    subscription: str,
    attributes: Mapping[str, str],
    *,
    message_id: str,
    delivery_attempt: int | None,
    request_headers: Mapping[str, str],
) -> Iterator[Span]:
    """A CONSUMER span continuing the trace of the message's producer.

    The push request's own context (Pub/Sub's delivery, or Cloud Run's front end) becomes a link,
    not the parent: the trace to continue is the webhook's.
    """
    request = trace.get_current_span(extract_http(request_headers)).get_span_context()
    links = [Link(request, {"relay.link": "push_request"})] if request.is_valid else []
    span_attributes: dict[str, Any] = {
        "messaging.system": "gcp_pubsub",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.subscription.name": subscription,
        "messaging.message.id": message_id,
        **_relay_attributes(attributes),
    }
    if delivery_attempt is not None:
        span_attributes["messaging.gcp_pubsub.message.delivery_attempt"] = delivery_attempt
    with tracer().start_as_current_span(
        f"process {subscription}",
        context=message_context(attributes),
        kind=SpanKind.CONSUMER,
        links=links,
        attributes=span_attributes,
    ) as span:
        yield span


def _relay_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    mapped = {
        PREDICTION_ID: attributes.get("prediction_id"),
        STATUS: attributes.get("status"),
        WEBHOOK_ID: attributes.get("webhook_id"),
        SOURCE: attributes.get("source"),
    }
    return {key: value for key, value in mapped.items() if value}


def new_trace() -> otel_context.Context:
    """A context without a span: a span started in it is the root of a new trace."""
    return otel_context.Context()


def mark_error(span: Span, reason: str, message: str | None = None) -> None:
    span.set_attribute("error.type", reason)
    span.set_status(Status(StatusCode.ERROR, message or reason))
