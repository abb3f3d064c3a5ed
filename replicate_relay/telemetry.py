"""OpenTelemetry for every process: traces, metrics and the context that ties log lines to them.

Call `setup()` in each serving process before its first span (the deployables call it at the start
of every request; after the first it returns at once). Then:

- spans: `tracer()`; a webhook is one trace from the receiver's server span, through the publish
  span (W3C `traceparent` in the message attributes, see `inject_message`), to the handlers'
  consumer spans (`consumer_span`) and what they call;
- metrics: the instruments on `METRICS` (names are part of the dashboards' and alerts' contract:
  infra/terraform/monitoring.tf reads them as `workload.googleapis.com/<name>`);
- flushing: `flush()` before a response is returned (Cloud Run may throttle the CPU once it is),
  and at exit.

Exporters, any combination: Google Cloud (`RELAY_GCP_TELEMETRY`, on by default on Cloud Run: spans
over OTLP/HTTP to the Telemetry API, `telemetry.googleapis.com`, with Google credentials, which
stores them in Cloud Trace; metrics to Cloud Monitoring), OTLP over HTTP to a collector
(`OTEL_EXPORTER_OTLP_ENDPOINT`), and OTLP/JSON lines in local files that every dev-stack process
appends to (`RELAY_TRACE_FILE`, `RELAY_METRICS_FILE`), which `relay trace` reads.
Sampling follows OpenTelemetry's own variables (`OTEL_TRACES_SAMPLER`, default parent-based
always-on).

Library instrumentations come from OpenTelemetry where they exist: gRPC (only Firestore's calls:
the exporters and Pub/Sub's batch threads speak gRPC too, and tracing those would make spans of
span exports and orphan traces), requests (Cloud Storage's uploads) and httpx (Replicate's API and
output downloads); google-cloud-storage traces its own operations when
`ENABLE_GCS_PYTHON_CLIENT_OTEL_TRACES` is set before it is imported (with
`DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA` too: otherwise it fetches bucket metadata for span
attributes on background threads, which needs storage.buckets.get and starts traces of its own).
Written by hand, because no instrumentation can know them: the receiver's server span
(functions-framework builds its Starlette app after loading our module, so there is no hook for the
ASGI middleware), publish spans (the receiver's publisher is our own grpc.aio code), consumer spans
(their parent is the message's context, not the push request's), Firestore transactions, archive
files and the reconciler's runs.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from replicate_relay.config import ConfigError, Env, on_cloud_run

if TYPE_CHECKING:
    import requests
    from google.auth.credentials import Credentials
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

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

_W3C = TraceContextTextMapPropagator()
_OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

# Spans on Google Cloud: the Telemetry API's OTLP/HTTP endpoint (https://cloud.google.com/stackdriver/
# docs/reference/telemetry/api: POST https://telemetry.googleapis.com/v1/traces, protobuf body).
TELEMETRY_API_TRACES: Final = "https://telemetry.googleapis.com/v1/traces"
# The narrower of the two scopes the endpoint accepts (the other is cloud-platform). Cloud Run's
# metadata server ignores requested scopes; a key file or impersonation honours them.
TRACE_APPEND_SCOPE: Final = "https://www.googleapis.com/auth/trace.append"
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


class Metrics:
    """Every instrument the pipeline records. No-ops until `setup()` installs a MeterProvider."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.webhooks = meter.create_counter(
            "relay.webhooks", unit="{webhook}", description="Webhook requests by outcome and reason"
        )
        self.verification_failures = meter.create_counter(
            "relay.webhook.verification_failures",
            unit="{webhook}",
            description="Webhooks refused by signature or timestamp verification, by reason",
        )
        self.webhook_duration = meter.create_histogram(
            "relay.webhook.duration", unit="s", description="Time to answer a webhook, by outcome"
        )
        self.publish_duration = meter.create_histogram(
            "relay.publish.duration", unit="s", description="Time until Pub/Sub confirmed a publish, by topic"
        )
        self.handler_duration = meter.create_histogram(
            "relay.handler.duration", unit="s", description="Time to handle a message or run, by handler and outcome"
        )
        self.end_to_end = meter.create_histogram(
            "relay.job.end_to_end_latency",
            unit="s",
            description="Replicate's completed_at to the job's final state, by state",
        )
        self.archive_bytes = meter.create_counter(
            "relay.archive.bytes", unit="By", description="Bytes copied into Cloud Storage"
        )
        self.dead_lettered = meter.create_counter(
            "relay.messages.dead_lettered",
            unit="{message}",
            description="Messages refused on their last delivery attempt, which Pub/Sub dead-letters",
        )
        self.recovered = meter.create_counter(
            "relay.reconciler.recovered", unit="{job}", description="Jobs the reconciler brought up to date"
        )
        self.not_stored = meter.create_counter(
            "relay.jobs.not_stored",
            unit="{job}",
            description="Job writes Firestore refused as Replicate sent them, made without the prediction's values",
        )


METRIC_NAMES: Final = (
    "relay.webhooks",
    "relay.webhook.verification_failures",
    "relay.webhook.duration",
    "relay.publish.duration",
    "relay.handler.duration",
    "relay.job.end_to_end_latency",
    "relay.archive.bytes",
    "relay.messages.dead_lettered",
    "relay.reconciler.recovered",
    "relay.jobs.not_stored",
)

# Instruments made through the global API proxy: they start recording once setup() sets the
# MeterProvider, so modules can import METRICS before (or without) setup.
METRICS = Metrics(metrics.get_meter(SCOPE))
# One tracer for the process (a proxy until setup() installs the provider): building one per
# span would cost about a third of a webhook's telemetry.
_TRACER = trace.get_tracer(SCOPE)

_lock = threading.Lock()
_active: _Telemetry | None = None


@dataclass
class _Telemetry:
    settings: TelemetrySettings
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporting: bool  # at least one span exporter is configured

    def flush(self, timeout_millis: int) -> None:
        self.tracer_provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def setup(
    settings: TelemetrySettings, *, instrument: tuple[str, ...] = (), credentials: Credentials | None = None
) -> None:
    """Install the providers, exporters and propagators once per process; later calls do nothing.

    Call it in the serving process, not at import: functions-framework imports the module in
    gunicorn's master before forking the worker, and the Cloud Monitoring exporter's gRPC channel
    must not cross a fork (nor should the span exporter's HTTP connections and token). The
    deployables call it at the start of each request (cheap after the first).

    `instrument` names the library instrumentations this process wants: "firestore" (gRPC),
    "requests" (Cloud Storage) and "httpx" (Replicate, downloads). `credentials` sign the span
    exports to the Telemetry API (with `settings.gcp`); application-default credentials when None.
    """
    global _active
    if _active is not None:  # the fast path: every request calls this
        return
    with _lock:
        if _active is not None:
            return
        if settings.gcp:
            credentials, project = _google_credentials(credentials)
            if not settings.project:  # the Telemetry API files spans under the gcp.project_id attribute
                settings = replace(settings, project=project)
        resource = _resource(settings)
        tracer_provider = TracerProvider(resource=resource)
        span_exporters = _span_exporters(settings, credentials)
        for exporter in span_exporters:
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        meter_provider = MeterProvider(resource=resource, metric_readers=_metric_readers(settings))
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        # Extract: Google's X-Cloud-Trace-Context, then W3C traceparent (which wins when both
        # came). Inject: both, so Google's front ends and other services keep the trace.
        propagate.set_global_textmap(CompositePropagator([_cloud_trace_propagator(), _W3C]))
        _instrument(instrument)
        _active = _Telemetry(settings, tracer_provider, meter_provider, exporting=bool(span_exporters))
        atexit.register(_active.shutdown)  # gunicorn and uvicorn workers exit normally on SIGTERM


def flush_each_request() -> bool:
    """Whether `flush()` should run before each response (RELAY_TELEMETRY_FLUSH_EACH_REQUEST, and
    only when spans go anywhere)."""
    return _active is not None and _active.settings.flush_each_request and _active.exporting


def flush(timeout_millis: int = 5_000) -> None:
    """Export the spans ended so far, before a response lets Cloud Run throttle the CPU."""
    active = _active
    if active is not None:
        active.flush(timeout_millis)


def tracer() -> trace.Tracer:
    return _TRACER


def _resource(settings: TelemetrySettings) -> Resource:
    attributes: dict[str, Any] = {SERVICE_NAME: settings.service, "service.namespace": "replicate-relay"}
    if settings.project:
        attributes["gcp.project_id"] = settings.project
    resource = Resource.create(attributes)
    if settings.gcp:
        from opentelemetry.resourcedetector.gcp_resource_detector import (  # noqa: PLC0415 - asks the metadata server
            GoogleCloudResourceDetector,
        )

        resource = GoogleCloudResourceDetector(raise_on_error=False).detect().merge(resource)
    return resource


def _span_exporters(settings: TelemetrySettings, credentials: Credentials | None = None) -> list[Any]:
    exporters: list[Any] = []
    if settings.gcp:
        if credentials is None:
            credentials, _ = _google_credentials(None)
        exporters.append(_telemetry_api_exporter(settings.gcp_traces_endpoint, _google_session(credentials)))
    if settings.otlp:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        exporters.append(OTLPSpanExporter())
    if settings.trace_file:
        exporters.append(_file_exporter("span", settings.trace_file))
    return exporters


# Spans on Google Cloud, and why this way:
# - OTLP/HTTP with protobuf (the exporter already used for collectors), not OTLP/gRPC to
#   telemetry.googleapis.com:443: both are documented, but HTTP adds no gRPC channel (no channel to
#   keep from crossing gunicorn's fork, no gRPC instrumentation to filter out) and no dependency.
#   The exporter and its session are made in setup(), in the serving worker. Like any OTLP
#   exporter it still reads OTEL_EXPORTER_OTLP_[TRACES_]HEADERS, _TIMEOUT and _COMPRESSION: headers
#   meant for a collector (OTEL_EXPORTER_OTLP_ENDPOINT) would reach Google too.
# - Credentials from google-auth directly (pinned already): an AuthorizedSession as the exporter's
#   session adds `authorization: Bearer <token>` to each export and refreshes the token itself
#   (on expiry, and once on a 401). opentelemetry-exporter-credential-provider-gcp 0.66b1 resolves
#   against our pins, but it is these same two lines (AuthorizedSession over google.auth.default(),
#   without scopes) behind an entry point for auto-instrumentation's
#   OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER; we build the exporter ourselves and
#   want the credentials injectable (tests), so it would add a package for nothing.
# - Project: the Telemetry API files spans under the `gcp.project_id` resource attribute
#   (`_resource`). No x-goog-user-project header of our own: the Telemetry API is client-billed, and
#   for a service account (Cloud Run) the quota project is the account's own project, this one, so
#   no serviceusage.services.use grant is needed. google-auth still sends the header when the
#   credentials carry a quota project (user ADC after `gcloud auth application-default
#   set-quota-project`), which is what user credentials need.
# - Writing needs telemetry.traces.write (roles/telemetry.tracesWriter, infra/terraform/iam.tf), the
#   telemetry.googleapis.com API enabled, and Cloud Trace's API left enabled (Google discards
#   Telemetry API spans for projects without it).
#
# Metrics stay on Cloud Monitoring's own exporter. The Telemetry API takes OTLP metrics too
# (POST /v1/metrics), but it writes every point the way Managed Service for Prometheus does:
# monitored resource prometheus_target, Prometheus-format prometheus.googleapis.com/... metric
# types (https://docs.cloud.google.com/stackdriver/docs/reference/telemetry/v1.metrics). The
# dashboard and alerts (infra/terraform/monitoring.tf) read workload.googleapis.com/relay.* on
# generic_task, as this exporter writes them; moving would mean rewriting every query.


def _google_credentials(credentials: Credentials | None) -> tuple[Credentials, str | None]:
    """`credentials` (with no project of their own), else application-default ones and their project."""
    if credentials is not None:
        return credentials, None
    import google.auth  # noqa: PLC0415

    found, project = google.auth.default(scopes=[TRACE_APPEND_SCOPE])
    return found, project


def _google_session(credentials: Credentials) -> requests.Session:
    """A requests session that signs every request with `credentials` (refreshing them as needed)."""
    from google.auth.transport.requests import AuthorizedSession  # noqa: PLC0415

    return AuthorizedSession(credentials)  # type: ignore[no-untyped-call]


def _telemetry_api_exporter(endpoint: str, session: requests.Session) -> OTLPSpanExporter:
    """OpenTelemetry's OTLP/HTTP (protobuf) span exporter, sending through `session`."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

    return OTLPSpanExporter(endpoint=endpoint, session=session)


def _metric_readers(settings: TelemetrySettings) -> list[MetricReader]:
    exporters: list[Any] = []
    if settings.gcp:
        from opentelemetry.exporter.cloud_monitoring import CloudMonitoringMetricsExporter  # noqa: PLC0415

        exporters.append(CloudMonitoringMetricsExporter(project_id=settings.project))
    if settings.otlp:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: PLC0415

        exporters.append(OTLPMetricExporter())
    if settings.metrics_file:
        exporters.append(_file_exporter("metric", settings.metrics_file))
    interval = int(settings.metrics_interval_seconds * 1000)
    return [PeriodicExportingMetricReader(exporter, export_interval_millis=interval) for exporter in exporters]


def _file_exporter(kind: str, path: Path) -> Any:
    """OpenTelemetry's OTLP/JSON-lines file exporter, on a stream that appends each line whole."""
    from opentelemetry.exporter.otlp.json.file import FileMetricExporter, FileSpanExporter  # noqa: PLC0415

    path.parent.mkdir(parents=True, exist_ok=True)
    stream = cast(IO[str], _AppendLines(path))
    return FileSpanExporter(stream=stream) if kind == "span" else FileMetricExporter(stream=stream)


class _AppendLines:
    """A text stream whose every `write` is one O_APPEND write(2): lines from several processes
    appending to the same file never interleave (a buffered file could split a long line)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.closed = False

    def write(self, text: str) -> int:
        data = text.encode("utf-8")
        written = 0
        while written < len(data):  # a regular file takes it whole; loop only for the odd short write
            written += os.write(self._fd, data[written:])
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)


def _cloud_trace_propagator() -> Any:
    from opentelemetry.propagators.cloud_trace_propagator import CloudTraceFormatPropagator  # noqa: PLC0415

    return CloudTraceFormatPropagator()


def _instrument(names: tuple[str, ...]) -> None:
    if "firestore" in names:
        from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient, filters  # noqa: PLC0415

        firestore_only = filters.service_prefix("google.firestore")
        GrpcInstrumentorClient(filter_=firestore_only).instrument()  # type: ignore[no-untyped-call]
    if "requests" in names:
        from opentelemetry.instrumentation.requests import RequestsInstrumentor  # noqa: PLC0415

        RequestsInstrumentor().instrument()
    if "httpx" in names:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: PLC0415

        HTTPXClientInstrumentor().instrument()


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
        _W3C.inject(attributes)


def message_context(attributes: Mapping[str, str]) -> otel_context.Context:
    """The producer's context from message attributes; an empty context starts a new trace."""
    return _W3C.extract(attributes, context=otel_context.Context())


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
