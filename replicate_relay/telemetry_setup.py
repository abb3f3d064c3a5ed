"""OpenTelemetry's SDK for a serving process: providers, exporters, propagators, instrumentations.

Only the Cloud Run services (and the dev stack running them) import this module: it needs the
`services` extra (the SDK, the exporters, the instrumentations). The core and the app's side
record through `replicate_relay.telemetry`, which needs only `opentelemetry-api`: its tracer and
instruments are no-ops until `setup()` installs the providers here.

Call `setup()` in each serving process before its first span (the deployables call it at the start
of every request; after the first it returns at once); then `telemetry.flush()` exports what the
providers installed here hold.

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
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, cast

from opentelemetry import metrics, propagate, trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from replicate_relay import telemetry
from replicate_relay.telemetry import TelemetrySettings

if TYPE_CHECKING:
    import requests
    from google.auth.credentials import Credentials
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

# The narrower of the two scopes the Telemetry API's endpoint accepts (the other is cloud-platform).
# Cloud Run's metadata server ignores requested scopes; a key file or impersonation honours them.
TRACE_APPEND_SCOPE: Final = "https://www.googleapis.com/auth/trace.append"

_lock = threading.Lock()
_active: _Telemetry | None = None


@dataclass
class _Telemetry:
    settings: TelemetrySettings
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

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
        propagate.set_global_textmap(CompositePropagator([_cloud_trace_propagator(), telemetry.W3C]))
        _instrument(instrument)
        _active = _Telemetry(settings, tracer_provider, meter_provider)
        telemetry.exporting(
            tracer_provider.force_flush, each_request=settings.flush_each_request and bool(span_exporters)
        )
        atexit.register(_active.shutdown)  # gunicorn and uvicorn workers exit normally on SIGTERM


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


# Spans on Google Cloud go over OTLP/HTTP (protobuf) to the Telemetry API: no gRPC channel to keep
# from crossing gunicorn's fork, no new dependency. The session is google-auth's AuthorizedSession,
# which signs and refreshes the token itself and takes injected credentials in tests. Spans are
# filed under the `gcp.project_id` resource attribute; writing needs roles/telemetry.tracesWriter
# (infra/terraform/iam.tf) and the Cloud Trace API enabled. Metrics stay on Cloud Monitoring's
# exporter: the dashboards and alerts (infra/terraform/monitoring.tf) read
# workload.googleapis.com/relay.* on generic_task, which the Telemetry API's metrics do not write.


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
