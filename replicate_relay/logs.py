"""Structured logs: one JSON object a line on stdout, in Cloud Logging's format."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

_configured_service: str | None = None


class CloudLoggingFormatter(logging.Formatter):
    """Formats records as the JSON Cloud Logging parses from a container's stdout.

    Structured fields travel in `extra={"fields": {...}}` (see `fields()`), so the message
    stays human-readable and the fields stay queryable. A record logged inside a span carries
    the trace fields Cloud Logging uses to show it beside the trace in Cloud Trace.
    """

    def __init__(self, service: str, project: str | None = None) -> None:
        super().__init__()
        self._service = service
        self._trace_prefix = f"projects/{project}/traces/" if project else ""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "service": self._service,
            "logger": record.name,
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["logging.googleapis.com/trace"] = f"{self._trace_prefix}{span.trace_id:032x}"
            entry["logging.googleapis.com/spanId"] = f"{span.span_id:016x}"
            entry["logging.googleapis.com/trace_sampled"] = span.trace_flags.sampled
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        # ASCII only: U+0085, U+2028 and the like would split a line for some readers.
        return json.dumps(entry, default=str)


def configure(service: str, *, level: str = "INFO", project: str | None = None) -> None:
    """Send every log record to stdout as JSON. Idempotent; call once at process start."""
    global _configured_service
    if _configured_service == service:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(CloudLoggingFormatter(service, project))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request's full URL at INFO; an output URL's query string may carry a token.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    _configured_service = service


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call: `log.info("applied", extra=fields(job_id=...))`."""
    return {"fields": {name: value for name, value in values.items() if value is not None}}
