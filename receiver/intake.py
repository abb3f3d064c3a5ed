"""The receiver's core: from headers and a body stream to a message Pub/Sub has stored."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from receiver import errors
from receiver.limiter import FailureLimiter
from receiver.settings import ReceiverSettings
from replicate_relay.bodies import BodyStore
from replicate_relay.events import EventAttributes, PayloadError, Source, parse_prediction_ref
from replicate_relay.publisher import AsyncPublisher, PublishError
from replicate_relay.serve import BoundedBody
from replicate_relay.webhooks import VerificationError, check_headers, verify

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
    """Verifies, validates and publishes one webhook. One instance per process."""

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
        async with contextlib.AsyncExitStack() as large:
            return await self._accept(headers, body, large)

    async def _accept(
        self, headers: Mapping[str, str], body: AsyncIterator[bytes], large: contextlib.AsyncExitStack
    ) -> Accepted:
        limit = self._settings.max_body_bytes
        if self._bodies is None:
            raw = await read_body(body, headers.get("content-length"), limit)
        else:
            raw = await read_body(
                body,
                headers.get("content-length"),
                self._settings.max_stored_body_bytes,
                past=limit,
                on_past=lambda: self._enter_large(headers, large),
            )
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
        data, message_attributes = raw, attributes.to_message()
        if self._bodies is not None and len(raw) > limit:
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

    async def _enter_large(self, headers: Mapping[str, str], large: contextlib.AsyncExitStack) -> None:
        """Before a body is read past the inline limit: its headers must be a webhook's, signed and in
        time (checked without the body, so a request that is not costs no more than a 4 MiB one),
        and it waits for its turn (the semaphore, held until the request is done)."""
        try:
            check_headers(headers, now=self._clock(), tolerance_seconds=self._settings.tolerance_seconds)
        except VerificationError as error:
            kind = errors.BadRequest if error.malformed else errors.Unauthorized
            raise kind(error.reason, error.message, verification=True) from None
        try:
            await asyncio.wait_for(self._large.acquire(), LARGE_BODY_WAIT_SECONDS)
        except TimeoutError:
            raise errors.PublishUnavailable(
                "large_body_busy", "another large body is being received; retry shortly"
            ) from None
        large.callback(self._large.release)


def check_content_type(value: str | None) -> None:
    """Replicate sends application/json; accept any JSON media type, with parameters."""
    media_type = (value or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        shown = media_type[:64] or "none"
        raise errors.UnsupportedMediaType("unsupported_media_type", f"content type {shown!r} is not JSON")


async def read_body(
    chunks: AsyncIterator[bytes],
    declared_length: str | None,
    limit: int,
    *,
    past: int | None = None,
    on_past: Callable[[], Awaitable[None]] | None = None,
) -> bytes:
    """Read at most `limit` bytes; a declared or actual size above it is refused without reading on.

    `on_past` is awaited once before the body is read beyond `past` bytes (declared or as it
    shows), and may refuse it by raising."""
    if declared_length is not None and not (declared_length.isascii() and declared_length.isdigit()):
        raise errors.BadRequest("malformed_content_length", "content-length is not a whole number")
    declared = int(declared_length) if declared_length is not None else None
    body = BoundedBody(
        limit,
        lambda _: errors.PayloadTooLarge("body_too_large", f"body is larger than {limit} bytes"),
        declared=declared,
    )
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
