"""`relay trace --gcp`: the same traces read from Cloud Trace (API v1), converted into the same records."""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import google.auth
from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import trace_v1

from replicate_relay.ops.errors import OpsError
from replicate_relay.traceview.lookup import JOB_ID, PREDICTION_ID
from replicate_relay.traceview.model import Span, SpanKind, StatusCode, Trace, TraceSet, printable

# Where a v1 span says which service wrote it: our resource's service.name when the exporter copies it
# (CloudTraceSpanExporter(resource_regex=r"service\.name")), else what Google's own agents set.
SERVICE_LABELS = (
    "service.name",
    "g.co/gae/app/module",
    "g.co/r/generic_task/job",
    "g.co/r/cloud_run_revision/service_name",
)
# Errors: Cloud Trace's own labels. Not `error.type`: the receiver sets it on webhooks it rejects (4xx), which
# are answered, not failed.
ERROR_LABELS = ("/error/message", "/error/name")
MAX_TRACES = 200  # per query; one prediction has a handful
CALL_TIMEOUT = 30.0
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SIMPLE_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # also keeps the filter below well-formed
_KINDS = {
    trace_v1.TraceSpan.SpanKind.RPC_SERVER: SpanKind.SERVER,
    trace_v1.TraceSpan.SpanKind.RPC_CLIENT: SpanKind.CLIENT,
}
NO_CREDENTIALS = "no Google credentials for Cloud Trace: run gcloud auth application-default login"


class TraceClient(Protocol):
    """What we use of `trace_v1.TraceServiceClient` (a fake in the tests)."""

    def get_trace(self, *, project_id: str, trace_id: str, timeout: float) -> trace_v1.Trace: ...

    def list_traces(self, *, request: trace_v1.ListTracesRequest, timeout: float) -> Iterable[trace_v1.Trace]: ...


def connect(project: str | None, environ: Mapping[str, str]) -> tuple[TraceClient, str]:
    """A Cloud Trace client with application-default credentials, and the project: `project`, else
    GOOGLE_CLOUD_PROJECT, else the credentials' own."""
    try:
        credentials, default_project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except auth_exceptions.DefaultCredentialsError:
        raise OpsError(NO_CREDENTIALS) from None
    chosen = project or environ.get("GOOGLE_CLOUD_PROJECT") or default_project
    if not chosen:
        raise OpsError("no Google Cloud project for Cloud Trace: pass --project or set GOOGLE_CLOUD_PROJECT")
    client: TraceClient = trace_v1.TraceServiceClient(credentials=credentials)
    return client, chosen


def fetch(client: TraceClient, project: str, ident: str, *, since: datetime, now: datetime) -> TraceSet:
    """The trace `ident`, or else the traces whose spans carry prediction or job `ident` (and the other
    predictions of that job), started between `since` and `now`."""
    if not _SIMPLE_ID.fullmatch(ident):
        raise OpsError(f"{printable(ident)!r} is not a trace, prediction or job id")
    found: dict[str, Trace] = {}
    matched_as: dict[str, None] = {}
    with _google_errors(project):
        if _TRACE_ID.fullmatch(ident.lower()):
            try:
                one = client.get_trace(project_id=project, trace_id=ident.lower(), timeout=CALL_TIMEOUT)
            except google_exceptions.NotFound:
                pass  # a job id looks like a trace id: search the labels below
            else:
                converted = convert_trace(one)
                found[converted.trace_id] = converted
                matched_as["trace id"] = None
        if not found:
            predictions: set[str] = set()
            for key, kind in ((PREDICTION_ID, "prediction id"), (JOB_ID, "job id")):
                for trace in _search(client, project, key, ident, since=since, now=now):
                    found.setdefault(trace.trace_id, trace)
                    matched_as[kind] = None
                    if key == JOB_ID:
                        predictions.update(_labels_of(trace, PREDICTION_ID) - {ident})
            for prediction in sorted(predictions):
                for trace in _search(client, project, PREDICTION_ID, prediction, since=since, now=now):
                    found.setdefault(trace.trace_id, trace)
    if not found:
        raise OpsError(
            f"no traces for {printable(ident)} in Cloud Trace (project {project}) since "
            f"{since:%Y-%m-%d %H:%M} UTC: try a longer --since"
        )
    traces = sorted(found.values(), key=lambda trace: (trace.start_ns, trace.trace_id))
    return TraceSet(
        ident=ident,
        source=f"Cloud Trace (project {project})",
        traces=tuple(traces),
        matched_as=tuple(matched_as),
        spans_read=sum(len(trace.spans) for trace in traces),
    )


def convert_trace(trace: trace_v1.Trace) -> Trace:
    """A v1 trace as our records. v1 has no links, events or status: an error is an error label or an
    HTTP status of 500 or more; labels become string attributes."""
    trace_id = trace.trace_id.lower()
    return Trace.of(trace_id, [convert_span(trace_id, span) for span in trace.spans])


def convert_span(trace_id: str, span: trace_v1.TraceSpan) -> Span:
    labels = dict(span.labels)
    service = next((labels[key] for key in SERVICE_LABELS if labels.get(key)), "unknown")
    error = next((labels[key] for key in ERROR_LABELS if labels.get(key)), "")
    http_status = _int(labels.get("/http/status_code") or labels.get("http.response.status_code"))
    if not error and http_status is not None and http_status >= 500:
        error = f"HTTP {http_status}"
    if not error and labels.get("otel.status_code") == "ERROR":
        error = labels.get("otel.status_description") or "error"
    return Span(
        trace_id=trace_id,
        span_id=f"{span.span_id:016x}",
        parent_id=f"{span.parent_span_id:016x}" if span.parent_span_id else None,
        name=span.name,
        kind=_KINDS.get(span.kind, SpanKind.UNSPECIFIED),
        service=service,
        start_ns=_nanoseconds(span.start_time),
        end_ns=_nanoseconds(span.end_time),
        attributes=dict(labels),
        status_code=StatusCode.ERROR if error else StatusCode.UNSET,
        status_message=error,
    )


def _search(client: TraceClient, project: str, key: str, value: str, *, since: datetime, now: datetime) -> list[Trace]:
    request = trace_v1.ListTracesRequest(
        project_id=project,
        view=trace_v1.ListTracesRequest.ViewType.COMPLETE,
        start_time=since,
        end_time=now,
        filter=f"+{key}:{value}",  # "+": the exact value, not every value it is a prefix of
        page_size=100,
    )
    traces: list[Trace] = []
    for trace in client.list_traces(request=request, timeout=CALL_TIMEOUT):
        traces.append(convert_trace(trace))
        if len(traces) >= MAX_TRACES:
            break
    return traces


def _labels_of(trace: Trace, key: str) -> set[str]:
    return {value for span in trace.spans if isinstance(value := span.attributes.get(key), str)}


def _nanoseconds(moment: Any) -> int:
    """proto-plus gives a DatetimeWithNanoseconds (None when unset)."""
    if not isinstance(moment, datetime):
        return 0
    seconds = calendar.timegm(moment.astimezone(UTC).timetuple())
    return seconds * 1_000_000_000 + getattr(moment, "nanosecond", moment.microsecond * 1000)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


@contextmanager
def _google_errors(project: str) -> Iterator[None]:
    """Turn Cloud Trace's refusals and outages into one sentence (exit 2)."""
    try:
        yield
    except (auth_exceptions.DefaultCredentialsError, auth_exceptions.RefreshError):
        raise OpsError(NO_CREDENTIALS) from None
    except (google_exceptions.PermissionDenied, google_exceptions.Unauthenticated):
        raise OpsError(
            f"Cloud Trace refused to read project {project}: the account needs roles/cloudtrace.user there"
        ) from None
    except google_exceptions.InvalidArgument as error:
        raise OpsError(f"Cloud Trace refused the query: {printable(str(error.message))}") from None
    except (google_exceptions.ServiceUnavailable, google_exceptions.DeadlineExceeded, google_exceptions.RetryError):
        raise OpsError(f"cannot reach Cloud Trace within {CALL_TIMEOUT:g} s: check the network") from None
