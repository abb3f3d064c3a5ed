"""The terminal waterfall: one tree of spans per trace, with offsets, durations and proportional bars."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from replicate_relay.traceview.model import AttrValue, Row, Span, Trace, TraceSet, printable

DEFAULT_WIDTH = 100
MIN_WIDTH = 60
_NUMBER = 9  # columns for "+9999.9ms" and "9999.99s"
_DETAIL_LINES = 3  # at most, for a span's key attributes
_KEY_ATTRIBUTES = [  # shown under a span when its parent does not have the same value
    ("relay.prediction_id", "prediction"),
    ("relay.job_id", "job"),
    ("relay.webhook_id", "webhook"),
    ("relay.status", "status"),
    ("relay.source", "source"),
    ("relay.outcome", "outcome"),
    ("http.response.status_code", "http"),
    ("http.status_code", "http"),
    ("messaging.message.id", "message"),
    ("messaging.gcp_pubsub.message.delivery_attempt", "attempt"),
]


@dataclass(frozen=True)
class _Paint:
    colour: bool

    def red(self, text: str) -> str:
        return f"\x1b[31m{text}\x1b[0m" if self.colour else text

    def dim(self, text: str) -> str:
        return f"\x1b[2m{text}\x1b[0m" if self.colour else text

    def bold(self, text: str) -> str:
        return f"\x1b[1m{text}\x1b[0m" if self.colour else text


def render_text(found: TraceSet, *, width: int = DEFAULT_WIDTH, colour: bool = False) -> str:
    """Every trace of `found` as text lines no wider than `width` (ANSI colour only when `colour`)."""
    paint = _Paint(colour)
    width = max(width, MIN_WIDTH)
    span_count = sum(len(trace.spans) for trace in found.traces)
    kinds = " and ".join(found.matched_as) or "id"
    summary = (
        f"{_plural(len(found.traces), 'trace')} ({_plural(span_count, 'span')}) for {kinds} {printable(found.ident)}"
    )
    source = f"from {printable(found.source)}"
    if found.corrupt_lines:
        source += f" · {_plural(found.corrupt_lines, 'unreadable line')} skipped"
    lines = [_fit(summary, width), _fit(source, width)]
    incoming = found.linked_from()
    for trace in found.traces:
        lines.append("")
        lines.extend(_trace(trace, found, incoming, width, paint))
    return "\n".join(lines)


def _trace(
    trace: Trace, found: TraceSet, incoming: dict[tuple[str, str], list[Span]], width: int, paint: _Paint
) -> list[str]:
    bar = max(10, width // 4)
    label = width - 2 * _NUMBER - 5 - bar
    total = trace.duration_ns
    header = (
        f"trace {printable(trace.trace_id)} · {timestamp(trace.start_ns)} · {duration(total)} · "
        f"{_plural(len(trace.spans), 'span')}"
    )
    services = "services: " + ", ".join(printable(service) for service in trace.services)
    errors = sum(span.failed for span in trace.spans)
    if errors:
        services += f" · {_plural(errors, 'error')}"
    scale = "0" + duration(total).rjust(bar - 1)
    columns = f"{'span':<{label}} {'offset':>{_NUMBER}} {'duration':>{_NUMBER}} |{scale}|"
    lines = [paint.bold(_fit(header, width)), _fit(services, width), paint.dim(columns)]
    parents = {span.span_id: span for span in trace.spans}
    for row in trace.rows():
        span = row.span
        name = ("✗ " if span.failed else "") + printable(span.name)
        text = _label(_branch(row), name, f" [{printable(span.service)}]", label)
        offset = "+" + duration(span.start_ns - trace.start_ns)
        main = f"{text} {offset:>{_NUMBER}} {duration(span.duration_ns):>{_NUMBER}} |{_bar(span, trace, bar)}|"
        lines.append(paint.red(main) if span.failed else main)
        indent = _continuation(row)
        parent = parents.get(span.parent_id or "") if not row.orphan else None
        for detail, is_error in _details(
            row, parent=parent, trace=trace, found=found, incoming=incoming, width=width - len(indent)
        ):
            line = _fit(indent + detail, width)
            lines.append(paint.red(line) if is_error else paint.dim(line))
    return lines


def _details(
    row: Row,
    *,
    parent: Span | None,
    trace: Trace,
    found: TraceSet,
    incoming: dict[tuple[str, str], list[Span]],
    width: int,
) -> list[tuple[str, bool]]:
    span = row.span
    details: list[tuple[str, bool]] = []
    if span.failed:
        details.append(("✗ " + (printable(span.status_message) or "error"), True))
    if row.orphan and span.parent_id:
        details.append((f"parent {span.parent_id} is not in the spans read", False))
    facts: list[str] = []
    for key, label in _KEY_ATTRIBUTES:
        value = span.attributes.get(key)
        if value is None or (parent is not None and parent.attributes.get(key) == value):
            continue
        if not any(fact.startswith(f"{label}=") for fact in facts):
            facts.append(f"{label}={_value(value)}")
    facts.extend(_value(value) for value in span.attributes.values() if isinstance(value, str) and value[:5] == "gs://")
    if span.events:
        counts = Counter(printable(event.name) for event in span.events)
        facts.append("events: " + ", ".join(name if n == 1 else f"{name} ×{n}" for name, n in counts.items()))
    details.extend((line, False) for line in _wrap(facts, width))
    details.extend((f"{arrow} {_other_end(*key, trace, found)}", False) for arrow, key in link_ends(span, incoming))
    return details


def link_ends(span: Span, incoming: dict[tuple[str, str], list[Span]]) -> list[tuple[str, tuple[str, str]]]:
    """("↪ links to", span key) for the span's own links, ("↩ linked from", key) for spans linking to it, and
    one ("↔ linked with", key) when a pair links both ways (a reconcile run and the trace it started)."""
    outgoing = list(dict.fromkeys((link.trace_id, link.span_id) for link in span.links))
    linking = list(dict.fromkeys(other.key for other in incoming.get(span.key, [])))
    ends = [("↔ linked with" if key in linking else "↪ links to", key) for key in outgoing]
    return ends + [("↩ linked from", key) for key in linking if key not in outgoing]


def _other_end(trace_id: str, span_id: str, trace: Trace, found: TraceSet) -> str:
    span = found.find(trace_id, span_id)
    what = f"{printable(span.name)} [{printable(span.service)}]" if span else f"span {printable(span_id)}"
    return f"{what} in this trace" if trace_id == trace.trace_id else f"{what} in trace {printable(trace_id)}"


def _wrap(words: list[str], width: int) -> list[str]:
    """`words` joined by spaces into lines of at most `width` (a longer word is cut), at most _DETAIL_LINES."""
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(_fit(word, width))
    if len(lines) > _DETAIL_LINES:
        lines[_DETAIL_LINES - 1 :] = [_fit(" ".join(lines[_DETAIL_LINES - 1 :]), width)]
    return lines


def _branch(row: Row) -> str:
    if row.orphan:
        return "?─ "
    if not row.last:
        return ""
    return "".join("   " if last else "│  " for last in row.last[:-1]) + ("└─ " if row.last[-1] else "├─ ")


def _continuation(row: Row) -> str:
    """The tree lines to draw left of a span's detail lines."""
    outer = "".join("   " if last else "│  " for last in row.last)
    return outer + ("│  " if row.has_children else "   ")


def _label(branch: str, name: str, service: str, width: int) -> str:
    """`branch + name + service` in exactly `width` columns: the name is shortened first, the service last."""
    room = width - len(branch) - len(service)
    if room < 4:
        return _fit(branch + name + service, width).ljust(width)
    if len(name) > room:
        name = name[: room - 1] + "…"
    return (branch + name + service).ljust(width)


def _bar(span: Span, trace: Trace, cells: int) -> str:
    total = trace.duration_ns
    if total <= 0:
        return "█" + " " * (cells - 1)
    first = min(cells - 1, (span.start_ns - trace.start_ns) * cells // total)
    last = max(first + 1, min(cells, -(-(max(span.end_ns, span.start_ns) - trace.start_ns) * cells // total)))
    return " " * first + "█" * (last - first) + " " * (cells - last)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _value(value: AttrValue) -> str:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return printable(str(value))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def duration(ns: int) -> str:
    """0.25ms below 1 ms, 412.3ms below 10 s, 12.35s below ~3 h, then hours, then days: at most 8 characters."""
    ms = ns / 1e6
    if ms < 1:
        return f"{ms:.2f}ms"
    if ms < 10_000:
        return f"{ms:.1f}ms"
    if ms < 10_000_000:
        return f"{ms / 1000:.2f}s"
    if ms < 360_000_000:
        return f"{ms / 3_600_000:.1f}h"
    return f"{ms / 86_400_000:.0f}d"


def timestamp(ns: int) -> str:
    """UTC to the millisecond."""
    try:
        moment = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
    except (OverflowError, OSError, ValueError):  # past year 9999: a clock gone wrong, shown as is
        return f"{ns} ns since 1970"
    return f"{moment:%Y-%m-%d %H:%M:%S}.{ns % 1_000_000_000 // 1_000_000:03d} UTC"
