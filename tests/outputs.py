"""An output file as archive-outputs records it, for the tests of what stores, validates and announces it."""

from __future__ import annotations

from replicate_relay.outputs import ArchivedObject

FILE = "https://replicate.delivery/p/out-0.png"
# The job document's entry for FILE, archived as the first output of prediction `p`.
ARCHIVED = ArchivedObject(
    index=0,
    source_url=FILE,
    gs_uri="gs://bucket/predictions/p/0-out-0.png",
    content_type="image/png",
    size=3,
    crc32c="AAAAAA==",
    already_archived=False,
).to_document()
