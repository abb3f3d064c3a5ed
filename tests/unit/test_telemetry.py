"""relay.telemetry: settings, trace context in message attributes, the shared span file, log fields."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from relay import telemetry
from relay.config import ConfigError
from relay.logs import CloudLoggingFormatter

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """relay.telemetry's spans go to a real SDK provider whose finished spans the test reads."""
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
    stream = telemetry._AppendLines(Path(path))
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
    assert len(set(telemetry.METRIC_NAMES)) == len(telemetry.METRIC_NAMES) == 9
    instruments = vars(telemetry.METRICS).values()
    assert {instrument._name for instrument in instruments} == set(telemetry.METRIC_NAMES)


# The Google exporters (1.15) call themselves deprecated in favour of OTLP to Google's endpoint
# (README, "What is not built yet"); the issue names them, and they work.
@pytest.mark.filterwarnings("ignore:CloudTraceSpanExporter is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:CloudMonitoringMetricsExporter is deprecated:DeprecationWarning")
def test_on_google_cloud_spans_go_to_cloud_trace_and_metrics_to_cloud_monitoring(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The exporters a Cloud Run service gets, built offline (anonymous credentials, no call made)."""
    import google.auth  # noqa: PLC0415
    from google.auth.credentials import AnonymousCredentials  # noqa: PLC0415
    from opentelemetry.exporter.cloud_monitoring import CloudMonitoringMetricsExporter  # noqa: PLC0415
    from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter  # noqa: PLC0415
    from opentelemetry.exporter.otlp.json.file import FileSpanExporter  # noqa: PLC0415
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

    monkeypatch.setattr(google.auth, "default", lambda *_, **__: (AnonymousCredentials(), "my-project"))
    settings = telemetry.TelemetrySettings(
        service="receiver", project="my-project", gcp=True, otlp=True, trace_file=tmp_path / "spans.jsonl"
    )
    exporters = telemetry._span_exporters(settings)
    assert [type(e) for e in exporters] == [CloudTraceSpanExporter, OTLPSpanExporter, FileSpanExporter]
    assert exporters[0].project_id == "my-project"
    readers = telemetry._metric_readers(settings)
    assert isinstance(readers[0]._exporter, CloudMonitoringMetricsExporter)
    assert all(reader._export_interval_millis == 60_000 for reader in readers)
    for reader in readers:
        reader.shutdown()
