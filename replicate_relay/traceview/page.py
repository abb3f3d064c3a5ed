"""The waterfall as one self-contained HTML page: inline CSS, no script, every value from the data escaped."""

from __future__ import annotations

import html
import json

from replicate_relay.traceview.model import AttrValue, Row, Span, Trace, TraceSet, printable
from replicate_relay.traceview.text import duration, link_ends, timestamp

_PALETTE = ["#3b6fb6", "#2f9e7a", "#b07a1c", "#7b5ab8", "#2a8fb8", "#8a8f2a", "#b0537e", "#5a6b7b"]
_CSS = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d232b; background: #fff; }
h1 { font-size: 1.2em; } h2 { font-size: 1.05em; margin: 1.6em 0 .2em; }
code, .num, .ids { font-family: ui-monospace, Menlo, Consolas, monospace; }
.meta { color: #555; margin: 0 0 .5em; }
.row > summary, .head { display: grid; grid-template-columns: minmax(18em, 2fr) 10em 6.5em 6.5em 3fr;
  gap: .6em; align-items: center; padding: 1px 4px; list-style: none; cursor: pointer; }
.row > summary::-webkit-details-marker { display: none; }
.head { font-weight: 600; color: #555; border-bottom: 1px solid #ddd; cursor: default; }
.row > summary:hover { background: #f0f4fa; }
.name { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.svc { color: #555; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.num { text-align: right; }
.track { position: relative; height: 16px; background: #f6f7f9; }
.bar { position: absolute; top: 3px; bottom: 3px; min-width: 2px; border-radius: 2px; }
.event { position: absolute; top: 0; bottom: 0; width: 2px; background: #1d232b; }
.err > summary { color: #b3261e; } .err .bar { background: #d93025 !important; }
.orphan .name::before { content: "? "; color: #b07a1c; }
.detail { margin: 2px 0 8px 2em; padding: 4px 8px; border-left: 3px solid #ddd; }
.detail table { border-collapse: collapse; } .detail td { padding: 1px 8px 1px 0; vertical-align: top; }
.detail td:first-child { color: #555; white-space: nowrap; }
.detail td:last-child { font-family: ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
.error-text { color: #b3261e; font-weight: 600; }
"""


def render_html(found: TraceSet) -> str:
    """One page with a waterfall per trace; click a span for its attributes, events and links."""
    kinds = " and ".join(found.matched_as) or "id"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>relay trace {_e(found.ident)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>relay trace <code>{_e(found.ident)}</code></h1>",
        f'<p class="meta">{len(found.traces)} trace(s) for {_e(kinds)} <code>{_e(found.ident)}</code> '
        f"from {_e(found.source)}"
        + (f" · {found.corrupt_lines} unreadable line(s) skipped" if found.corrupt_lines else "")
        + "</p>",
    ]
    incoming = found.linked_from()
    services = dict.fromkeys(service for trace in found.traces for service in trace.services)
    colours = {service: _PALETTE[index % len(_PALETTE)] for index, service in enumerate(services)}  # page-wide
    parts.extend(_trace(trace, found, incoming, colours) for trace in found.traces)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _trace(trace: Trace, found: TraceSet, incoming: dict[tuple[str, str], list[Span]], colours: dict[str, str]) -> str:
    errors = sum(span.failed for span in trace.spans)
    meta = (
        f"{_e(timestamp(trace.start_ns))} · {_e(duration(trace.duration_ns))} · {len(trace.spans)} span(s)"
        f" · {_e(', '.join(trace.services))}" + (f" · {errors} error(s)" if errors else "")
    )
    rows = [
        f'<section class="trace" id="t{_e(trace.trace_id)}">',
        f"<h2>trace <code>{_e(trace.trace_id)}</code></h2>",
        f'<p class="meta">{meta}</p>',
        '<div class="head"><span>span</span><span>service</span><span class="num">offset</span>'
        f'<span class="num">duration</span><span>0 – {_e(duration(trace.duration_ns))}</span></div>',
    ]
    rows.extend(_row(row, trace, found, incoming, colours) for row in trace.rows())
    rows.append("</section>")
    return "\n".join(rows)


def _row(
    row: Row, trace: Trace, found: TraceSet, incoming: dict[tuple[str, str], list[Span]], colours: dict[str, str]
) -> str:
    span = row.span
    classes = ["row"] + (["err"] if span.failed else []) + (["orphan"] if row.orphan else [])
    left = _percent(span.start_ns - trace.start_ns, trace.duration_ns)
    width = _percent(span.duration_ns, trace.duration_ns)
    events = "".join(
        f'<i class="event" style="left:{_percent(event.time_ns - trace.start_ns, trace.duration_ns)}%"'
        f' title="{_e(event.name)}"></i>'
        for event in span.events
    )
    hover = "&#10;".join(_e(f"{key} = {_plain(value)}") for key, value in span.attributes.items())  # one per line
    name = ("✗ " if span.failed else "") + span.name
    return (
        f'<details class="{" ".join(classes)}"><summary title="{hover}">'
        f'<span class="name" style="padding-left:{row.depth * 1.2:.1f}em">{_e(name)}</span>'
        f'<span class="svc">{_e(span.service)}</span>'
        f'<span class="num">+{_e(duration(span.start_ns - trace.start_ns))}</span>'
        f'<span class="num">{_e(duration(span.duration_ns))}</span>'
        f'<span class="track"><span class="bar" style="left:{left}%;width:{width}%;'
        f'background:{colours[span.service]}"></span>{events}</span>'
        f"</summary>{_detail(span, row, trace, found, incoming)}</details>"
    )


def _detail(span: Span, row: Row, trace: Trace, found: TraceSet, incoming: dict[tuple[str, str], list[Span]]) -> str:
    cells: list[tuple[str, str]] = []
    if span.failed:
        cells.append(("error", f'<span class="error-text">{_e(span.status_message or "error")}</span>'))
    cells.append(("span", f"{_e(span.span_id)} ({_e(span.kind.name.lower())})"))
    if span.parent_id:
        missing = " — not in the spans read" if row.orphan else ""
        cells.append(("parent", f"{_e(span.parent_id)}{missing}"))
    cells.extend((key, _e(_plain(value))) for key, value in span.attributes.items())
    for event in span.events:
        extra = ", ".join(f"{key}={_plain(value)}" for key, value in event.attributes.items())
        offset = duration(max(0, event.time_ns - trace.start_ns))
        cells.append((f"event +{offset}", _e(event.name + (f" ({extra})" if extra else ""))))
    cells.extend((arrow[2:], _other_end(*key, trace, found)) for arrow, key in link_ends(span, incoming))
    body = "".join(f"<tr><td>{_e(key)}</td><td>{value}</td></tr>" for key, value in cells)
    return f'<div class="detail"><table>{body}</table></div>'


def _other_end(trace_id: str, span_id: str, trace: Trace, found: TraceSet) -> str:
    span = found.find(trace_id, span_id)
    what = _e(f"{span.name} [{span.service}]") if span else f"span {_e(span_id)}"
    if trace_id == trace.trace_id:
        return f"{what} in this trace"
    if found.holds(trace_id):
        return f'{what} in trace <a href="#t{_e(trace_id)}">{_e(trace_id)}</a>'
    return f"{what} in trace {_e(trace_id)} (relay trace {_e(trace_id)})"


def _percent(part: int, whole: int) -> str:
    if whole <= 0:
        return "0"
    return f"{min(100.0, max(0.0, part * 100 / whole)):.3f}"


def _plain(value: AttrValue) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _e(text: str) -> str:
    return html.escape(printable(text), quote=True)
