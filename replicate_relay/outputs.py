"""Reading a prediction's `output`: which parts are files to archive and which are plain values."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# A whole string that is a URL with an authority (https://…, but also file://…, ftp://…) or a data:
# URI is a file reference. Every scheme is caught here so that the downloader can refuse the ones it
# does not fetch, rather than such a string passing silently as text.
_FILE_REFERENCE = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://|data:)\S*")


@dataclass(frozen=True)
class OutputFile:
    """One file reference found in an output, in the order it appears."""

    index: int
    url: str


class ArchivedObject(BaseModel):
    """An output file copied into Cloud Storage. (Jobs written before Relay kept values whole also
    hold one entry of index null: the plain output too large for their document, `output.json`.)"""

    # Every field is always written, so a reader can count on each key being there.
    model_config = ConfigDict(frozen=True, json_schema_serialization_defaults_required=True)

    index: int | None = Field(
        description="Position of the file among the output's file references, depth first, from 0; null for "
        "`output.json` in jobs written before values too large for the document went to `stored_values`."
    )
    source_url: str | None = Field(
        description="Where Replicate served the file, as scheme://host/path (a query string may carry a token, so "
        "it is dropped); for a `data:` URI, `data:` and its media type only; null for `output.json`."
    )
    gs_uri: str = Field(
        description="The copy: gs://BUCKET/predictions/{prediction_id}/{index}-{file name} (…/output.json for index "
        "null)."
    )
    content_type: str = Field(description="The object's Content-Type, as the download declared it.")
    size: int = Field(description="The object's size in bytes.")
    crc32c: str = Field(
        description="CRC32C of the object, base64 of the big-endian 4 bytes, as Cloud Storage reports it."
    )
    already_archived: bool = Field(
        description="True when an earlier delivery had stored this object already and it was not copied again."
    )

    def to_document(self) -> dict[str, Any]:
        return self.model_dump()


class FailedOutput(BaseModel):
    """An output file that could not be archived; the job is then `failed` with the same `error_code`."""

    model_config = ConfigDict(frozen=True, json_schema_serialization_defaults_required=True)

    index: int = Field(description="Position of the file among the output's file references, depth first, from 0.")
    source_url: str | None = Field(
        description="The file's URL as scheme://host/path (query dropped; for a `data:` URI its media type only)."
    )
    error_code: str = Field(
        description="`output_expired` (the delivery host answered 404/410), `output_refused` (the URL broke the "
        "download rules: host, scheme, address, size) or `archive_conflict` (a different object already had the name)."
    )
    error: str = Field(description="What went wrong, for a person.")

    def to_document(self) -> dict[str, Any]:
        return self.model_dump()


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
