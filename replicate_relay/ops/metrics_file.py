"""Recent webhook verification failures from the local OTLP/JSON metrics file of the dev stack.

Each process of the local stack appends one line of OTLP/JSON (`{"resourceMetrics": [...]}`) every
few seconds through OpenTelemetry's `FileMetricExporter`, with cumulative temporality: a line holds
each counter's total since that process started counting. "Failures in the last hour" is, for every
counting series (one process, one reason, one start time), its latest total minus its total at or
before an hour ago, or minus nothing when the series began within the hour.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from replicate_relay import rotation

METRIC = "relay.webhook.verification_failures"
ENV_VARIABLE = "RELAY_METRICS_FILE"
# Where the dev stack's telemetry writes unless RELAY_METRICS_FILE says otherwise: beside its logs.
DEFAULT_PATH = Path(__file__).resolve().parents[2] / ".relay" / "telemetry" / "metrics.jsonl"
_NAME = METRIC.encode()


def metrics_file_path(environ: Mapping[str, str]) -> Path:
    """RELAY_METRICS_FILE (relative to the current directory), else .relay/telemetry/metrics.jsonl in the repository."""
    value = environ.get(ENV_VARIABLE, "").strip()
    return Path(value) if value else DEFAULT_PATH


@dataclass(frozen=True)
class FailureCount:
    by_reason: dict[str, int]
    unreadable_lines: int = 0  # torn (a write in progress) or not OTLP/JSON; skipped

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


@dataclass
class _Series:
    """One cumulative counter: what it showed at the window's start and most recently."""

    start_ns: int
    first: int
    at_cutoff: int | None = None
    latest: int = 0
    latest_ns: int = field(default=-1)


def read_failures(path: Path, *, now: datetime, window: timedelta = timedelta(hours=1)) -> FailureCount:
    """Failures per reason within `window` before `now`, read line by line from `path` and the previous
    generation the dev stack keeps when it rotates it (FileNotFoundError if neither exists)."""
    files = rotation.generations(path)
    if not files:
        raise FileNotFoundError(errno.ENOENT, "no metrics file", str(path))
    return count_failures(_lines(files), now=now, window=window)


def _lines(files: Iterable[Path]) -> Iterator[bytes]:
    for file in files:
        with file.open("rb") as lines:
            yield from lines


def count_failures(lines: Iterable[bytes], *, now: datetime, window: timedelta) -> FailureCount:
    """The computation of `read_failures` over OTLP/JSON lines, oldest first."""
    cutoff_ns = _nanos(now - window)
    series: dict[tuple[str, str, int], _Series] = {}
    unreadable = 0
    for line in lines:
        if _NAME not in line:  # most lines carry other metrics only: skip them unparsed
            continue
        try:
            points = list(_points(json.loads(line)))
        except (ValueError, TypeError, KeyError, AttributeError):
            unreadable += 1
            continue
        for process, reason, start_ns, time_ns, value in points:
            current = series.setdefault((process, reason, start_ns), _Series(start_ns=start_ns, first=value))
            if time_ns <= cutoff_ns:
                current.at_cutoff = value
            if time_ns >= current.latest_ns:
                current.latest, current.latest_ns = value, time_ns
    by_reason: dict[str, int] = {}
    for (_, reason, _), counter in series.items():
        if counter.latest_ns <= cutoff_ns:
            continue  # nothing counted inside the window (the process had stopped before it)
        if counter.start_ns > cutoff_ns:
            baseline = 0
        else:
            # Began before the window. Without a point at or before the cutoff (the file was
            # started or emptied since), the earliest point kept is the best baseline there is.
            baseline = counter.at_cutoff if counter.at_cutoff is not None else counter.first
        by_reason[reason] = by_reason.get(reason, 0) + max(0, counter.latest - baseline)
    return FailureCount(by_reason=dict(sorted(by_reason.items())), unreadable_lines=unreadable)


def _points(document: Any) -> Iterable[tuple[str, str, int, int, int]]:
    """(process, reason, start ns, time ns, value) for each data point of METRIC in one line."""
    for resource_metrics in document["resourceMetrics"]:
        resource = _attributes(resource_metrics.get("resource", {}).get("attributes", []))
        # A process without service.instance.id is told apart by its whole resource.
        process = resource.get("service.instance.id") or json.dumps(resource, sort_keys=True)
        for scope_metrics in resource_metrics.get("scopeMetrics", []):
            for metric in scope_metrics.get("metrics", []):
                if metric.get("name") != METRIC or "sum" not in metric:
                    continue
                for point in metric["sum"].get("dataPoints", []):
                    reason = _attributes(point.get("attributes", [])).get("reason") or "unknown"
                    value = int(point["asInt"]) if "asInt" in point else round(float(point.get("asDouble", 0)))
                    yield process, reason, int(point["startTimeUnixNano"]), int(point["timeUnixNano"]), value


def _attributes(attributes: list[dict[str, Any]]) -> dict[str, str]:
    """OTLP/JSON `[{"key": k, "value": {"stringValue": v}}]` as {k: v}, every value as text."""
    result: dict[str, str] = {}
    for attribute in attributes:
        value = attribute.get("value", {})
        result[attribute["key"]] = str(next(iter(value.values()), "")) if value else ""
    return result


def _nanos(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
