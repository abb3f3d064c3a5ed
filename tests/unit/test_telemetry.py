"""replicate_relay.telemetry and telemetry_setup: settings, trace context in messages, the span file, log fields."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path
from typing import Any, cast

import pytest
import requests
from google.auth.credentials import Credentials
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from replicate_relay import telemetry, telemetry_setup
from replicate_relay.config import ConfigError
from replicate_relay.logs import CloudLoggingFormatter

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """replicate_relay.telemetry's spans go to a real SDK provider whose finished spans the test reads."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "tracer", lambda: provider.get_tracer("relay"))
    return exporter


def test_settings_default_to_no_export_off_cloud_run() -> None:
    settings = telemetry.TelemetrySettings.from_env({}, service="receiver", project="p")
    assert (settings.service, settings.gcp, settings.otlp) == ("receiver", False, False)
    assert (settings.trace_file, settings.metrics_file) == (None, None)
    assert settings.flush_each_request


def test_settings_on_cloud_run_export_to_google_cloud_and_honour_the_standard_variables() -> None:
    environ = {
        "K_SERVICE": "relay-receiver",
        "K_REVISION": "relay-receiver-00001",
        "K_CONFIGURATION": "relay-receiver",
        "OTEL_SERVICE_NAME": "receiver-eu",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "RELAY_TRACE_FILE": "/var/relay/spans.jsonl",
        "RELAY_METRICS_INTERVAL_SECONDS": "30",
        "RELAY_TELEMETRY_FLUSH_EACH_REQUEST": "false",
    }
    settings = telemetry.TelemetrySettings.from_env(environ, service="receiver", project="p")
    assert (settings.service, settings.gcp, settings.otlp) == ("receiver-eu", True, True)
    assert settings.trace_file == Path("/var/relay/spans.jsonl")
    assert (settings.metrics_interval_seconds, settings.flush_each_request) == (30.0, False)
    off = telemetry.TelemetrySettings.from_env({**environ, "RELAY_GCP_TELEMETRY": "off"}, service="r", project=None)
    assert not off.gcp


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELAY_GCP_TELEMETRY", "maybe"),
        ("RELAY_METRICS_INTERVAL_SECONDS", "0"),
        ("RELAY_METRICS_INTERVAL_SECONDS", "x"),
    ],
)
def test_malformed_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        telemetry.TelemetrySettings.from_env({name: value}, service="receiver", project=None)


def test_publish_span_puts_its_own_context_in_a_copy_of_the_attributes(exported: InMemorySpanExporter) -> None:
    original = {"prediction_id": "p1", "status": "succeeded"}
    with (
        telemetry.tracer().start_as_current_span("request"),
        telemetry.publish_span("projects/p/topics/replicate-events", original, 10) as publish,
    ):
        publish.sent("m-1")
    assert "traceparent" not in original
    [send, request] = exported.get_finished_spans()
    context = send.get_span_context()
    # Flags 03: sampled, and the trace id is random (W3C Trace Context level 2).
    assert publish.attributes["traceparent"] == f"00-{context.trace_id:032x}-{context.span_id:016x}-03"
    assert (send.name, send.kind, send.parent.span_id) == (  # type: ignore[union-attr]
        "send replicate-events",
        SpanKind.PRODUCER,
        request.get_span_context().span_id,
    )
    assert send.attributes is not None
    assert (send.attributes["messaging.message.id"], send.attributes["relay.prediction_id"]) == ("m-1", "p1")


def test_without_a_span_a_message_keeps_the_context_it_already_carries() -> None:
    attributes = {"traceparent": TRACEPARENT}
    telemetry.inject_message(attributes)  # a replay from the command line: no telemetry set up
    assert attributes == {"traceparent": TRACEPARENT}


def test_a_consumer_span_continues_the_message_trace_and_links_the_push_request(
    exported: InMemorySpanExporter,
) -> None:
    push_request = {"traceparent": "00-11111111111111111111111111111111-2222222222222222-01"}
    with telemetry.consumer_span(
        "job-status",
        {"traceparent": TRACEPARENT, "prediction_id": "p1"},
        message_id="42",
        delivery_attempt=3,
        request_headers=push_request,
    ):
        pass
    [span] = exported.get_finished_spans()
    assert span.kind is SpanKind.CONSUMER
    assert f"{span.get_span_context().trace_id:032x}" == TRACEPARENT.split("-")[1]
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == TRACEPARENT.split("-")[2]
    [link] = span.links
    assert f"{link.context.trace_id:032x}" == "1" * 32
    assert span.attributes is not None
    assert span.attributes["relay.prediction_id"] == "p1"
    assert span.attributes["messaging.gcp_pubsub.message.delivery_attempt"] == 3


def test_message_without_context_starts_a_new_trace() -> None:
    assert not trace.get_current_span(telemetry.message_context({})).get_span_context().is_valid
    assert not trace.get_current_span(telemetry.message_context({"traceparent": "junk"})).get_span_context().is_valid


def _append_lines(path: str, worker: int, count: int) -> None:
    stream = telemetry_setup._AppendLines(Path(path))
    line = json.dumps({"worker": worker, "pad": "x" * 100_000}) + "\n"  # far past any buffer size
    for _ in range(count):
        stream.write(line)
    stream.close()


def test_processes_appending_to_one_file_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    workers = [multiprocessing.Process(target=_append_lines, args=(str(path), n, 20)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    lines = path.read_text().splitlines()
    assert len(lines) == 80
    assert sorted(json.loads(line)["worker"] for line in lines) == sorted(list(range(4)) * 20)


def test_log_lines_inside_a_span_carry_cloud_loggings_trace_fields(exported: InMemorySpanExporter) -> None:
    formatter = CloudLoggingFormatter("receiver", project="my-project")
    record = logging.LogRecord("relay", logging.INFO, __file__, 1, "webhook accepted", None, None)
    assert "logging.googleapis.com/trace" not in json.loads(formatter.format(record))
    with telemetry.tracer().start_as_current_span("request") as span:
        entry = json.loads(formatter.format(record))
    context = span.get_span_context()
    assert entry["logging.googleapis.com/trace"] == f"projects/my-project/traces/{context.trace_id:032x}"
    assert entry["logging.googleapis.com/spanId"] == f"{context.span_id:016x}"
    assert entry["logging.googleapis.com/trace_sampled"] is True


def test_control_characters_in_fields_keep_a_log_entry_on_one_line() -> None:
    formatter = CloudLoggingFormatter("receiver")
    record = logging.LogRecord("relay", logging.WARNING, __file__, 1, "rejected %s", ("a\r\nb\x1b[31m",), None)
    record.fields = {"webhook_id": "x\ny\x1b]0;owned\x07"}
    line = formatter.format(record)
    assert not {"\n", "\r", "\x1b"} & set(line)
    assert json.loads(line)["webhook_id"] == "x\ny\x1b]0;owned\x07"


def test_metric_names_are_the_ones_the_dashboards_read() -> None:
    # infra/terraform/monitoring.tf reads these as workload.googleapis.com/<name>.
    assert len(set(telemetry.METRIC_NAMES)) == len(telemetry.METRIC_NAMES) == 11
    instruments = vars(telemetry.METRICS).values()
    assert {instrument._name for instrument in instruments} == set(telemetry.METRIC_NAMES)


class TokenCredentials(Credentials):
    """Google credentials that always hold `token`: no metadata server, no token endpoint."""

    def __init__(self, token: str = "test-token", *, quota_project: str | None = None) -> None:  # noqa: S107
        super().__init__()
        self.token = token
        self._quota_project_id = quota_project
        self.refreshes = 0

    def refresh(self, request: Any) -> None:
        self.refreshes += 1

    @property
    def expired(self) -> bool:
        return False


class CapturingAdapter(requests.adapters.HTTPAdapter):
    """A transport adapter that records each request and answers 200 without touching the network."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.requests.append(request)
        response = requests.Response()
        response.status_code = 200
        response.request = request
        response._content = b""
        return response


def test_gcp_traces_endpoint_defaults_to_the_telemetry_api_and_refuses_plain_http_off_loopback() -> None:
    settings = telemetry.TelemetrySettings.from_env({}, service="receiver", project="p")
    assert (
        settings.gcp_traces_endpoint == telemetry.TELEMETRY_API_TRACES == "https://telemetry.googleapis.com/v1/traces"
    )
    local = {"RELAY_GCP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}
    assert telemetry.TelemetrySettings.from_env(local, service="r", project="p").gcp_traces_endpoint == (
        "http://127.0.0.1:4318/v1/traces"
    )
    for url in ("http://collector:4318/v1/traces", "telemetry.googleapis.com:443", "ftp://127.0.0.1/v1/traces"):
        with pytest.raises(ConfigError, match="RELAY_GCP_TRACES_ENDPOINT"):
            telemetry.TelemetrySettings.from_env({"RELAY_GCP_TRACES_ENDPOINT": url}, service="r", project="p")


def test_spans_go_to_the_telemetry_api_signed_with_the_google_credentials() -> None:
    """What the Telemetry API exporter sends, captured at the session's transport (no network)."""
    credentials = TokenCredentials("ya29.test")
    session = telemetry_setup._google_session(credentials)
    wire = CapturingAdapter()
    session.mount("https://", wire)
    exporter = telemetry_setup._telemetry_api_exporter(telemetry.TELEMETRY_API_TRACES, session)
    provider = TracerProvider(
        resource=telemetry_setup._resource(telemetry.TelemetrySettings("receiver", project="my-project"))
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("relay").start_as_current_span("POST /"):
        pass
    provider.shutdown()

    [sent] = wire.requests
    assert (sent.method, sent.url) == ("POST", "https://telemetry.googleapis.com/v1/traces")
    assert sent.headers["authorization"] == "Bearer ya29.test"
    assert sent.headers["content-type"] == "application/x-protobuf"
    assert "x-goog-user-project" not in sent.headers  # a service account bills its own project
    body = ExportTraceServiceRequest.FromString(cast(bytes, sent.body))
    [resource_spans] = body.resource_spans
    attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert attributes["gcp.project_id"] == "my-project"  # where the Telemetry API files the spans
    assert attributes["service.name"] == "receiver"
    assert [span.name for span in resource_spans.scope_spans[0].spans] == ["POST /"]


def test_credentials_with_a_quota_project_name_it_on_each_export() -> None:
    """User credentials (local ADC with a quota project) need x-goog-user-project; google-auth sends it."""
    credentials = TokenCredentials(quota_project="billing-project")
    session = telemetry_setup._google_session(credentials)
    wire = CapturingAdapter()
    session.mount("https://", wire)
    exporter = telemetry_setup._telemetry_api_exporter(telemetry.TELEMETRY_API_TRACES, session)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.get_tracer("relay").start_span("s").end()
    provider.shutdown()
    [sent] = wire.requests
    assert sent.headers["x-goog-user-project"] == "billing-project"


@pytest.mark.filterwarnings("ignore:CloudMonitoringMetricsExporter is deprecated:DeprecationWarning")
def test_on_google_cloud_spans_go_to_the_telemetry_api_and_metrics_to_cloud_monitoring(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The exporters a Cloud Run service gets, built offline (no call made). Cloud Monitoring's exporter
    (1.15) calls itself deprecated; the Telemetry API would write the metrics under other names."""
    import google.auth  # noqa: PLC0415
    from google.auth.credentials import AnonymousCredentials  # noqa: PLC0415
    from opentelemetry.exporter.cloud_monitoring import CloudMonitoringMetricsExporter  # noqa: PLC0415
    from opentelemetry.exporter.otlp.json.file import FileSpanExporter  # noqa: PLC0415

    # The metrics exporter still finds its own credentials; the span exporter gets ours.
    monkeypatch.setattr(google.auth, "default", lambda *_, **__: (AnonymousCredentials(), "my-project"))
    settings = telemetry.TelemetrySettings(
        service="receiver", project="my-project", gcp=True, otlp=True, trace_file=tmp_path / "spans.jsonl"
    )
    exporters = telemetry_setup._span_exporters(settings, TokenCredentials())
    assert [type(e) for e in exporters] == [OTLPSpanExporter, OTLPSpanExporter, FileSpanExporter]
    assert exporters[0]._endpoint == "https://telemetry.googleapis.com/v1/traces"
    assert exporters[1]._endpoint == "http://localhost:4318/v1/traces"  # the collector's (OTEL_EXPORTER_OTLP_*)
    with pytest.raises(ImportError):  # the deprecated Cloud Trace exporter is gone, not merely unused
        __import__("opentelemetry.exporter.cloud_trace")
    readers = telemetry_setup._metric_readers(settings)
    assert isinstance(readers[0]._exporter, CloudMonitoringMetricsExporter)
    assert all(reader._export_interval_millis == 60_000 for reader in readers)
    for reader in readers:
        reader.shutdown()
    for exporter in exporters:
        exporter.shutdown()


def test_without_credentials_given_setup_asks_for_application_default_ones_with_the_trace_scope(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import google.auth  # noqa: PLC0415

    asked: list[Any] = []

    def default(*, scopes: list[str]) -> tuple[Credentials, str]:
        asked.append(scopes)
        return TokenCredentials(), "adc-project"

    monkeypatch.setattr(google.auth, "default", default)
    _, project = telemetry_setup._google_credentials(None)
    assert (asked, project) == ([["https://www.googleapis.com/auth/trace.append"]], "adc-project")
    given = TokenCredentials()
    assert telemetry_setup._google_credentials(given) == (given, None)
