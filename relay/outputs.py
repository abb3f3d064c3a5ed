"""Reading a prediction's `output`: which parts are files to archive and which are plain values."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# A whole string that is a URL with an authority (https://…, but also file://…, ftp://…) or a data:
# URI is a file reference. Every scheme is caught here so that the downloader can refuse the ones it
# does not fetch, rather than such a string passing silently as text.
_FILE_REFERENCE = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://|data:)\S*")


@dataclass(frozen=True)
class OutputFile:
    """One file reference found in an output, in the order it appears."""

    index: int
    url: str


def find_files(output: Any) -> list[OutputFile]:
    """Every URL or data: URI in `output`, depth first, whatever shape the model returned."""
    urls: list[str] = []
    stack: list[Any] = [output]
    while stack:  # iterative so a deeply nested output cannot exhaust the call stack
        item = stack.pop()
        if isinstance(item, str):
            if _FILE_REFERENCE.fullmatch(item):
                urls.append(item)
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
    return [OutputFile(index=index, url=url) for index, url in enumerate(urls)]


def plain_value(output: Any) -> Any:
    """The value to show for non-file output: a list of text tokens is joined into one string."""
    if isinstance(output, list) and output and all(isinstance(item, str) for item in output):
        return "".join(output)
    return output


def encoded_size(value: Any) -> int:
    """Size in bytes of `value` as compact JSON, the measure for "small enough for the job"."""
    return len(json.dumps(value, separators=(",", ":"), default=str).encode("utf-8"))
