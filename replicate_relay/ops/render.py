"""Rendering helpers shared by the operator commands: plain text tables, ages, JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, indent: str = "") -> str:
    """Left-aligned columns two spaces apart; None shows as '-'."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(str(header)), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join(
        indent + "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return iso(value)
    return str(value)


def iso(moment: datetime | None) -> str:
    """UTC to the second, as Replicate writes times; '-' for None."""
    if moment is None:
        return "-"
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def age(moment: datetime | None, now: datetime) -> str:
    """'42s ago', '3m ago', '5h ago', '2d ago'; '-' for None."""
    if moment is None:
        return "-"
    return f"{duration(now - moment)} ago"


def duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def to_json(value: Any) -> str:
    """Indented JSON; datetimes as ISO 8601, bytes as text. Non-ASCII characters as they are, unless
    the value holds a lone surrogate (JSON allows one, a terminal's UTF-8 does not): then escaped."""
    text = json.dumps(value, indent=2, default=_default, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, indent=2, default=_default)
    return text


def _default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
