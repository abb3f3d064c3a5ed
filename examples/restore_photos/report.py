"""What a worker shows: a progress bar on stderr while it waits, then one row per photo."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

BAR_WIDTH = 24


@dataclass
class PhotoResult:
    """How one photo ended. `known_at` and `completed_at` are Unix times: when the worker learnt the
    prediction was final, and when Replicate says it finished."""

    photo: str
    state: str  # succeeded, failed, canceled, aborted, timed out, not submitted
    job_id: str | None = None
    prediction_id: str | None = None
    seconds: float | None = None  # submit → the worker knew
    files: list[str] = field(default_factory=list)
    reason: str | None = None
    known_at: float | None = None
    completed_at: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"


class Progress:
    """`done/total` as a bar redrawn in place on a terminal, one line per step otherwise (logs, CI)."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self._total = total
        self._done = 0
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._draw("")

    def advance(self, note: str) -> None:
        self._done += 1
        self._draw(note)

    def close(self) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self, note: str) -> None:
        if self._tty:
            filled = BAR_WIDTH * self._done // max(self._total, 1)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            # \x1b[K clears what a longer previous note left on the line.
            self._stream.write(f"\r{self._label} [{bar}] {self._done}/{self._total} {note}\x1b[K")
        elif note:
            self._stream.write(f"{self._label} {self._done}/{self._total}: {note}\n")
        self._stream.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; the columns in `right` aligned right (numbers)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def summary(results: Sequence[PhotoResult]) -> str:
    """The counts, then a row per photo: its result, the seconds from submit to knowing, files or reason."""
    succeeded = sum(result.succeeded for result in results)
    rows = [
        [
            result.photo,
            result.state,
            "-" if result.seconds is None else f"{result.seconds:.2f}",
            ", ".join(result.files) if result.succeeded else (result.reason or "-"),
        ]
        for result in results
    ]
    head = f"{succeeded} succeeded, {len(results) - succeeded} failed, of {len(results)} photos"
    return head + "\n\n" + table(["photo", "result", "seconds", "output / reason"], rows, right=[2])


def write_json(results: Sequence[PhotoResult], path: Path) -> None:
    """The same results for programs: a list of objects, one per photo."""
    path.write_text(json.dumps([asdict(result) for result in results], indent=2) + "\n", encoding="utf-8")
