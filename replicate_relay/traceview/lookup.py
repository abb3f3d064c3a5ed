"""Finding the traces of a trace id, prediction id or job id in the span file, in a few streaming passes."""

from __future__ import annotations

import re
from pathlib import Path

from replicate_relay.ops.errors import OpsError
from replicate_relay.rotation import generations
from replicate_relay.traceview.model import Span, Trace, TraceSet, printable
from replicate_relay.traceview.spanfile import ReadStats, read_spans

_VERBATIM = re.compile(r"[A-Za-z0-9_.:@-]+")
PREDICTION_ID = "relay.prediction_id"
JOB_ID = "relay.job_id"


def find_in_file(path: Path, ident: str) -> TraceSet:
    """Every trace that is `ident`, or holds a span of prediction `ident`, or of job `ident` (and then every
    trace of that job's predictions). A job id looks like a trace id (32 hex digits), so all three are tried.

    The first pass parses every line (counting spans and corrupt lines) to find the matching traces; later
    passes only parse lines that contain an id they look for: the other predictions of a job, the traces'
    spans, and the far ends of their links."""
    files = generations(path)
    if not files:
        raise OpsError(f"no span file at {printable(str(path))}: start the dev stack (make run) or pass --file")
    stats = ReadStats()
    wanted, matched_as = _matching_traces(files, ident, stats)
    if not wanted:
        raise OpsError(f"no spans for {printable(ident)} in {printable(str(path))} ({stats.spans} spans read)")
    by_trace, outside = _gather(files, wanted)
    traces = sorted((Trace.of(trace_id, spans) for trace_id, spans in by_trace.items()), key=_start)
    return TraceSet(
        ident=ident,
        source=str(path),
        traces=tuple(traces),
        matched_as=matched_as,
        outside=outside,
        spans_read=stats.spans,
        corrupt_lines=stats.corrupt,
    )


def _matching_traces(files: list[Path], ident: str, stats: ReadStats) -> tuple[set[str], tuple[str, ...]]:
    wanted: set[str] = set()
    matched_as: dict[str, None] = {}
    job_predictions: set[str] = set()
    # Ids are written verbatim in the JSON lines; an id with characters JSON might escape is searched by parsing all.
    needles = {ident, ident.lower()} if _VERBATIM.fullmatch(ident) else set()
    for span in read_spans(files, stats=stats, needles=needles):
        prediction = span.attributes.get(PREDICTION_ID)
        for kind, matches in (
            ("trace id", span.trace_id == ident.lower()),
            ("prediction id", prediction == ident),
            ("job id", span.attributes.get(JOB_ID) == ident),
        ):
            if matches:
                wanted.add(span.trace_id)
                matched_as[kind] = None
        if span.attributes.get(JOB_ID) == ident and isinstance(prediction, str) and prediction != ident:
            job_predictions.add(prediction)
    if job_predictions:  # the job's webhook traces in which no span knew the job yet (the receiver's)
        for span in read_spans(files, needles=job_predictions):
            if span.attributes.get(PREDICTION_ID) in job_predictions:
                wanted.add(span.trace_id)
    return wanted, tuple(matched_as)


def _gather(files: list[Path], wanted: set[str]) -> tuple[dict[str, list[Span]], dict[tuple[str, str], Span]]:
    """The spans of the `wanted` traces, and the spans of other traces at either end of their links."""
    by_trace: dict[str, list[Span]] = {trace_id: [] for trace_id in wanted}
    outside: dict[tuple[str, str], Span] = {}
    for span in read_spans(files, needles=wanted):
        if span.trace_id in wanted:
            by_trace[span.trace_id].append(span)
        elif any(link.trace_id in wanted for link in span.links):  # another trace links to one of ours
            outside[span.key] = span
    far_ends = {
        (link.trace_id, link.span_id)
        for spans in by_trace.values()
        for span in spans
        for link in span.links
        if link.trace_id not in wanted
    }
    if far_ends:
        for span in read_spans(files, needles={span_id for _, span_id in far_ends}):
            if span.key in far_ends:
                outside.setdefault(span.key, span)
    return by_trace, outside


def _start(trace: Trace) -> tuple[int, str]:
    return (trace.start_ns, trace.trace_id)
