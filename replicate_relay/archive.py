"""Copying a prediction's outputs into Cloud Storage: streamed, checksummed, written once."""

from __future__ import annotations

import base64

import google.cloud.storage as storage
import google_crc32c
from google.api_core import exceptions as google_exceptions

from replicate_relay import telemetry
from replicate_relay.downloads import Download, Downloader, safe_url

# Defined in the one exception tree, replicate_relay/errors.py; still importable from here.
from replicate_relay.errors import ArchiveConflict as ArchiveConflict  # noqa: PLC0414 - re-export
from replicate_relay.outputs import ArchivedObject, OutputFile

# A training's weights are often gigabytes: streamed like any file (memory stays at about one chunk),
# they are bounded by time instead. The copy must finish within archive-outputs's ack deadline (300 s,
# infra/topology.yaml) or Pub/Sub delivers the message again while it runs: 10 GiB takes that at
# 34 MiB/s. Raise RELAY_WEIGHTS_MAX_BYTES together with that deadline (Pub/Sub allows 600 s).
DEFAULT_WEIGHTS_MAX_BYTES = 10 * 1024**3


def object_name(prediction_id: str, index: int, file_name: str) -> str:
    return f"predictions/{prediction_id}/{index}-{file_name}"


class Archiver:
    """Streams each file from its download into one object, so memory stays at about one chunk."""

    def __init__(
        self,
        bucket: storage.Bucket,
        downloader: Downloader,
        *,
        chunk_bytes: int = 8 * 1024 * 1024,
        weights_max_bytes: int = DEFAULT_WEIGHTS_MAX_BYTES,
    ) -> None:
        """`weights_max_bytes`: the size cap of a training's output files (its weights) instead of the
        downloader's, which is sized for predictions' outputs."""
        self._bucket = bucket
        self._downloader = downloader
        self._chunk_bytes = chunk_bytes
        self.weights_max_bytes = weights_max_bytes

    def archive_file(self, prediction_id: str, output: OutputFile, *, max_bytes: int | None = None) -> ArchivedObject:
        """Copy one output file; raises the downloader's errors, ArchiveConflict or Google API errors.

        `max_bytes` replaces the downloader's size cap for this file (see Downloader.open)."""
        with telemetry.tracer().start_as_current_span(
            "archive file",
            attributes={"relay.output.index": output.index, "relay.output.url": safe_url(output.url)},
        ) as span:
            archived = self._archive_file(prediction_id, output, max_bytes)
            span.set_attributes(
                {
                    "relay.output.gs_uri": archived.gs_uri,
                    "relay.output.size": archived.size,
                    "relay.output.already_archived": archived.already_archived,
                }
            )
            return archived

    def _archive_file(self, prediction_id: str, output: OutputFile, max_bytes: int | None) -> ArchivedObject:
        # One call into the downloader: the URL is checked (a refused URL stays refused, archived or
        # not) and named at once; its body is fetched only if the object is not stored yet.
        with self._downloader.open(output.url, max_bytes=max_bytes) as download:
            name = object_name(prediction_id, output.index, download.file_name)
            existing = self._stored(name)
            if existing is not None:
                # A redelivered message: the object is complete (GCS shows only finished uploads), so
                # the file is not fetched again, which also matters once Replicate has deleted it.
                return self._describe(existing, output.index, download.url, already=True)
            return self._upload(name, ChecksummingReader(download), download, output.index)

    def _stored(self, name: str) -> storage.Blob | None:
        """The object `name`, if it exists: listed with its name as the prefix, not fetched.

        A GET of a missing object answers 404, which the storage client's and requests' tracing
        record as failed calls: every first copy of a healthy job's files showed two errors per
        file in its trace. A name sorts before every longer name it prefixes, so the first object
        listed is the one, if it exists. (Listing needs storage.objects.list, in objectViewer.)
        """
        for blob in self._bucket.list_blobs(prefix=name, max_results=1):
            return blob if blob.name == name else None
        return None

    def _upload(self, name: str, reader: ChecksummingReader, download: Download, index: int) -> ArchivedObject:
        blob = self._bucket.blob(name, chunk_size=self._chunk_bytes)
        try:
            # if_generation_match=0: create only. Small files (size known, at most 8 MiB) go up in one
            # request, larger or unknown-size ones as a resumable upload, one chunk in memory at a time.
            # The library's retries are off: a non-seekable stream cannot be rewound, so a failure is
            # retried by Pub/Sub redelivering the message.
            blob.upload_from_file(
                reader,
                size=download.content_length,
                content_type=download.content_type,
                if_generation_match=0,
                retry=None,
                checksum=None,
            )
        except google_exceptions.PreconditionFailed:
            return self._already_there(name, reader, index, download.url)
        if blob.size != reader.size or blob.crc32c != reader.crc32c:
            raise ArchiveConflict(
                f"gs://{self._bucket.name}/{name} holds {blob.size} bytes (crc32c {blob.crc32c}) but "
                f"{reader.size} bytes (crc32c {reader.crc32c}) were sent"
            )
        return self._describe(blob, index, download.url, already=False)

    def _already_there(
        self, name: str, reader: ChecksummingReader, index: int | None, url: str | None
    ) -> ArchivedObject:
        """Another delivery won the race: fine if it stored the same bytes."""
        reader.drain()
        existing = self._bucket.get_blob(name)
        if existing is None or existing.size != reader.size or existing.crc32c != reader.crc32c:
            raise ArchiveConflict(f"gs://{self._bucket.name}/{name} already exists with different content")
        return self._describe(existing, index, url, already=True)

    def _describe(self, blob: storage.Blob, index: int | None, url: str | None, *, already: bool) -> ArchivedObject:
        return ArchivedObject(
            index=index,
            source_url=url,
            gs_uri=f"gs://{self._bucket.name}/{blob.name}",
            content_type=blob.content_type or "application/octet-stream",
            size=int(blob.size or 0),
            crc32c=blob.crc32c or "",
            already_archived=already,
        )


class ChecksummingReader:
    """A download read as a file, counting bytes and computing CRC32C on the way (no copy)."""

    def __init__(self, download: Download) -> None:
        self._download = download
        # google-crc32c ships no type annotations, hence the ignores below.
        self._checksum = google_crc32c.Checksum()  # type: ignore[no-untyped-call]
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._download.read(size)
        self._checksum.update(data)  # type: ignore[no-untyped-call]
        self.size += len(data)
        return data

    def tell(self) -> int:
        return self.size

    def drain(self) -> None:
        """Read the rest, so size and checksum describe the whole file."""
        while self.read(1024 * 1024):
            pass

    @property
    def crc32c(self) -> str:
        digest: bytes = self._checksum.digest()  # type: ignore[no-untyped-call]
        return base64.b64encode(digest).decode("ascii")
