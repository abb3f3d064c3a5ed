"""The receiver's core: from headers and a body stream to a message Pub/Sub has stored."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from receiver import errors
from receiver.limiter import FailureLimiter, InFlight
from receiver.settings import ReceiverSettings
from replicate_relay.bodies import BodyStore
from replicate_relay.events import EventAttributes, PayloadError, Source, parse_prediction_ref
from replicate_relay.publisher import AsyncPublisher, PublishError
from replicate_relay.serve import BoundedBody
from replicate_relay.webhooks import SignatureCheck, VerificationError, VerifiedWebhook, check_headers

# How long a large body waits for the one per process being read before the receiver answers 503
# (Replicate retries it); far inside Replicate's own request timeout.
LARGE_BODY_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class Accepted:
    """A webhook that is now durably on the topic."""

    prediction_id: str
    status: str
    webhook_id: str
    message_id: str


class Intake:
    """Verifies, validates and publishes one webhook. One instance per process.

    Everything that needs no body is checked before any of it is read: the client's limits, the
    content type, the three webhook headers and their timestamp, the declared length. A request
    refused on those costs its headers only, whatever body it was sending.
    """

    def __init__(
        self,
        settings: ReceiverSettings,
        publisher: AsyncPublisher,
        *,
        bodies: BodyStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`bodies`: where bodies past settings.max_body_bytes go (up to max_stored_body_bytes);
        without it they are refused with 413."""
        self._settings = settings
        self._publisher = publisher
        self._bodies = bodies if settings.max_stored_body_bytes else None
        self._clock = clock
        # One large body read at a time per process: what bounds the receiver's memory (settings.py).
        self._large = asyncio.Semaphore(1)
        self.limiter = FailureLimiter(
            burst=settings.failure_burst,
            per_second=settings.failure_per_second,
            max_clients=settings.failure_max_clients,
            max_in_flight=settings.max_in_flight_per_client,
        )

    async def handle(
        self,
        headers: Mapping[str, str],
        body: AsyncIterator[bytes],
        *,
        client: str,
    ) -> Accepted:
        """Raise an `errors.Rejected` subclass for anything that is not a validly signed prediction."""
        in_flight = self.limiter.admit(client, self._clock())
        if in_flight is None:
            raise errors.TooManyFailures("too_many_failures", "too many failed or pending requests from this client")
        try:
            return await self._handle(headers, body, in_flight)
        except errors.PublishUnavailable:
            raise
        except errors.Rejected:
            self.limiter.record_failure(client, self._clock())
            raise
        finally:
            in_flight.release()

    async def _handle(self, headers: Mapping[str, str], body: AsyncIterator[bytes], in_flight: InFlight) -> Accepted:
        check_content_type(headers.get("content-type"))
        try:
            signed = check_headers(headers, now=self._clock(), tolerance_seconds=self._settings.tolerance_seconds)
        except VerificationError as error:
            raise _rejected(error) from None
        inline = self._settings.max_body_bytes
        limit = inline if self._bodies is None else self._settings.max_stored_body_bytes
        declared = declared_length(headers.get("content-length"), limit)
        signature = SignatureCheck(signed, self._settings.signing_keys)
        async with contextlib.AsyncExitStack() as large:
            raw = await read_body(
                body,
                declared,
                limit,
                on_piece=signature.update,
                past=inline if self._bodies is not None else None,
                on_past=lambda: self._enter_large(large),
            )
            try:
                verified = signature.verified()
            except VerificationError as error:
                raise _rejected(error) from None
            in_flight.release()  # signed by Replicate: no longer counted against its address
            return await self._publish(raw, verified)

    async def _publish(self, raw: bytes, verified: VerifiedWebhook) -> Accepted:
        try:
            prediction = parse_prediction_ref(raw)
        except PayloadError as error:
            raise errors.BadRequest(error.reason, error.message) from None
        attributes = EventAttributes.of(prediction, verified.webhook_id, verified.timestamp, Source.WEBHOOK)
        data, message_attributes = raw, attributes.to_message()
        if self._bodies is not None and len(raw) > self._settings.max_body_bytes:
            try:
                data, message_attributes = await asyncio.to_thread(
                    self._bodies.message, raw, message_attributes, prediction.id
                )
            except Exception as error:  # any failure to store it: Replicate retries the 503
                raise errors.PublishUnavailable("body_store_failed", f"{type(error).__name__}: {error}") from None
        try:
            # The exact verified bytes go on the topic (or to the bucket), so a handler can re-verify or replay them.
            message_id = await self._publisher.publish(data, message_attributes)
        except PublishError as error:
            raise errors.PublishUnavailable("publish_failed", str(error)) from None
        return Accepted(prediction.id, prediction.status, verified.webhook_id, message_id)

    async def _enter_large(self, large: contextlib.AsyncExitStack) -> None:
        """Before a body is read past the inline limit (its headers have passed): wait for its turn
        (the semaphore, held until the request is done)."""
        try:
            await asyncio.wait_for(self._large.acquire(), LARGE_BODY_WAIT_SECONDS)
        except TimeoutError:
            raise errors.PublishUnavailable(
                "large_body_busy", "another large body is being received; retry shortly"
            ) from None
        large.callback(self._large.release)


def _rejected(error: VerificationError) -> errors.Rejected:
    kind = errors.BadRequest if error.malformed else errors.Unauthorized
    return kind(error.reason, error.message, verification=True)


def check_content_type(value: str | None) -> None:
    """Replicate sends application/json; accept any JSON media type, with parameters."""
    media_type = (value or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        shown = media_type[:64] or "none"
        raise errors.UnsupportedMediaType("unsupported_media_type", f"content type {shown!r} is not JSON")


def declared_length(value: str | None, limit: int) -> int | None:
    """The Content-Length, checked against `limit` before anything is read (None: chunked)."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise errors.BadRequest("malformed_content_length", "content-length is not a whole number")
    if int(value) > limit:
        raise _too_large(limit)
    return int(value)


def _too_large(limit: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge("body_too_large", f"body is larger than {limit} bytes")


async def read_body(
    chunks: AsyncIterator[bytes],
    declared: int | None,
    limit: int,
    *,
    on_piece: Callable[[bytes], None] | None = None,
    past: int | None = None,
    on_past: Callable[[], Awaitable[None]] | None = None,
) -> bytes:
    """Read at most `limit` bytes, handing each piece to `on_piece` as it comes; a declared or
    actual size above the limit is refused without reading on.

    `on_past` is awaited once before the body is read beyond `past` bytes (declared or as it
    shows), and may refuse it by raising."""
    body = BoundedBody(limit, lambda _: _too_large(limit), declared=declared)
    size = 0
    if past is not None and on_past is not None and declared is not None and declared > past:
        await on_past()
        past = None
    async for chunk in chunks:
        size += len(chunk)
        if past is not None and on_past is not None and size > past:
            await on_past()
            past = None
        body.add(chunk)
        if on_piece is not None:
            on_piece(chunk)
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
