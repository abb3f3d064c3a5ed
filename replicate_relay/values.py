"""Replicate's JSON on a job document: JSON text Firestore always accepts, the largest values in the bucket.

A model's input and output are any JSON: arrays of arrays (embeddings, boxes, masks), empty keys,
nesting past Firestore's 20 levels, integers past 64 bits, megabytes of text. Firestore's maps hold
none of these, so a job keeps each of a prediction's values (VALUE_FIELDS) as compact JSON text in a
string field, which Firestore stores whatever the JSON says, and parses it back on read: equal to
what Replicate sent (Python's JSON writes each float as the shortest text that reads back the same
double, and integers of any size exactly).

A document holds at most 1 MiB. When a job's values together exceed the inline budget, the largest
go to Cloud Storage as objects of their own (`ValueStore`), content-addressed so a retried write
finds its object already there, and the document keeps a `StoredValue` link in their place.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import google_crc32c
from google.api_core import exceptions as google_exceptions
from pydantic import BaseModel, ConfigDict, Field

# Defined in the one exception tree, replicate_relay/errors.py; still importable from here.
from replicate_relay.errors import Unstorable as Unstorable  # noqa: PLC0414 - re-export

if TYPE_CHECKING:
    import google.cloud.storage as storage

# The prediction's values, as the job names them. Each is stored as `{name}_json` text, or linked
# from `stored_values[name]` when it lives in the bucket.
VALUE_FIELDS = ("input", "output", "error", "metrics", "logs")
# Inline JSON text of all values together: a quarter of Firestore's 1 MiB document limit, which
# leaves the rest of the job (outputs, logs tail, timestamps) far from it.
DEFAULT_INLINE_BYTES = 256 * 1024


class StoredValue(BaseModel):
    """A value of the prediction kept in Cloud Storage because the job document could not hold it inline."""

    model_config = ConfigDict(frozen=True, json_schema_serialization_defaults_required=True)

    gs_uri: str = Field(description="The object: gs://BUCKET/jobs/{job_id}/{field}-{sha256 prefix}.json, JSON text.")
    size: int = Field(description="The object's size in bytes (UTF-8 JSON text).")
    crc32c: str = Field(
        description="CRC32C of the object, base64 of the big-endian 4 bytes, as Cloud Storage reports it."
    )


def dumps(value: Any) -> str:
    """Compact JSON text of `value`, valid UTF-8 whatever it holds.

    JSON may carry a lone surrogate (`"\\ud800"`), which UTF-8 cannot: such a value is written with
    every non-ASCII character escaped, which reads back the same. Raises Unstorable for what JSON
    itself cannot say (NaN, a nesting deeper than the interpreter's recursion limit).
    """
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        if not is_utf8(text):
            text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError, RecursionError) as error:
        raise Unstorable(f"not representable as JSON: {type(error).__name__}: {str(error)[:200]}") from None
    return text


def is_utf8(text: str) -> bool:
    """Whether `text` can be written as UTF-8: it holds no lone surrogate ("\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def loads(text: str) -> Any:
    """The value `dumps` wrote."""
    return json.loads(text)


def text_size(text: str) -> int:
    return len(text.encode("utf-8"))


@dataclass(frozen=True)
class Placement:
    """Where each of a job's values goes: inline JSON text, or to the bucket."""

    inline: dict[str, str]
    to_bucket: dict[str, str]


def place(texts: Mapping[str, str], inline_bytes: int) -> Placement:
    """Keep values inline while they fit `inline_bytes` together; move the largest out first."""
    inline = dict(texts)
    sizes = {name: text_size(text) for name, text in texts.items()}
    total = sum(sizes.values())
    to_bucket: dict[str, str] = {}
    for name in sorted(texts, key=lambda name: sizes[name], reverse=True):
        if total <= inline_bytes:
            break
        to_bucket[name] = inline.pop(name)
        total -= sizes[name]
    return Placement(inline, to_bucket)


def object_name(job_id: str, field: str, text: str) -> str:
    """Content-addressed: one value has one name, so writing it again finds it there."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
    return f"jobs/{job_id}/{field}-{digest}.json"


def _crc32c(data: bytes) -> str:
    # google-crc32c ships no type annotations.
    checksum = google_crc32c.Checksum(data)  # type: ignore[no-untyped-call]
    digest: bytes = checksum.digest()  # type: ignore[no-untyped-call]
    return base64.b64encode(digest).decode("ascii")


class ValueStore:
    """Values too large for a job document, as JSON objects in the archive bucket."""

    def __init__(self, bucket: storage.Bucket) -> None:
        self._bucket = bucket

    def uri(self, name: str) -> str:
        return f"gs://{self._bucket.name}/{name}"

    def put(self, job_id: str, field: str, text: str) -> StoredValue:
        """Store one value (created once: a second write of the same value finds it there)."""
        data = text.encode("utf-8")
        name = object_name(job_id, field, text)
        stored = StoredValue(gs_uri=self.uri(name), size=len(data), crc32c=_crc32c(data))
        with contextlib.suppress(google_exceptions.PreconditionFailed):  # the same name is the same bytes
            self._bucket.blob(name).upload_from_string(
                data, content_type="application/json", if_generation_match=0, checksum="crc32c"
            )
        return stored

    def get(self, stored: StoredValue) -> Any:
        """The value behind a link; ValueError if the object is not what the link describes."""
        prefix = f"gs://{self._bucket.name}/"
        if not stored.gs_uri.startswith(prefix):
            raise ValueError(f"{stored.gs_uri} is not in bucket {self._bucket.name}")
        data = self._bucket.blob(stored.gs_uri.removeprefix(prefix)).download_as_bytes(checksum="crc32c")
        if len(data) != stored.size or _crc32c(data) != stored.crc32c:
            raise ValueError(f"{stored.gs_uri} does not match its size and CRC32C")
        return loads(data.decode("utf-8"))
