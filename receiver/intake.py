"""The receiver's core: from headers and a body stream to a message Pub/Sub has stored."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from receiver import errors
from receiver.limiter import FailureLimiter
from receiver.settings import ReceiverSettings
from replicate_relay.events import EventAttributes, PayloadError, Source, parse_prediction_ref
from replicate_relay.publisher import AsyncPublisher, PublishError
from replicate_relay.serve import BoundedBody
from replicate_relay.webhooks import VerificationError, verify


@dataclass(frozen=True)
class Accepted:
    """A webhook that is now durably on the topic."""

    prediction_id: str
    status: str
    webhook_id: str
    message_id: str


class Intake:
    """Verifies, validates and publishes one webhook. One instance per process."""

    def __init__(
        self,
        settings: ReceiverSettings,
        publisher: AsyncPublisher,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._publisher = publisher
        self._clock = clock
        self.limiter = FailureLimiter(
            burst=settings.failure_burst,
            per_second=settings.failure_per_second,
            max_clients=settings.failure_max_clients,
        )

    async def handle(
        self,
        headers: Mapping[str, str],
        body: AsyncIterator[bytes],
        *,
        client: str,
    ) -> Accepted:
        """Raise an `errors.Rejected` subclass for anything that is not a validly signed prediction."""
        if not self.limiter.allows(client, self._clock()):
            raise errors.TooManyFailures("too_many_failures", "too many failed requests from this client; slow down")
        try:
            return await self._handle(headers, body)
        except errors.PublishUnavailable:
            raise
        except errors.Rejected:
            self.limiter.record_failure(client, self._clock())
            raise

    async def _handle(self, headers: Mapping[str, str], body: AsyncIterator[bytes]) -> Accepted:
        check_content_type(headers.get("content-type"))
        raw = await read_body(body, headers.get("content-length"), self._settings.max_body_bytes)
        try:
            verified = verify(
                headers,
                raw,
                keys=self._settings.signing_keys,
                now=self._clock(),
                tolerance_seconds=self._settings.tolerance_seconds,
            )
        except VerificationError as error:
            kind = errors.BadRequest if error.malformed else errors.Unauthorized
            raise kind(error.reason, error.message, verification=True) from None
        try:
            prediction = parse_prediction_ref(raw)
        except PayloadError as error:
            raise errors.BadRequest(error.reason, error.message) from None

        attributes = EventAttributes.of(prediction, verified.webhook_id, verified.timestamp, Source.WEBHOOK)
        try:
            # The exact verified bytes go on the topic, so a handler can re-verify or replay them.
            message_id = await self._publisher.publish(raw, attributes.to_message())
        except PublishError as error:
            raise errors.PublishUnavailable("publish_failed", str(error)) from None
        return Accepted(prediction.id, prediction.status, verified.webhook_id, message_id)


def check_content_type(value: str | None) -> None:
    """Replicate sends application/json; accept any JSON media type, with parameters."""
    media_type = (value or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        shown = media_type[:64] or "none"
        raise errors.UnsupportedMediaType("unsupported_media_type", f"content type {shown!r} is not JSON")


async def read_body(chunks: AsyncIterator[bytes], declared_length: str | None, limit: int) -> bytes:
    """Read at most `limit` bytes; a declared or actual size above it is refused without reading on."""
    if declared_length is not None and not (declared_length.isascii() and declared_length.isdigit()):
        raise errors.BadRequest("malformed_content_length", "content-length is not a whole number")
    declared = int(declared_length) if declared_length is not None else None
    body = BoundedBody(
        limit,
        lambda _: errors.PayloadTooLarge("body_too_large", f"body is larger than {limit} bytes"),
        declared=declared,
    )
    async for chunk in chunks:
        body.add(chunk)
    return body.joined()


def client_key(peer: str | None, forwarded_for: str | None, trusted_hops: int) -> str:
    """The address failures are counted against.

    Behind `trusted_hops` proxies that each append to X-Forwarded-For (Cloud Run's front end is
    one), the client is that many entries from the right; entries further left are whatever
    the client chose to send and are never trusted.
    """
    if trusted_hops > 0 and forwarded_for:
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        if len(hops) >= trusted_hops:
            return hops[-trusted_hops]
    return peer or "unknown"
