"""Spans on Google Cloud: a real `telemetry_setup.setup()` exports them over OTLP/HTTP to the Telemetry API's
path with a Google access token, here to a receiver on loopback standing in for telemetry.googleapis.com.

Telemetry is set up once per process, so the exporting process is a child of the test's. Nothing leaves
loopback: the spans go to the receiver (RELAY_GCP_TRACES_ENDPOINT), the credentials are fixed (no token
endpoint), the GCP resource detector is told there is no metadata server, and Cloud Monitoring's exporter
is built from an offline ADC file and has nothing to export before the child exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

TOKEN = "ya29.loopback-test-token"
PROJECT = "relay-otlp-test"

CHILD = f"""
import os
import sys

from google.auth.credentials import Credentials
from opentelemetry.resourcedetector.gcp_resource_detector import _metadata
from opentelemetry.trace import SpanKind

from replicate_relay import telemetry, telemetry_setup

_metadata.is_available = lambda: False  # not on Google Cloud: no metadata server to ask


class FixedToken(Credentials):
    def __init__(self):
        super().__init__()
        self.token = {TOKEN!r}

    def refresh(self, request):
        raise AssertionError("a fixed token is never refreshed")

    @property
    def expired(self):
        return False


settings = telemetry.TelemetrySettings.from_env(os.environ, service="receiver", project={PROJECT!r})
assert settings.gcp and settings.gcp_traces_endpoint.startswith("http://127.0.0.1:"), settings
telemetry_setup.setup(settings, credentials=FixedToken())
with telemetry.tracer().start_as_current_span("POST /", kind=SpanKind.SERVER):
    with telemetry.tracer().start_as_current_span("send replicate-events", kind=SpanKind.PRODUCER):
        pass
telemetry.flush()
sys.stdout.flush()
os._exit(0)  # no exit-time exports: Cloud Monitoring's exporter must not try the network
"""


@dataclass
class Export:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver(ThreadingHTTPServer):
    exports: list[Export]


class OTLPHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.server.exports.append(Export(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", 0), OTLPHandler)
    server.exports = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _offline_adc(directory: Path) -> Path:
    """Application-default credentials that load without the network (used by Cloud Monitoring's
    exporter only; a refresh would need the network, and nothing here asks for one)."""
    path = directory / "adc.json"
    path.write_text(
        json.dumps({"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r"})
    )
    return path


def _child_env(receiver: Receiver, tmp_path: Path) -> dict[str, str]:
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "RELAY_", "GOOGLE_", "GCE_", "K_", "CLOUDSDK_"))
    }
    port = receiver.server_address[1]
    return {
        **inherited,
        "RELAY_GCP_TELEMETRY": "true",
        "RELAY_GCP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}/v1/traces",
        "OTEL_SERVICE_NAME": "receiver",
        "GOOGLE_APPLICATION_CREDENTIALS": str(_offline_adc(tmp_path)),
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),  # no gcloud configuration of the developer's
        "NO_PROXY": "127.0.0.1",
        "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::UserWarning",
    }


def _attributes(pairs: list[KeyValue]) -> dict[str, str]:
    return {pair.key: pair.value.string_value for pair in pairs}


def test_setup_on_google_cloud_sends_spans_to_the_telemetry_api_with_a_bearer_token(
    receiver: Receiver, tmp_path: Path
) -> None:
    child = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", CHILD],
        env=_child_env(receiver, tmp_path),
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr

    assert receiver.exports, f"nothing was exported; the child said: {child.stderr}"
    spans = []
    for export in receiver.exports:
        assert export.path == "/v1/traces"
        assert export.headers["authorization"] == f"Bearer {TOKEN}"
        assert export.headers["content-type"] == "application/x-protobuf"
        # A service account's own project pays for its calls: no quota project of ours.
        assert "x-goog-user-project" not in export.headers
        request = ExportTraceServiceRequest.FromString(export.body)
        for resource_spans in request.resource_spans:
            resource = _attributes(list(resource_spans.resource.attributes))
            assert resource["gcp.project_id"] == PROJECT  # where the Telemetry API files the spans
            assert resource["service.name"] == "receiver"
            assert resource["service.namespace"] == "replicate-relay"
            spans += [span for scope in resource_spans.scope_spans for span in scope.spans]
    by_name = {span.name: span for span in spans}
    assert set(by_name) == {"POST /", "send replicate-events"}
    server, send = by_name["POST /"], by_name["send replicate-events"]
    assert send.trace_id == server.trace_id
    assert send.parent_span_id == server.span_id
