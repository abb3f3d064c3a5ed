"""Span and trace records shared by the span-file reader, Cloud Trace and the renderers."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeAlias

AttrValue: TypeAlias = str | bool | int | float | list["AttrValue"] | dict[str, "AttrValue"] | None
Attributes: TypeAlias = dict[str, AttrValue]

# Control characters (ESC, CR, LF, …), line separators and bidi overrides from span data would let a span
# name rewrite the operator's terminal or disguise text; shown as visible escapes instead.
_CONTROLS = [*range(0x20), *range(0x7F, 0xA0)]
_INVISIBLE = [0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0xFEFF]
_UNPRINTABLE = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in [*_CONTROLS, *_INVISIBLE]}


def printable(text: str) -> str:
    """`text` with every control character replaced by a visible escape such as `\\x1b`; a lone surrogate
    (valid JSON, not encodable) as `\\ud800`."""
    return text.translate(_UNPRINTABLE).encode("utf-8", "backslashreplace").decode("utf-8")


class SpanKind(enum.IntEnum):
    """OTLP's numbering (one more than the Python SDK's `SpanKind`)."""

    UNSPECIFIED = 0
    INTERNAL = 1
    SERVER = 2
    CLIENT = 3
    PRODUCER = 4
    CONSUMER = 5


class StatusCode(enum.IntEnum):
    UNSET = 0
    OK = 1
    ERROR = 2


@dataclass(frozen=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: Attributes = field(default_factory=dict)


@dataclass(frozen=True)
class SpanLink:
    trace_id: str
    span_id: str
    attributes: Attributes = field(default_factory=dict)


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: SpanKind
    service: str
    start_ns: int
    end_ns: int
    attributes: Attributes = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()
    links: tuple[SpanLink, ...] = ()
    status_code: StatusCode = StatusCode.UNSET
    status_message: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.trace_id, self.span_id)

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    @property
    def failed(self) -> bool:
        return self.status_code is StatusCode.ERROR

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-ready values, for `--json`."""
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "name": self.name,
            "kind": self.kind.name.lower(),
            "service": self.service,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "duration_ms": self.duration_ns / 1e6,
            "attributes": self.attributes,
            "events": [
                {"name": event.name, "time_ns": event.time_ns, "attributes": event.attributes} for event in self.events
            ],
            "links": [
                {"trace_id": link.trace_id, "span_id": link.span_id, "attributes": link.attributes}
                for link in self.links
            ],
            "status": {"code": self.status_code.name.lower(), "message": self.status_message},
        }


@dataclass(frozen=True)
class Row:
    """One span in drawing order: its depth, and for each level whether more siblings follow (for the tree lines)."""

    span: Span
    depth: int
    last: tuple[bool, ...]  # one per level, outermost first; () for a root
    orphan: bool  # its parent is not among the spans read
    has_children: bool


@dataclass(frozen=True)
class Trace:
    trace_id: str
    spans: tuple[Span, ...]  # by start time

    @classmethod
    def of(cls, trace_id: str, spans: list[Span]) -> Trace:
        unique = {span.span_id: span for span in reversed(spans)}  # a span exported twice: keep the first
        return cls(
            trace_id, tuple(sorted(unique.values(), key=lambda span: (span.start_ns, span.end_ns, span.span_id)))
        )

    @property
    def start_ns(self) -> int:
        return min(span.start_ns for span in self.spans)

    @property
    def end_ns(self) -> int:
        return max(max(span.end_ns, span.start_ns) for span in self.spans)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def services(self) -> list[str]:
        """In the order they first appear in time."""
        return list(dict.fromkeys(span.service for span in self.spans))

    def rows(self) -> Iterator[Row]:
        """Depth-first, children by start time. Spans whose parent is missing (or in a cycle) come out at the
        root level, marked orphan, so nothing read is ever left out."""
        by_id = {span.span_id: span for span in self.spans}
        children: dict[str, list[Span]] = {}
        roots: list[Span] = []
        for span in self.spans:
            if span.parent_id and span.parent_id in by_id and span.parent_id != span.span_id:
                children.setdefault(span.parent_id, []).append(span)
            else:
                roots.append(span)
        seen: set[str] = set()
        # An explicit stack, not recursion: a broken or hostile file may nest spans thousands deep.
        stack: list[tuple[Span, tuple[bool, ...], bool]] = [(span, (), bool(span.parent_id)) for span in roots[::-1]]
        while stack or len(seen) < len(by_id):
            if not stack:  # a parent cycle: no root leads to it
                span = next(span for span in self.spans if span.span_id not in seen)
                stack.append((span, (), True))
            span, last, orphan = stack.pop()
            if span.span_id in seen:
                continue
            seen.add(span.span_id)
            kids = [kid for kid in children.get(span.span_id, []) if kid.span_id not in seen]
            yield Row(span, len(last), last, orphan, bool(kids))
            for index in range(len(kids) - 1, -1, -1):
                stack.append((kids[index], (*last, index == len(kids) - 1), False))


@dataclass(frozen=True)
class TraceSet:
    """What `relay trace ID` found: the traces, plus the spans their links point to or come from."""

    ident: str
    source: str
    traces: tuple[Trace, ...]
    matched_as: tuple[str, ...]  # "trace id", "prediction id", "job id"
    outside: Mapping[tuple[str, str], Span] = field(default_factory=dict)  # link ends in other traces
    spans_read: int = 0
    corrupt_lines: int = 0

    def find(self, trace_id: str, span_id: str) -> Span | None:
        """The span with this id, in one of the traces or at the far end of one of their links."""
        return self._index.get((trace_id, span_id)) or self.outside.get((trace_id, span_id))

    def holds(self, trace_id: str) -> bool:
        return trace_id in self._trace_ids

    @cached_property
    def _index(self) -> dict[tuple[str, str], Span]:
        return {span.key: span for trace in self.traces for span in trace.spans}

    @cached_property
    def _trace_ids(self) -> set[str]:
        return {trace.trace_id for trace in self.traces}

    def linked_from(self) -> dict[tuple[str, str], list[Span]]:
        """For each span, the spans (here or outside) whose links point at it."""
        incoming: dict[tuple[str, str], list[Span]] = {}
        spans = [span for trace in self.traces for span in trace.spans]
        for span in [*spans, *self.outside.values()]:
            for link in span.links:
                incoming.setdefault((link.trace_id, link.span_id), []).append(span)
        return incoming
