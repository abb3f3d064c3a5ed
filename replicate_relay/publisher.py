"""Publishing to Pub/Sub and awaiting the server's acknowledgement, with a deadline.

Two publishers, for two kinds of caller:

- `AsyncTopicPublisher` (the receiver): runs on the event loop and sends every message published
  during one loop iteration in a single Publish call over a grpc.aio channel. Written by hand
  because google-cloud-pubsub's PublisherClient batches on threads behind a lock, at several
  times the CPU and latency per message (docs/PERFORMANCE.md). It uses the raw protobuf classes
  the library ships.
- `TopicPublisher` (handlers, command line): the library's PublisherClient, blocking.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Mapping
from typing import Protocol

import google.auth
import google.cloud.pubsub_v1 as pubsub_v1
import grpc
from google.api_core import grpc_helpers_async
from google.api_core import retry as retries
from google.cloud.pubsub_v1.types import BatchSettings, PublisherOptions
from google.pubsub_v1.types import pubsub

from replicate_relay import telemetry

# Defined in the one exception tree, replicate_relay/errors.py; still importable from here.
from replicate_relay.errors import PublishError as PublishError  # noqa: PLC0414 - re-export

_SCOPES = ("https://www.googleapis.com/auth/pubsub",)
_ENDPOINT = "pubsub.googleapis.com:443"
_METHOD = "/google.pubsub.v1.Publisher/Publish"
# Pub/Sub's limits on one Publish request: 1,000 messages and 10 MB.
_MAX_BATCH_MESSAGES = 1000
_MAX_BATCH_BYTES = 9_000_000
_MAX_IN_FLIGHT = 2
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
    }
)

_Request = pubsub.PublishRequest.pb()
_Message = pubsub.PubsubMessage.pb()
_Response = pubsub.PublishResponse.pb()


class AsyncPublisher(Protocol):
    """What the receiver needs of a publisher (tests pass a fake)."""

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> str: ...


class AsyncTopicPublisher:
    """Publishes to one topic from an asyncio event loop; create it inside the running loop."""

    def __init__(self, topic_path: str, *, deadline_seconds: float, channel: grpc.aio.Channel | None = None) -> None:
        self.topic_path = topic_path
        self._deadline = deadline_seconds
        self._channel = channel or _default_channel()
        self._call = self._channel.unary_unary(
            _METHOD, request_serializer=_Request.SerializeToString, response_deserializer=_Response.FromString
        )
        self._pending: list[tuple[object, asyncio.Future[str]]] = []
        self._pending_bytes = 0
        self._flush_scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> str:
        """Publish and wait for the server's message id. Raises PublishError on failure or timeout."""
        with telemetry.publish_span(self.topic_path, attributes, len(data)) as publish:
            message_id = await self._publish(data, publish.attributes)
            publish.sent(message_id)
            return message_id

    async def _publish(self, data: bytes, attributes: Mapping[str, str]) -> str:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        size = len(data) + sum(len(k) + len(v) for k, v in attributes.items())
        if self._pending and self._pending_bytes + size > _MAX_BATCH_BYTES:
            self._flush(full=True)
        self._pending.append((_Message(data=data, attributes=dict(attributes)), future))
        self._pending_bytes += size
        if len(self._pending) >= _MAX_BATCH_MESSAGES:
            self._flush(full=True)
        elif not self._flush_scheduled:
            # Everything published until the loop comes round again goes in the same request.
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        # One timer per message, cancelled on the answer: a third of the CPU of wait_for(shield()),
        # which wraps the future in two more.
        timer = loop.call_later(self._deadline, _expire, future, self._deadline)
        try:
            return await future
        finally:
            timer.cancel()

    async def close(self) -> None:
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await self._channel.close()

    def _flush(self, *, full: bool = False) -> None:
        self._flush_scheduled = False
        # At most _MAX_IN_FLIGHT requests at once: while they are out, new messages gather into
        # the next batch, so batches grow with load instead of the request count (which costs
        # CPU on both ends). A full batch goes at once.
        if not self._pending or (len(self._sending) >= _MAX_IN_FLIGHT and not full):
            return
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if self._pending and not self._flush_scheduled:
            self._flush()

    async def _send(self, batch: list[tuple[object, asyncio.Future[str]]]) -> None:
        request = _Request(topic=self.topic_path, messages=[message for message, _ in batch])
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._deadline
        delay = 0.05
        while True:
            remaining = give_up - loop.time()
            try:
                # wait_for_ready: while the channel reconnects, wait (within the deadline) rather
                # than fail at once.
                response = await self._call(request, timeout=max(remaining, 0.01), wait_for_ready=True)
                break
            except grpc.aio.AioRpcError as error:
                if error.code() not in _RETRYABLE or remaining <= delay:
                    _fail(batch, PublishError(f"publish failed: {error.code().name}: {error.details()}"))
                    return
            except Exception as error:  # a broken channel must fail the waiters, not strand them
                _fail(batch, PublishError(f"publish failed: {type(error).__name__}: {error}"))
                return
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not security
            delay = min(delay * 2, 1.0)
        for (_, future), message_id in zip(batch, response.message_ids, strict=True):
            if not future.done():
                future.set_result(message_id)


def _expire(future: asyncio.Future[str], deadline: float) -> None:
    if not future.done():
        future.set_exception(PublishError(f"Pub/Sub did not acknowledge within {deadline:g} s"))


def _fail(batch: list[tuple[object, asyncio.Future[str]]], error: PublishError) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)


# gRPC backs off reconnecting for up to two minutes by default: after a short Pub/Sub outage the
# receiver would keep answering 503 long after Pub/Sub is back. Keep reconnect attempts close.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def _default_channel() -> grpc.aio.Channel:
    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    if emulator:
        return grpc.aio.insecure_channel(emulator, options=_CHANNEL_OPTIONS)
    credentials, _ = google.auth.default(scopes=_SCOPES)
    return grpc_helpers_async.create_channel(
        _ENDPOINT, credentials=credentials, scopes=_SCOPES, options=_CHANNEL_OPTIONS
    )


class TopicPublisher:
    """Publishes to one topic and blocks until Pub/Sub has stored the message (handlers, CLI)."""

    def __init__(
        self, topic_path: str, *, deadline_seconds: float, client: pubsub_v1.PublisherClient | None = None
    ) -> None:
        self.topic_path = topic_path
        self._deadline = deadline_seconds
        # The client's own retries stop at the deadline the caller waits for. It honours
        # PUBSUB_EMULATOR_HOST by itself.
        retry = retries.Retry(initial=0.05, maximum=1.0, multiplier=2.0, timeout=deadline_seconds)
        self._client = client or pubsub_v1.PublisherClient(
            batch_settings=BatchSettings(max_latency=0.005),
            publisher_options=PublisherOptions(retry=retry, timeout=deadline_seconds),
        )

    def publish(self, data: bytes, attributes: Mapping[str, str]) -> str:
        """Publish and block until Pub/Sub has stored the message. Raises PublishError otherwise."""
        with telemetry.publish_span(self.topic_path, attributes, len(data)) as publish:
            try:
                future = self._client.publish(self.topic_path, data, **publish.attributes)
                message_id = str(future.result(timeout=self._deadline))
            except Exception as error:  # any client or transport failure means "not durably stored"
                raise PublishError(f"publish failed: {type(error).__name__}: {error}") from error
            publish.sent(message_id)
            return message_id
