"""`relay trace ID`: find the traces, then print the waterfall, write the page or dump JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from replicate_relay.devstack.stack import StackConfig
from replicate_relay.ops.errors import OpsError
from replicate_relay.traceview.lookup import find_in_file
from replicate_relay.traceview.model import TraceSet, printable
from replicate_relay.traceview.page import render_html
from replicate_relay.traceview.text import render_text

DEFAULT_SPAN_FILE = StackConfig().telemetry_dir / "spans.jsonl"  # where `relay dev` has every process write
DEFAULT_SINCE = "7d"


def span_file(option: str | None, environ: Mapping[str, str]) -> Path:
    """--file, else RELAY_TRACE_FILE, else the dev stack's .relay/telemetry/spans.jsonl."""
    return Path(option or environ.get("RELAY_TRACE_FILE") or DEFAULT_SPAN_FILE)


def run_trace(
    args: argparse.Namespace,
    *,
    environ: Mapping[str, str] = os.environ,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Find `args.id`'s traces (span file, or Cloud Trace with --gcp) and show them as asked."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    if not args.gcp and (args.since or args.project):
        raise OpsError("--since and --project only apply with --gcp (the span file is read whole)")
    found = _from_cloud_trace(args, environ) if args.gcp else find_in_file(span_file(args.file, environ), args.id)
    if found.corrupt_lines and (args.html or args.json):  # the text output says it in its header
        print(
            f"relay: skipped {found.corrupt_lines} unreadable line(s) in {printable(found.source)} (torn or corrupt)",
            file=err,
        )
    if args.html:
        path = Path(args.html)
        try:
            path.write_text(render_html(found), encoding="utf-8")
        except OSError as error:
            raise OpsError(f"cannot write {printable(str(path))}: {error.strerror}") from None
        _emit(f"Wrote {len(found.traces)} trace(s) to {printable(str(path))}", out)
    elif args.json:
        _emit(json.dumps(as_json(found), indent=2), out)  # ASCII only: no raw control character reaches a terminal
    else:
        colour = not args.no_color and not environ.get("NO_COLOR") and out.isatty()
        _emit(render_text(found, width=args.width, colour=colour), out)
    return 0


def _emit(text: str, out: TextIO) -> None:
    try:
        print(text, file=out, flush=True)
    except BrokenPipeError:  # `relay trace ID | head`: the reader has what it wanted
        if out is sys.stdout:  # and Python's own flush at exit must not fail again (Python docs, "SIGPIPE")
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def as_json(found: TraceSet) -> dict[str, object]:
    return {
        "id": found.ident,
        "source": found.source,
        "matched_as": list(found.matched_as),
        "spans_read": found.spans_read,
        "corrupt_lines": found.corrupt_lines,
        "traces": [
            {
                "trace_id": trace.trace_id,
                "start_ns": trace.start_ns,
                "duration_ms": trace.duration_ns / 1e6,
                "services": trace.services,
                "spans": [span.as_dict() for span in trace.spans],
            }
            for trace in found.traces
        ],
    }


def _from_cloud_trace(args: argparse.Namespace, environ: Mapping[str, str]) -> TraceSet:
    # Imported here: Google's Cloud Trace client and Firestore (for parse_since) only load with --gcp.
    from replicate_relay.ops.jobs_view import parse_since  # noqa: PLC0415
    from replicate_relay.traceview import gcp  # noqa: PLC0415

    now = datetime.now(UTC)
    since = parse_since(args.since or DEFAULT_SINCE, now)
    client, project = gcp.connect(args.project, environ)
    return gcp.fetch(client, project, args.id, since=since, now=now)
