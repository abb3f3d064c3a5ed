"""Helpers for tests, the demo and benchmarks: Replicate-shaped predictions, signed webhooks, and
the receiver's stand-ins for Pub/Sub and a request body."""

from __future__ import annotations

import json
import struct
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from replicate_relay.publisher import PublishError
from replicate_relay.webhooks import parse_secret, signed_headers


@dataclass(frozen=True)
class SignedWebhook:
    """A webhook request as Replicate would send it."""

    headers: dict[str, str]
    body: bytes
    webhook_id: str
    timestamp: int


def sign_webhook(
    prediction: dict[str, Any],
    secrets: Sequence[str],
    *,
    webhook_id: str | None = None,
    timestamp: int | None = None,
    body: bytes | None = None,
) -> SignedWebhook:
    """Sign `prediction` (or the exact `body`) with every secret, as Replicate does."""
    raw = body if body is not None else json.dumps(prediction, separators=(",", ":")).encode("utf-8")
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers = signed_headers([parse_secret(secret) for secret in secrets], webhook_id, timestamp, raw)
    headers["content-type"] = "application/json"
    return SignedWebhook(headers=headers, body=raw, webhook_id=webhook_id, timestamp=timestamp)


def prediction_lifecycle(
    prediction_id: str,
    *,
    model: str = "flux-kontext-apps/restore-image",
    output: Any = "restored: a sample text output",
    progress_events: int = 1,
    started: datetime | None = None,
) -> list[dict[str, Any]]:
    """The prediction bodies Replicate sends for one successful run, in order:
    `starting`, `progress_events` × `processing` (logs growing), `succeeded`."""
    created = started or datetime.now(UTC).replace(microsecond=0)
    base: dict[str, Any] = {
        "id": prediction_id,
        "model": model,
        "version": "0" * 64,
        "input": {"input_image": "https://example.com/old-photo.jpg", "seed": 42, "output_format": "png"},
        "output": None,
        "error": None,
        "logs": "",
        "created_at": _iso(created),
        "started_at": None,
        "completed_at": None,
        "data_removed": False,
        "metrics": {},
        "urls": {"get": f"https://api.replicate.com/v1/predictions/{prediction_id}"},
    }
    events = [{**base, "status": "starting"}]
    logs = ""
    for step in range(progress_events):
        logs += f"step {step + 1}/{progress_events}\n"
        events.append(
            {**base, "status": "processing", "started_at": _iso(created + timedelta(seconds=1)), "logs": logs}
        )
    events.append(
        {
            **base,
            "status": "succeeded",
            "started_at": _iso(created + timedelta(seconds=1)),
            "completed_at": _iso(created + timedelta(seconds=3)),
            "logs": logs + "done\n",
            "output": output,
            "metrics": {"predict_time": 2.0},
        }
    )
    return events


def succeeded_webhook(secret: str) -> SignedWebhook:
    """One freshly signed `succeeded` webhook of a new prediction with one file output, shaped like
    Replicate's (about 1 kB): what the receiver benchmarks send."""
    succeeded = prediction_lifecycle(
        uuid.uuid4().hex[:26],
        output=f"https://replicate.delivery/xezq/{uuid.uuid4().hex}/output.png",
        progress_events=3,
    )[-1]
    return sign_webhook(succeeded, [secret])


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class RecordingPublisher:
    """Stands in for AsyncTopicPublisher in the receiver's tests: records every publish and can be
    told to fail."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[bytes, dict[str, str]]] = []

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> str:
        self.calls.append((data, dict(attributes)))
        if self.fail:
            raise PublishError("Pub/Sub did not acknowledge within 5 s")
        return f"message-{len(self.calls)}"


class ChunkStream:
    """An async iterator of body chunks that counts how many were pulled."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = list(chunks)
        self.pulled = 0

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> bytes:
        if self.pulled >= len(self._chunks):
            raise StopAsyncIteration
        self.pulled += 1
        return self._chunks[self.pulled - 1]


def png(seed: int) -> bytes:
    """A valid 2×2 RGB PNG whose pixels depend on `seed`."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes((seed * 40 + row * 7 + i) % 256 for i in range(6)) for row in range(2))
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
