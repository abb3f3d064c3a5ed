"""Publishing to Pub/Sub and awaiting the server's acknowledgement, with a deadline."""

from __future__ import annotations

import asyncio

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core import retry as retries
from google.cloud.pubsub_v1.types import BatchSettings, PublisherOptions


class PublishError(Exception):
    """Pub/Sub did not confirm the message within the deadline; the caller must not acknowledge."""


def make_publisher(*, deadline_seconds: float) -> pubsub_v1.PublisherClient:
    """A publisher client whose own retries stop at the deadline the caller will wait for.

    Batching is kept short (2 ms): under load it still groups concurrent publishes into one
    request, which is what lets one receiver instance keep up, while a lone webhook waits
    at most 2 ms for company. The client honours PUBSUB_EMULATOR_HOST on its own.
    """
    retry = retries.Retry(initial=0.05, maximum=1.0, multiplier=2.0, timeout=deadline_seconds)
    return pubsub_v1.PublisherClient(
        batch_settings=BatchSettings(max_latency=0.002, max_messages=100, max_bytes=1_000_000),
        publisher_options=PublisherOptions(retry=retry, timeout=deadline_seconds),
    )


class EventPublisher:
    """Publishes to one topic and resolves only once Pub/Sub has stored the message."""

    def __init__(self, client: pubsub_v1.PublisherClient, topic_path: str, *, deadline_seconds: float) -> None:
        self._client = client
        self.topic_path = topic_path
        self._deadline = deadline_seconds

    async def publish(self, data: bytes, attributes: dict[str, str]) -> str:
        """Publish and wait for the server's message id. Raises PublishError on failure or timeout."""
        try:
            future = self._client.publish(self.topic_path, data, **attributes)
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=self._deadline)
        except TimeoutError:
            raise PublishError(f"Pub/Sub did not acknowledge within {self._deadline:g} s") from None
        except Exception as error:  # any client or transport failure means "not durably stored"
            raise PublishError(f"publish failed: {type(error).__name__}: {error}") from error

    def publish_sync(self, data: bytes, attributes: dict[str, str]) -> str:
        """The blocking form, for handlers and command-line tools."""
        try:
            return str(self._client.publish(self.topic_path, data, **attributes).result(timeout=self._deadline))
        except Exception as error:
            raise PublishError(f"publish failed: {type(error).__name__}: {error}") from error
