"""`relay trace`: reading the span file, finding traces, the waterfall, the page, Cloud Trace.

Fixtures (tests/unit/fixtures/):

- `trace_spans.jsonl` is written by OpenTelemetry's own SDK and FileSpanExporter (`build_span_file` below),
  with fixed ids and times, as four dev-stack processes (receiver, job-status, archive-outputs, reconciler)
  append it: two traces of prediction PREDICTION (its `starting` webhook, and the reconciler's recovery of
  its lost final webhook, linked to the `reconcile run` trace), a retried archive attempt that failed, a
  torn line (which held a `firestore transaction` span, so its gRPC child is an orphan) and a trace of
  another prediction.
- `trace_waterfall.txt` is the expected text output (no colour, 100 columns) for PREDICTION.

When the output or the exporter's format changes on purpose, regenerate both and review the diff:

    UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/unit/test_traceview.py
"""

from __future__ import annotations

import difflib
import io
import json
import os
import random
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import google.auth
import pytest
from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import trace_v1
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.json.file import FileSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from replicate_relay.cli import main
from replicate_relay.traceview import gcp
from replicate_relay.traceview.lookup import find_in_file
from replicate_relay.traceview.model import SpanKind as Kind
from replicate_relay.traceview.model import StatusCode as Code
from replicate_relay.traceview.page import render_html
from replicate_relay.traceview.spanfile import ReadStats, read_spans
from replicate_relay.traceview.text import render_text

FIXTURES = Path(__file__).parent / "fixtures"
SPAN_FILE = FIXTURES / "trace_spans.jsonl"
SNAPSHOT = FIXTURES / "trace_waterfall.txt"
UPDATE = os.environ.get("UPDATE_SNAPSHOTS") == "1"

PREDICTION = "q3ad6ve2ydrj00cm7qfvd3hxwm"
JOB = "7f3c9a2e4b1d4e5f8a6b0c2d9e1f3a47"  # a uuid4 hex: looks exactly like a trace id
OTHER_PREDICTION = "zz8m1xw0gdrj00cm7qfvbtr2ka"
T0 = 1_772_442_845_250_000_000  # 2026-03-02 09:14:05.250 UTC
BUCKET = "gs://local-project-relay-outputs"


# --- the fixture, written by OpenTelemetry itself ------------------------------------------------------------


class _FixedIds(IdGenerator):
    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._random.getrandbits(64) | 1

    def generate_trace_id(self) -> int:
        return self._random.getrandbits(128) | 1


class _Collect(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


class _Process:
    """One dev-stack process: its own resource, ids and exporter, appending whole batches to the file."""

    def __init__(self, service: str, seed: int) -> None:
        resource = Resource({"service.name": service, "service.namespace": "replicate-relay"})
        self.finished = _Collect()
        self.provider = TracerProvider(resource=resource, id_generator=_FixedIds(seed))
        self.provider.add_span_processor(SimpleSpanProcessor(self.finished))
        self.tracer = self.provider.get_tracer("relay")

    def span(
        self,
        name: str,
        start_ms: float,
        end_ms: float,
        *,
        parent: trace.Span | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: dict[str, Any] | None = None,
        links: Sequence[Link] = (),
        error: str | None = None,
        base: int = T0,
    ) -> trace.Span:
        context = trace.set_span_in_context(parent) if parent else otel_context.Context()
        span = self.tracer.start_span(
            name, context=context, kind=kind, attributes=attributes, links=links, start_time=_ns(base, start_ms)
        )
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=_ns(base, end_ms))
        return span

    def batch(self, *names: str) -> list[ReadableSpan]:
        """The finished spans called `names` (in that order), as the processor would flush them together."""
        chosen = [next(span for span in self.finished.spans if span.name == name) for name in names]
        self.finished.spans = [span for span in self.finished.spans if span not in chosen]
        return chosen


def _ns(base: int, ms: float) -> int:
    return base + round(ms * 1_000_000)


def _relay(prediction: str, status: str, webhook_id: str, **more: Any) -> dict[str, Any]:
    return {
        "relay.prediction_id": prediction,
        "relay.status": status,
        "relay.webhook_id": webhook_id,
        **more,
    }


def build_span_file(path: Path) -> None:
    """Write the fixture span file: see the module docstring for the story it tells."""
    receiver = _Process("receiver", 1)
    job_status = _Process("job-status", 2)
    archive = _Process("archive-outputs", 3)
    reconciler = _Process("reconciler", 4)
    lines: list[str] = []

    def append(exporter_spans: list[ReadableSpan]) -> None:
        stream = io.StringIO()
        FileSpanExporter(stream=stream).export(exporter_spans)
        lines.append(stream.getvalue())

    # Trace A: Replicate's `starting` webhook.
    starting = _relay(PREDICTION, "starting", "msg_2Xk9starting")
    post = receiver.span(
        "POST /",
        0,
        6.8,
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "POST",
            "url.path": "/",
            **starting,
            "http.response.status_code": 200,
            "relay.outcome": "accepted",
        },
    )
    send = receiver.span(
        "send replicate-events",
        1.9,
        5.9,
        parent=post,
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "gcp_pubsub", **starting, "messaging.message.id": "1041"},
    )
    consumed = {"messaging.system": "gcp_pubsub", "messaging.message.id": "1041", **starting}
    archive.span(
        "process archive-outputs",
        13.1,
        15.3,
        parent=send,
        kind=SpanKind.CONSUMER,
        attributes={**consumed, "relay.outcome": "ignored"},
    )
    process = job_status.span(
        "process job-status",
        14.0,
        41.7,
        parent=send,
        kind=SpanKind.CONSUMER,
        attributes={**consumed, "relay.job_id": JOB, "relay.outcome": "applied"},
    )
    transaction = job_status.span("firestore transaction apply_event", 15.2, 40.3, parent=process, kind=SpanKind.CLIENT)
    job_status.span(
        "/google.firestore.v1.Firestore/Commit",
        33.0,
        39.8,
        parent=transaction,
        kind=SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.method": "Commit", "rpc.grpc.status_code": 0},
    )
    append(receiver.batch("send replicate-events", "POST /"))
    append(archive.batch("process archive-outputs"))
    append(job_status.batch("/google.firestore.v1.Firestore/Commit"))
    torn = job_status.batch("firestore transaction apply_event")
    append(torn)
    lines[-1] = lines[-1][: len(lines[-1]) * 3 // 5] + "\n"  # the process died mid-write
    append(job_status.batch("process job-status"))

    # Another prediction's webhook, 0.9 s later: must never show up.
    other = _relay(OTHER_PREDICTION, "processing", "msg_2Xk9other")
    other_post = receiver.span("POST /", 900, 903.1, kind=SpanKind.SERVER, attributes=other)
    receiver.span("send replicate-events", 900.8, 902.6, parent=other_post, kind=SpanKind.PRODUCER, attributes=other)
    append(receiver.batch("send replicate-events", "POST /"))

    # A minute later the reconciler finds the job quiet, asks Replicate, and publishes what it knows in a
    # trace of its own, linked both ways with the run's trace.
    r0 = T0 + 61_000_000_000
    run = reconciler.tracer.start_span("reconcile run", context=otel_context.Context(), start_time=r0)
    reconciler.span("/google.firestore.v1.Firestore/RunQuery", 3, 18, parent=run, kind=SpanKind.CLIENT, base=r0)
    reconciler.span(
        "GET",
        21,
        180,
        parent=run,
        kind=SpanKind.CLIENT,
        base=r0,
        attributes={
            "http.request.method": "GET",
            "url.full": f"https://api.replicate.com/v1/predictions/{PREDICTION}",
            "http.response.status_code": 200,
        },
    )
    recovered = _relay(PREDICTION, "succeeded", "relay-reconcile-5d1c", **{"relay.source": "reconciler"})
    recover = reconciler.tracer.start_span(
        "recover prediction",
        context=otel_context.Context(),
        links=[Link(run.get_span_context(), {"relay.link": "reconcile_run"})],
        attributes={**recovered, "relay.job_id": JOB},
        start_time=_ns(r0, 185),
    )
    run.add_link(recover.get_span_context(), {"relay.link": "recovered_prediction"})
    send = reconciler.span(
        "send replicate-events",
        187,
        212,
        parent=recover,
        kind=SpanKind.PRODUCER,
        base=r0,
        attributes={"messaging.system": "gcp_pubsub", **recovered, "messaging.message.id": "1057"},
    )
    recover.end(end_time=_ns(r0, 214))
    run.set_attributes({"relay.reconcile.checked": 3, "relay.reconcile.recovered": 1})
    run.end(end_time=_ns(r0, 412))
    append(reconciler.batch("send replicate-events", "recover prediction"))
    append(reconciler.batch("/google.firestore.v1.Firestore/RunQuery", "GET", "reconcile run"))

    consumed = {"messaging.system": "gcp_pubsub", "messaging.message.id": "1057", **recovered, "relay.job_id": JOB}
    output_url = f"https://replicate.delivery/xezq/{PREDICTION}/out-0.png"
    download = {"http.request.method": "GET", "url.full": output_url, "http.response.status_code": 200}
    upload = {"http.request.method": "POST", "server.address": "storage.googleapis.com"}

    def archive_delivery(attempt: int, outcome: str, at: Sequence[int], uploaded: int) -> tuple[trace.Span, trace.Span]:
        """An archive-outputs delivery up to its upload: its process span and its archive-file span, both
        open. `at`: the process's start, the apply_event transaction's start and end, the copy's start,
        the GET's start and end, the POST's start and end (ms after r0)."""
        process = archive.tracer.start_span(
            "process archive-outputs",
            context=trace.set_span_in_context(send),
            kind=SpanKind.CONSUMER,
            attributes={**consumed, "messaging.gcp_pubsub.message.delivery_attempt": attempt, "relay.outcome": outcome},
            start_time=_ns(r0, at[0]),
        )
        archive.span("firestore transaction apply_event", at[1], at[2], parent=process, kind=SpanKind.CLIENT, base=r0)
        copy = archive.tracer.start_span(
            "archive file",
            context=trace.set_span_in_context(process),
            attributes={"relay.output.index": 0, "relay.output.url": output_url},
            start_time=_ns(r0, at[3]),
        )
        archive.span("GET", at[4], at[5], parent=copy, kind=SpanKind.CLIENT, base=r0, attributes=download)
        failed = "503 Service Unavailable" if uploaded == 503 else None
        posted = {**upload, "http.response.status_code": uploaded}
        archive.span("POST", at[6], at[7], parent=copy, kind=SpanKind.CLIENT, base=r0, attributes=posted, error=failed)
        return process, copy

    # archive-outputs, first delivery: Cloud Storage answers 503, the message is retried.
    first, copy = archive_delivery(1, "retry", [228, 229, 241, 243, 244, 530, 532, 1634], uploaded=503)
    copy.set_status(Status(StatusCode.ERROR, "upload failed: 503 Service Unavailable"))
    copy.end(end_time=_ns(r0, 1636))
    first.add_event(
        "exception",
        {"exception.type": "google.api_core.exceptions.ServiceUnavailable", "exception.message": "503 upload"},
        timestamp=_ns(r0, 1638),
    )
    first.set_status(Status(StatusCode.ERROR, "unavailable: Cloud Storage answered 503"))
    first.end(end_time=_ns(r0, 1640))
    append(archive.batch("firestore transaction apply_event", "GET", "POST", "archive file", "process archive-outputs"))

    # job-status applies the recovered `succeeded` event.
    process = job_status.span(
        "process job-status",
        230,
        262,
        parent=send,
        kind=SpanKind.CONSUMER,
        base=r0,
        attributes={**consumed, "relay.outcome": "applied"},
    )
    transaction = job_status.span(
        "firestore transaction apply_event", 231, 260, parent=process, kind=SpanKind.CLIENT, base=r0
    )
    job_status.span(
        "/google.firestore.v1.Firestore/Commit",
        250,
        259,
        parent=transaction,
        kind=SpanKind.CLIENT,
        base=r0,
        attributes={"rpc.system": "grpc", "rpc.method": "Commit", "rpc.grpc.status_code": 0},
    )
    append(
        job_status.batch(
            "/google.firestore.v1.Firestore/Commit", "firestore transaction apply_event", "process job-status"
        )
    )

    # archive-outputs, second delivery after Pub/Sub's 10 s backoff: archived.
    at = [11_650, 11_652, 11_668, 11_670, 11_672, 11_905, 11_907, 12_390]
    second, copy = archive_delivery(2, "applied", at, uploaded=200)
    copy.set_attributes(
        {"relay.output.gs_uri": f"{BUCKET}/predictions/{PREDICTION}/0-out-0.png", "relay.output.size": 48213}
    )
    copy.end(end_time=_ns(r0, 12_395))
    archive.span("firestore transaction record_outputs", 12_400, 12_471, parent=second, kind=SpanKind.CLIENT, base=r0)
    second.end(end_time=_ns(r0, 12_480))
    append(
        archive.batch(
            "firestore transaction apply_event",
            "GET",
            "POST",
            "archive file",
            "firestore transaction record_outputs",
            "process archive-outputs",
        )
    )
    path.write_text("".join(lines), encoding="utf-8")


def _diff(expected: str, actual: str, name: str) -> str:
    lines = difflib.unified_diff(
        expected.splitlines(), actual.splitlines(), f"{name} (committed)", f"{name} (now)", lineterm=""
    )
    return "\n".join(lines) + f"\n\nIf the change is intended: UPDATE_SNAPSHOTS=1 .venv/bin/pytest {__file__}"


def _matches_committed(path: Path, actual: str) -> None:
    if UPDATE or not path.exists():
        path.write_text(actual, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, _diff(expected, actual, path.name)


def test_committed_span_file_is_what_the_sdk_writes(tmp_path: Path) -> None:
    built = tmp_path / "spans.jsonl"
    build_span_file(built)
    _matches_committed(SPAN_FILE, built.read_text(encoding="utf-8"))


# --- reading ----------------------------------------------------------------------------------------------


def test_reader_counts_the_torn_line_and_keeps_every_other_span() -> None:
    stats = ReadStats()
    spans = list(read_spans([SPAN_FILE], stats=stats))

    assert stats.lines == 11
    assert stats.corrupt == 1
    assert stats.spans == len(spans) == 26


def test_reader_returns_typed_records_with_plain_attribute_values() -> None:
    spans = {(span.service, span.name): span for span in read_spans([SPAN_FILE])}
    post = next(span for span in read_spans([SPAN_FILE]) if span.name == "POST /")
    upload_failed = next(
        span for span in read_spans([SPAN_FILE]) if span.name == "POST" and span.attributes.get("url.full") is None
    )
    recover = spans[("reconciler", "recover prediction")]

    assert post.kind is Kind.SERVER
    assert post.parent_id is None
    assert len(post.trace_id) == 32
    assert len(post.span_id) == 16
    assert post.attributes["http.response.status_code"] == 200
    assert isinstance(post.attributes["relay.prediction_id"], str)
    assert upload_failed.status_code is Code.ERROR
    assert upload_failed.status_message == "503 Service Unavailable"
    assert recover.links[0].attributes == {"relay.link": "reconcile_run"}
    first_attempt = next(
        span for span in read_spans([SPAN_FILE]) if span.events and span.name == "process archive-outputs"
    )
    assert first_attempt.events[0].name == "exception"
    assert first_attempt.events[0].attributes["exception.message"] == "503 upload"


def test_any_value_kinds_become_python_values(tmp_path: Path) -> None:
    attributes = [
        {"key": "s", "value": {"stringValue": "x"}},
        {"key": "i", "value": {"intValue": "42"}},
        {"key": "d", "value": {"doubleValue": 1.5}},
        {"key": "nan", "value": {"doubleValue": "NaN"}},
        {"key": "b", "value": {"boolValue": True}},
        {"key": "a", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "2"}]}}},
        {"key": "kv", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": False}}]}}},
        {"key": "bytes", "value": {"bytesValue": "AAE="}},
        {"key": "empty", "value": {}},
    ]
    path = tmp_path / "spans.jsonl"
    path.write_text(json.dumps(_batch("svc", [_otlp_span("a" * 32, "b" * 16, attributes=attributes)])) + "\n")

    (span,) = read_spans([path])

    values = dict(span.attributes)
    nan = values.pop("nan")
    assert isinstance(nan, float)
    assert nan != nan  # noqa: PLR0124 - NaN
    assert values == {
        "s": "x",
        "i": 42,
        "d": 1.5,
        "b": True,
        "a": ["a", 2],
        "kv": {"k": False},
        "bytes": "0001",
        "empty": None,
    }


@pytest.mark.parametrize(
    "line",
    [
        '{"resourceSpans":[{"resource":{"attributes":[]},"scopeSpans":[{"spans":[{"traceId":"ab',
        "not json at all",
        "[]",
        '{"resourceSpans": {}}',
        '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"xyz","spanId":"b"}]}]}]}',
        '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"' + "a" * 32 + '","spanId":"' + "b" * 16 + '",'
        '"startTimeUnixNano":"-5"}]}]}]}',
        "\xff\xfe garbage",
        "[" * 100_000,
    ],
    ids=["torn", "text", "list", "wrong-shape", "bad-id", "negative-time", "not-utf8", "deep-nesting"],
)
def test_corrupt_lines_are_counted_never_fatal(tmp_path: Path, line: str) -> None:
    good = json.dumps(_batch("svc", [_otlp_span("a" * 32, "b" * 16)]))
    path = tmp_path / "spans.jsonl"
    path.write_bytes(b"\n".join([good.encode(), line.encode("latin-1"), good.encode()]) + b"\n")
    stats = ReadStats()

    spans = list(read_spans([path], stats=stats))

    assert (len(spans), stats.corrupt) == (2, 1)


# --- finding ----------------------------------------------------------------------------------------------


def _trace_ids_with(name: str, service: str) -> set[str]:
    return {span.trace_id for span in read_spans([SPAN_FILE]) if span.name == name and span.service == service}


def test_a_prediction_id_finds_its_traces_in_start_order_and_nothing_else() -> None:
    found = find_in_file(SPAN_FILE, PREDICTION)

    (webhook,) = _trace_ids_with("POST /", "receiver") & {t.trace_id for t in found.traces}
    (recovery,) = _trace_ids_with("recover prediction", "reconciler")
    assert [trace.trace_id for trace in found.traces] == [webhook, recovery]
    assert found.matched_as == ("prediction id",)
    assert (found.spans_read, found.corrupt_lines) == (26, 1)
    services = {span.service for trace in found.traces for span in trace.spans}
    assert services == {"receiver", "job-status", "archive-outputs", "reconciler"}
    names = {span.name for trace in found.traces for span in trace.spans}
    assert "reconcile run" not in names  # another trace: only shown as the far end of a link
    assert all(span.attributes.get("relay.prediction_id") != OTHER_PREDICTION for t in found.traces for span in t.spans)


def test_a_job_id_finds_the_same_traces_even_though_it_looks_like_a_trace_id() -> None:
    by_prediction = find_in_file(SPAN_FILE, PREDICTION)
    by_job = find_in_file(SPAN_FILE, JOB)

    assert [t.trace_id for t in by_job.traces] == [t.trace_id for t in by_prediction.traces]
    assert by_job.matched_as == ("job id",)


def test_a_trace_id_finds_that_trace_whole_in_any_case() -> None:
    (run_trace,) = _trace_ids_with("reconcile run", "reconciler")

    found = find_in_file(SPAN_FILE, run_trace.upper())

    assert [t.trace_id for t in found.traces] == [run_trace]
    assert found.matched_as == ("trace id",)
    assert [span.name for span in found.traces[0].spans] == [
        "reconcile run",
        "/google.firestore.v1.Firestore/RunQuery",
        "GET",
    ]


def test_a_job_id_also_finds_its_predictions_traces_where_no_span_knew_the_job(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    receiver_only = _otlp_span("1" * 32, "1" * 16, attributes=[_attr("relay.prediction_id", "p1")])
    handler = _otlp_span(
        "2" * 32, "2" * 16, attributes=[_attr("relay.prediction_id", "p1"), _attr("relay.job_id", "job9")]
    )
    unrelated = _otlp_span("3" * 32, "3" * 16, attributes=[_attr("relay.prediction_id", "p2")])
    path.write_text("\n".join(json.dumps(_batch("svc", [span])) for span in (receiver_only, handler, unrelated)))

    found = find_in_file(path, "job9")

    assert [t.trace_id for t in found.traces] == ["1" * 32, "2" * 32]


def test_links_show_the_far_end_in_another_trace() -> None:
    found = find_in_file(SPAN_FILE, PREDICTION)
    recover = next(span for t in found.traces for span in t.spans if span.name == "recover prediction")

    (link,) = recover.links
    far_end = found.find(link.trace_id, link.span_id)

    assert far_end is not None
    assert far_end.name == "reconcile run"


def test_the_orphan_of_the_torn_line_is_drawn_at_the_root_level_and_marked() -> None:
    found = find_in_file(SPAN_FILE, PREDICTION)

    rows = list(found.traces[0].rows())

    orphans = [row for row in rows if row.orphan]
    assert [(row.span.name, row.depth) for row in orphans] == [("/google.firestore.v1.Firestore/Commit", 0)]
    assert len(rows) == len(found.traces[0].spans)


def test_parent_cycles_and_self_parents_still_draw_every_span_once(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    spans = [
        _otlp_span("a" * 32, "1" * 16, parent="2" * 16),
        _otlp_span("a" * 32, "2" * 16, parent="1" * 16),
        _otlp_span("a" * 32, "3" * 16, parent="3" * 16),
    ]
    path.write_text(json.dumps(_batch("svc", spans)) + "\n")

    (trace_found,) = find_in_file(path, "a" * 32).traces
    rows = list(trace_found.rows())

    assert sorted(row.span.span_id for row in rows) == ["1" * 16, "2" * 16, "3" * 16]
    assert render_text(find_in_file(path, "a" * 32)).count("?─ ") == 2


# --- the waterfall -----------------------------------------------------------------------------------------


def test_text_waterfall_matches_the_snapshot(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(FIXTURES)  # the path in the output is the one given: the same in every checkout

    code = main(["trace", PREDICTION, "--file", SPAN_FILE.name, "--no-color", "--width", "100"])

    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    _matches_committed(SNAPSHOT, out)


def test_text_lines_fit_the_width_and_errors_are_marked_in_text() -> None:
    found = find_in_file(SPAN_FILE, PREDICTION)

    for width in (60, 100, 140):
        text = render_text(found, width=width)
        assert max(len(line) for line in text.splitlines()) <= width
    assert "✗ unavailable: Cloud Storage answered 503" in text
    assert "\x1b" not in text


def test_colour_is_used_on_a_terminal_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    found = find_in_file(SPAN_FILE, PREDICTION)
    coloured = render_text(found, colour=True)

    assert "\x1b[31m" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == render_text(found)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    from replicate_relay.traceview.command import run_trace  # noqa: PLC0415

    args = _args(id=PREDICTION, file=str(SPAN_FILE))
    for environ, expected in (({}, True), ({"NO_COLOR": "1"}, False)):
        out = Terminal()
        run_trace(args, environ=environ, stdout=out, stderr=io.StringIO())
        assert ("\x1b[" in out.getvalue()) is expected


def test_hostile_attribute_values_never_reach_the_terminal_raw(tmp_path: Path) -> None:
    hostile = "evil\x1b]0;pwned\x07\x1b[2J\r\nroot# \u202edesrever\ud800"
    path = tmp_path / "spans.jsonl"
    span = _otlp_span(
        "a" * 32,
        "b" * 16,
        name=hostile,
        attributes=[_attr("relay.prediction_id", "p1"), _attr("relay.outcome", hostile)],
        status={"code": 2, "message": hostile},
    )
    path.write_text(json.dumps(_batch(hostile, [span])) + "\n")
    out = io.StringIO()

    from replicate_relay.traceview.command import run_trace  # noqa: PLC0415

    run_trace(_args(id="p1", file=str(path)), environ={}, stdout=out, stderr=io.StringIO())

    text = out.getvalue()
    assert not set(text) & {"\x1b", "\r", "\x07", "\u202e", "\ud800"}
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\x0aroot# \\u202edesrever\\ud800" in text
    assert len(text.splitlines()) == len(render_text(find_in_file(path, "p1")).splitlines())


def test_json_lists_the_matched_spans(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", PREDICTION, "--file", str(SPAN_FILE), "--json"]) == 0

    dumped = json.loads(capsys.readouterr().out)

    assert dumped["matched_as"] == ["prediction id"]
    assert [len(trace["spans"]) for trace in dumped["traces"]] == [5, 16]
    post = dumped["traces"][0]["spans"][0]
    assert (post["name"], post["service"], post["kind"]) == ("POST /", "receiver", "server")


# --- the page ----------------------------------------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_page_parses_and_holds_every_span(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page_path = tmp_path / "trace.html"

    assert main(["trace", PREDICTION, "--file", str(SPAN_FILE), "--html", str(page_path)]) == 0

    page = page_path.read_text(encoding="utf-8")
    parser = _Page()
    parser.feed(page)
    parser.close()
    text = "".join(parser.text)
    names = {span.name for t in find_in_file(SPAN_FILE, PREDICTION).traces for span in t.spans}
    assert all(name in text for name in names)
    assert "script" not in parser.tags
    assert "link" not in parser.tags  # self-contained: no external stylesheet
    assert "http://" not in page.replace("https://replicate", "")
    out, err = capsys.readouterr()
    assert out == f"Wrote 2 trace(s) to {page_path}\n"
    assert err == f"relay: skipped 1 unreadable line(s) in {SPAN_FILE} (torn or corrupt)\n"


def test_html_escapes_names_and_attributes_from_the_data(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    evil = '<script>alert("x")</script>'
    span = _otlp_span(
        "a" * 32, "b" * 16, name=evil, attributes=[_attr("relay.prediction_id", f'p1"><img src=x>{evil}')]
    )
    path.write_text(json.dumps(_batch(evil, [span])) + "\n")

    page = render_html(find_in_file(path, "a" * 32))

    parser = _Page()
    parser.feed(page)
    assert "script" not in parser.tags
    assert "img" not in parser.tags
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert evil in "".join(parser.text)


# --- errors ------------------------------------------------------------------------------------------------


def test_a_missing_span_file_is_one_sentence_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.jsonl"

    assert main(["trace", PREDICTION, "--file", str(missing)]) == 2

    assert capsys.readouterr().err == (
        f"relay: no span file at {missing}: start the dev stack (make run) or pass --file\n"
    )


def test_the_span_file_comes_from_relay_trace_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RELAY_TRACE_FILE", str(SPAN_FILE))

    assert main(["trace", PREDICTION, "--no-color"]) == 0

    assert capsys.readouterr().out.startswith("2 traces (21 spans) for prediction id")


def test_an_id_that_matches_nothing_is_one_sentence_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "nosuchprediction", "--file", str(SPAN_FILE)]) == 2

    assert capsys.readouterr().err == f"relay: no spans for nosuchprediction in {SPAN_FILE} (26 spans read)\n"


def test_the_previous_generation_of_a_rotated_file_is_read_too(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    (tmp_path / "spans.jsonl.1").write_text(SPAN_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    path.write_text(json.dumps(_batch("svc", [_otlp_span("c" * 32, "c" * 16)])) + "\n")

    assert len(find_in_file(path, PREDICTION).traces) == 2
    assert find_in_file(path, "c" * 32).spans_read == 27


# --- Cloud Trace ------------------------------------------------------------------------------------------


def _v1_trace() -> trace_v1.Trace:
    start = datetime(2026, 3, 2, 9, 14, 5, 250000, tzinfo=UTC)

    def at(ms: float) -> datetime:
        return datetime.fromtimestamp(start.timestamp() + ms / 1000, UTC)

    return trace_v1.Trace(
        project_id="relay-prod",
        trace_id="0AF7651916CD43DD8448EB211C80319C",
        spans=[
            trace_v1.TraceSpan(
                span_id=0x1A2B3C4D5E6F7081,
                kind=trace_v1.TraceSpan.SpanKind.RPC_SERVER,
                name="POST /",
                start_time=start,
                end_time=at(7.5),
                labels={
                    "service.name": "receiver",
                    "/http/status_code": "200",
                    "relay.prediction_id": PREDICTION,
                },
            ),
            trace_v1.TraceSpan(
                span_id=2,
                parent_span_id=0x1A2B3C4D5E6F7081,
                name="process archive-outputs",
                start_time=at(12),
                end_time=at(40),
                labels={
                    "g.co/r/generic_task/job": "archive-outputs",
                    "relay.prediction_id": PREDICTION,
                    "relay.job_id": JOB,
                    "/error/message": "unavailable: Cloud Storage answered 503",
                },
            ),
            trace_v1.TraceSpan(
                span_id=3,
                parent_span_id=2,
                kind=trace_v1.TraceSpan.SpanKind.RPC_CLIENT,
                name="POST",
                start_time=at(20),
                end_time=at(39),
                labels={"/http/status_code": "503"},
            ),
        ],
    )


def test_cloud_trace_v1_spans_convert_into_the_same_records() -> None:
    converted = gcp.convert_trace(_v1_trace())

    post, process, upload = converted.spans
    assert converted.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert (post.span_id, post.parent_id, post.kind, post.service) == (
        "1a2b3c4d5e6f7081",
        None,
        Kind.SERVER,
        "receiver",
    )
    assert (process.parent_id, process.service, process.kind) == (
        "1a2b3c4d5e6f7081",
        "archive-outputs",
        Kind.UNSPECIFIED,
    )
    assert (process.status_code, process.status_message) == (Code.ERROR, "unavailable: Cloud Storage answered 503")
    assert (upload.span_id, upload.kind, upload.status_message) == ("0000000000000003", Kind.CLIENT, "HTTP 503")
    assert upload.service == "unknown"
    assert post.failed is False
    assert post.start_ns == T0
    assert process.duration_ns == 28_000_000
    assert post.attributes["relay.prediction_id"] == PREDICTION


class _FakeTraceClient:
    """Stands in for TraceServiceClient: answers from a list of traces, records the requests."""

    def __init__(self, traces: list[trace_v1.Trace]) -> None:
        self.traces = traces
        self.filters: list[str] = []

    def get_trace(self, *, project_id: str, trace_id: str, timeout: float) -> trace_v1.Trace:
        for one in self.traces:
            if one.trace_id.lower() == trace_id:
                return one
        raise google_exceptions.NotFound("no such trace")

    def list_traces(self, *, request: trace_v1.ListTracesRequest, timeout: float) -> list[trace_v1.Trace]:
        self.filters.append(request.filter)
        key, _, value = request.filter.removeprefix("+").partition(":")
        return [one for one in self.traces if any(span.labels.get(key) == value for span in one.spans)]


def test_cloud_trace_lookup_by_trace_prediction_and_job_id_renders_the_waterfall() -> None:
    client = _FakeTraceClient([_v1_trace()])
    now = datetime(2026, 3, 3, tzinfo=UTC)
    since = datetime(2026, 2, 24, tzinfo=UTC)

    by_trace = gcp.fetch(client, "relay-prod", "0af7651916cd43dd8448eb211c80319c", since=since, now=now)
    by_prediction = gcp.fetch(client, "relay-prod", PREDICTION, since=since, now=now)
    by_job = gcp.fetch(client, "relay-prod", JOB, since=since, now=now)

    assert by_trace.matched_as == ("trace id",)
    assert by_prediction.matched_as == ("prediction id",)
    assert "job id" in by_job.matched_as
    assert f"+relay.prediction_id:{PREDICTION}" in client.filters
    assert f"+relay.job_id:{JOB}" in client.filters
    text = render_text(by_prediction)
    assert text.startswith(f"1 trace (3 spans) for prediction id {PREDICTION}\nfrom Cloud Trace (project relay-prod)\n")
    assert "\nPOST / [receiver] " in text
    assert "\n└─ ✗ process archive-outputs [archive-outputs] " in text
    assert "\n   └─ ✗ POST [unknown] " in text
    assert "✗ unavailable: Cloud Storage answered 503" in text
    assert "✗ HTTP 503" in text


def test_cloud_trace_without_a_match_is_one_sentence() -> None:
    client = _FakeTraceClient([])
    with pytest.raises(Exception, match=r"^no traces for nothing in Cloud Trace \(project p\) since 2026-02-24"):
        gcp.fetch(client, "p", "nothing", since=datetime(2026, 2, 24, tzinfo=UTC), now=datetime(2026, 3, 3, tzinfo=UTC))


def test_gcp_without_credentials_is_one_sentence_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_credentials(*args: object, **kwargs: object) -> tuple[object, str | None]:
        raise auth_exceptions.DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr(google.auth, "default", no_credentials)

    assert main(["trace", PREDICTION, "--gcp", "--project", "relay-prod"]) == 2

    err = capsys.readouterr().err
    assert err == f"relay: {gcp.NO_CREDENTIALS}\n"
    assert err.count("\n") == 1


def test_gcp_permission_denied_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing(_FakeTraceClient):
        def list_traces(self, *, request: trace_v1.ListTracesRequest, timeout: float) -> list[trace_v1.Trace]:
            raise google_exceptions.PermissionDenied("cloudtrace.traces.list denied")

    with pytest.raises(Exception, match="Cloud Trace refused to read project p: the account needs roles/cloudtrace"):
        gcp.fetch(Refusing([]), "p", PREDICTION, since=datetime(2026, 2, 24, tzinfo=UTC), now=datetime.now(UTC))


def test_since_and_project_are_refused_without_gcp(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", PREDICTION, "--file", str(SPAN_FILE), "--since", "2h"]) == 2

    assert "only apply with --gcp" in capsys.readouterr().err


# --- helpers ----------------------------------------------------------------------------------------------


def _args(**values: Any) -> Any:
    import argparse  # noqa: PLC0415

    defaults: dict[str, Any] = {
        "file": None,
        "html": None,
        "gcp": False,
        "project": None,
        "since": None,
        "width": 100,
        "no_color": False,
        "json": False,
    }
    return argparse.Namespace(**{**defaults, **values})


def _attr(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "value": {"stringValue": value}}


def _otlp_span(
    trace_id: str,
    span_id: str,
    *,
    parent: str | None = None,
    name: str = "work",
    attributes: list[dict[str, Any]] | None = None,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    span: dict[str, Any] = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": name,
        "kind": 1,
        "startTimeUnixNano": str(T0),
        "endTimeUnixNano": str(T0 + 5_000_000),
        "attributes": attributes or [],
        "status": status or {},
    }
    if parent:
        span["parentSpanId"] = parent
    return span


def _batch(service: str, spans: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [_attr("service.name", service)]},
                "scopeSpans": [{"scope": {"name": "relay"}, "spans": spans}],
            }
        ]
    }
