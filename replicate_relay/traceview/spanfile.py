"""Reading the local span file: OTLP/JSON lines as OpenTelemetry's FileSpanExporter appends them.

Each line is one `{"resourceSpans": [...]}` export batch from one process, decoded by OpenTelemetry's own
OTLP/JSON codec (opentelemetry-proto-json, the one the exporter encodes with). The file is read a line at
a time, never whole: it grows for as long as the dev stack runs. A line that is not a valid batch (torn by
a process killed mid-write, or corrupt) is counted and skipped, never fatal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.proto_json.common.v1 import common as otlp_common
from opentelemetry.proto_json.trace.v1 import trace as otlp_trace

from replicate_relay.traceview.model import Attributes, AttrValue, Span, SpanEvent, SpanKind, SpanLink, StatusCode

UNKNOWN_SERVICE = "unknown"
_MAX_NEEDLES = 64


class Malformed(ValueError):
    """A line that is JSON but not an OTLP export batch."""


@dataclass
class ReadStats:
    lines: int = 0
    spans: int = 0
    corrupt: int = 0


def read_spans(
    paths: Sequence[Path], *, stats: ReadStats | None = None, needles: Collection[str] = ()
) -> Iterator[Span]:
    """The spans of the files, line by line. With `needles`, only the spans of lines containing one of them
    (each id we look for appears literally in the lines holding its spans): other lines are not parsed
    into records, which is most of the cost. With `stats`, every line is still decoded, so that spans and
    corrupt lines are all counted."""
    if needles and len(needles) <= _MAX_NEEDLES:
        wanted: re.Pattern[bytes] | None = re.compile(b"|".join(re.escape(needle.encode()) for needle in needles))
    else:  # a regex of thousands of alternatives costs more than parsing every line
        wanted = None
    for path in paths:
        with path.open("rb") as lines:
            for line in lines:
                if stats is not None:
                    stats.lines += 1
                relevant = wanted is None or wanted.search(line) is not None
                if (not relevant and stats is None) or not line.strip():
                    continue
                try:
                    batch = json.loads(line)
                    spans = parse_batch(batch) if relevant else []
                    count = len(spans) if relevant else count_spans(batch)
                except (ValueError, TypeError, RecursionError):  # what json and the codec raise on bad input
                    if stats is not None:
                        stats.corrupt += 1
                    continue
                if stats is not None:
                    stats.spans += count
                yield from spans


def parse_batch(batch: object) -> list[Span]:
    """The spans of one decoded `{"resourceSpans": [...]}` object; ValueError or TypeError if it is not one."""
    if not isinstance(batch, dict) or "resourceSpans" not in batch:
        raise Malformed("not an export batch")
    spans: list[Span] = []
    for resource_spans in otlp_trace.TracesData.from_dict(batch).resource_spans:
        resource = _attributes(resource_spans.resource.attributes if resource_spans.resource else [])
        service = resource.get("service.name")
        service_name = service if isinstance(service, str) and service else UNKNOWN_SERVICE
        for scope_spans in resource_spans.scope_spans:
            spans.extend(_span(span, service_name) for span in scope_spans.spans)
    return spans


def count_spans(batch: object) -> int:
    """The number of spans in a decoded batch, checking only its outline (Malformed if it is not a batch)."""
    return sum(
        len(_list(_obj(scope_spans).get("spans", [])))
        for resource_spans in _list(_obj(batch).get("resourceSpans"))
        for scope_spans in _list(_obj(resource_spans).get("scopeSpans", []))
    )


def _span(span: otlp_trace.Span, service: str) -> Span:
    status = span.status or otlp_trace.Status()
    return Span(
        trace_id=_id(span.trace_id, 16),
        span_id=_id(span.span_id, 8),
        parent_id=_id(span.parent_span_id, 8) if span.parent_span_id else None,
        name=span.name or "",
        kind=_kind(span.kind),
        service=service,
        start_ns=_time(span.start_time_unix_nano),
        end_ns=_time(span.end_time_unix_nano),
        attributes=_attributes(span.attributes),
        events=tuple(
            SpanEvent(
                name=event.name or "", time_ns=_time(event.time_unix_nano), attributes=_attributes(event.attributes)
            )
            for event in span.events
        ),
        links=tuple(
            SpanLink(
                trace_id=_id(link.trace_id, 16), span_id=_id(link.span_id, 8), attributes=_attributes(link.attributes)
            )
            for link in span.links
        ),
        status_code=StatusCode(status.code) if status.code in (0, 1, 2) else StatusCode.UNSET,
        status_message=status.message or "",
    )


def _attributes(pairs: list[otlp_common.KeyValue]) -> Attributes:
    return {pair.key or "": _value(pair.value) for pair in pairs}


def _value(value: otlp_common.AnyValue | None) -> AttrValue:
    """OTLP's AnyValue as a plain Python value; bytes as hex."""
    if value is None:
        return None
    for scalar in (value.string_value, value.bool_value, value.int_value, value.double_value):
        if scalar is not None:
            return scalar
    if value.array_value is not None:
        return [_value(item) for item in value.array_value.values]
    if value.kvlist_value is not None:
        return _attributes(value.kvlist_value.values)
    if value.bytes_value is not None:
        return value.bytes_value.hex()
    return None


def _id(raw: bytes | None, size: int) -> str:
    if not raw or len(raw) != size:
        raise Malformed(f"an id is not {size} bytes")
    return raw.hex()


def _kind(kind: int | None) -> SpanKind:
    return SpanKind(kind) if kind in (0, 1, 2, 3, 4, 5) else SpanKind.UNSPECIFIED


def _time(value: int | None) -> int:
    if value is None or not 0 <= value < 2**64:  # fixed64 in OTLP's proto
        raise Malformed("time out of range")
    return value


def _obj(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise Malformed("expected an object")
    return value


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise Malformed("expected a list")
    return value
