"""Event bodies too large for a Pub/Sub message: kept in the bucket, the message carries a pointer.

Pub/Sub takes a message of at most 10 MB, and a training's webhook carries its whole logs, which
grow for hours. A body larger than the inline limit (RELAY_MAX_BODY_BYTES, 4 MiB) is stored as
`bodies/{prediction_id}/{sha256 prefix}.json` and published with empty data and the attributes
`body_uri`, `body_size` and `body_crc32c`; the handlers read it back (and check it) before parsing.
Content-addressed, so a retried webhook or a second reconciler finds its object there. The objects
are kept as long as the bucket keeps archived outputs, so a dead-lettered message can be replayed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import google_crc32c
from google.api_core import exceptions as google_exceptions

from replicate_relay.errors import PayloadError

if TYPE_CHECKING:
    import google.cloud.storage as storage

BODY_URI = "body_uri"
BODY_SIZE = "body_size"
BODY_CRC32C = "body_crc32c"
# A body up to this size travels in its message (Pub/Sub's cap is 10 MB, attributes included).
DEFAULT_INLINE_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class StoredBody:
    """Where an event's body is, and how to check it was read whole."""

    uri: str
    size: int
    crc32c: str

    def to_attributes(self) -> dict[str, str]:
        return {BODY_URI: self.uri, BODY_SIZE: str(self.size), BODY_CRC32C: self.crc32c}

    @classmethod
    def from_attributes(cls, attributes: Mapping[str, str]) -> StoredBody | None:
        """The pointer a message carries, None when its body is its data; PayloadError if malformed."""
        uri = attributes.get(BODY_URI)
        if uri is None:
            return None
        size = attributes.get(BODY_SIZE, "")
        crc = attributes.get(BODY_CRC32C, "")
        if not (uri.startswith("gs://") and size.isascii() and size.isdigit() and crc):
            raise PayloadError("invalid_attribute", "message attributes body_uri, body_size, body_crc32c are malformed")
        return cls(uri, int(size), crc)


def crc32c(data: bytes) -> str:
    """CRC32C as Cloud Storage reports it: base64 of the big-endian 4 bytes."""
    checksum = google_crc32c.Checksum(data)  # type: ignore[no-untyped-call]  # the package ships no types
    digest: bytes = checksum.digest()  # type: ignore[no-untyped-call]
    return base64.b64encode(digest).decode("ascii")


class BodyStore:
    """Event bodies in the archive bucket. Its calls block: the receiver makes them in a thread."""

    def __init__(self, bucket: storage.Bucket, *, inline_bytes: int = DEFAULT_INLINE_BODY_BYTES) -> None:
        self._bucket = bucket
        self.inline_bytes = inline_bytes

    def message(self, body: bytes, attributes: Mapping[str, str], prediction_id: str) -> tuple[bytes, dict[str, str]]:
        """The data and attributes to publish for `body`: itself, or (larger than the inline limit)
        nothing, and a pointer to where it is now stored."""
        if len(body) <= self.inline_bytes:
            return body, dict(attributes)
        return b"", {**attributes, **self.put(prediction_id, body).to_attributes()}

    def put(self, prediction_id: str, body: bytes) -> StoredBody:
        """Store one body (created once: the same bytes have the same name)."""
        name = f"bodies/{prediction_id}/{hashlib.sha256(body).hexdigest()[:32]}.json"
        stored = StoredBody(f"gs://{self._bucket.name}/{name}", len(body), crc32c(body))
        # Stored before (a retry of the same webhook) is fine: the same name holds the same bytes.
        with contextlib.suppress(google_exceptions.PreconditionFailed):
            self._bucket.blob(name).upload_from_string(
                body, content_type="application/json", if_generation_match=0, checksum="crc32c"
            )
        return stored

    def get(self, stored: StoredBody) -> bytes:
        """The body behind a pointer. PayloadError when it is not in this bucket, gone, or not what
        the pointer describes (no retry changes that); Google's errors otherwise."""
        prefix = f"gs://{self._bucket.name}/"
        if not stored.uri.startswith(prefix):
            raise PayloadError("body_elsewhere", f"{stored.uri} is not in bucket {self._bucket.name}")
        try:
            data: bytes = self._bucket.blob(stored.uri.removeprefix(prefix)).download_as_bytes(checksum="crc32c")
        except google_exceptions.NotFound:
            raise PayloadError("body_missing", f"{stored.uri} does not exist (deleted?)") from None
        if len(data) != stored.size or crc32c(data) != stored.crc32c:
            raise PayloadError("body_mismatch", f"{stored.uri} does not match the message's body_size and body_crc32c")
        return data
