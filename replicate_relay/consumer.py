"""Consuming job-events from a pull subscription: typed events, acknowledged once the app's callback returns."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler
from pydantic import ValidationError

from replicate_relay.jobevents import JobEvent

log = logging.getLogger("relay.consumer")

DEFAULT_REMEMBERED_IDS = 10_000


class RecentIds:
    """The ids of the events handled most recently, at most `size` of them (the oldest forgotten first)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        self._ids.move_to_end(event_id)
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)


@dataclass(frozen=True)
class ConsumerStats:
    """What a consumer did with the messages it was given, since it was made."""

    handled: int = 0  # the callback returned; acknowledged
    duplicates: int = 0  # an event_id handled before: acknowledged, the callback not called again
    failed: int = 0  # the callback raised: nacked, so Pub/Sub delivers it again
    undecodable: int = 0  # not a job event this version reads: nacked (dead-lettered after the subscription's attempts)

    @property
    def acknowledged(self) -> int:
        return self.handled + self.duplicates


class JobEventsConsumer:
    """Hands each job-events message of a pull subscription to `callback` as a replicate_relay.jobevents.JobEvent.

    A message is acknowledged only after `callback` returns; if it raises, the message is nacked
    (and logged) so Pub/Sub delivers it again, after the subscription's retry backoff. Streaming
    pull (google-cloud-pubsub's `SubscriberClient.subscribe`) runs `callback` on `concurrency`
    threads with at most `max_outstanding` messages leased at once.

    Pub/Sub delivers at least once: a message can come again even after it was acknowledged (the
    acknowledgement is lost, or arrives after the ack deadline), and Relay itself may announce a
    job twice (a crash between publishing and recording it). Both copies carry the same
    `event_id`, so this consumer drops an event_id it handled successfully among the last
    `remember` ones. That memory is this process's only: across restarts or several consumers on
    one subscription, the app must also make its handling idempotent by `event_id` (e.g. a
    Firestore `create()` of a document named by it, or a unique key).
    """

    def __init__(
        self,
        subscription: str,
        callback: Callable[[JobEvent], Any],
        *,
        subscriber: pubsub_v1.SubscriberClient | None = None,
        max_outstanding: int = 100,
        concurrency: int = 1,
        remember: int = DEFAULT_REMEMBERED_IDS,
    ) -> None:
        self.subscription = subscription
        self._callback = callback
        self._subscriber = subscriber
        self._owns_subscriber = subscriber is None
        self._flow_control = pubsub_v1.types.FlowControl(max_messages=max_outstanding)
        self._concurrency = concurrency
        self._recent = RecentIds(remember)
        self._in_flight: set[str] = set()
        self._changed = threading.Condition()  # guards everything below; notified on every ack and at the stream's end
        self._stats = ConsumerStats()
        self._future: Any = None  # the StreamingPullFuture while the stream runs
        self._closing = False
        self._error: BaseException | None = None

    # ---- life cycle ----

    def start(self) -> None:
        """Open the streaming pull in the background (a no-op if it is open)."""
        with self._changed:
            if self._future is not None:
                return
            if self._subscriber is None:
                self._subscriber = pubsub_v1.SubscriberClient()
            self._closing = False
            self._error = None
            executor = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="relay-job-events")
            self._future = self._subscriber.subscribe(
                self.subscription,
                self._receive,
                flow_control=self._flow_control,
                scheduler=ThreadScheduler(executor),
                # close() waits for callbacks in progress, so their messages are acked or nacked.
                await_callbacks_on_shutdown=True,
            )
            self._future.add_done_callback(self._stream_ended)

    def run(self, *, max_messages: int | None = None, timeout: float | None = None) -> ConsumerStats:
        """Consume until `max_messages` more messages are acknowledged (handled or duplicates), `timeout`
        seconds pass, close() is called from another thread, or the stream fails (raised here); then
        close. Without either bound it runs until one of the last two. Returns the stats so far.
        """
        start = self.stats.acknowledged
        self.start()
        try:
            with self._changed:
                self._changed.wait_for(
                    lambda: (
                        self._closing
                        or self._future is None
                        or self._future.done()
                        or (max_messages is not None and self._stats.acknowledged - start >= max_messages)
                    ),
                    timeout,
                )
        finally:
            self.close()
        if self._error is not None:
            raise self._error
        return self.stats

    def close(self, timeout: float | None = 30) -> None:
        """Stop pulling; messages leased but not handed over yet go back to Pub/Sub, callbacks in
        progress finish (up to `timeout` seconds) and their messages are settled. Idempotent."""
        with self._changed:
            future, self._future = self._future, None
            self._closing = True
            self._changed.notify_all()
        if future is not None:
            future.cancel()
            try:
                future.result(timeout=timeout)
            except Exception as error:  # the stream's own failure, kept for run() to raise
                log.error("job-events stream on %s ended with %r", self.subscription, error)
                self._error = error
        if self._owns_subscriber and self._subscriber is not None:
            self._subscriber.close()
            self._subscriber = None

    def __enter__(self) -> JobEventsConsumer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def stats(self) -> ConsumerStats:
        with self._changed:
            return self._stats

    # ---- one message (on the scheduler's threads) ----

    def _receive(self, message: Any) -> None:
        try:
            event = JobEvent.model_validate_json(message.data)
        except ValidationError as error:
            log.error(
                "job-events message %s is not a job event this version reads; nacked: %s",
                message.message_id,
                error,
            )
            self._count(undecodable=1)
            message.nack()
            return
        with self._changed:
            if event.event_id in self._recent:
                duplicate = True
            elif event.event_id in self._in_flight:
                # Another copy is in the callback right now: this one comes back later and is
                # dropped then if that one succeeded.
                message.nack()
                return
            else:
                self._in_flight.add(event.event_id)
                duplicate = False
        if duplicate:
            log.info("job-events %s: event %s handled before, dropped", message.message_id, event.event_id)
            message.ack()
            self._count(duplicates=1)
            return
        try:
            self._callback(event)
        except Exception:
            log.exception(
                "job-events callback failed on event %s (message %s, delivery attempt %s); nacked for redelivery",
                event.event_id,
                message.message_id,
                message.delivery_attempt,
            )
            with self._changed:
                self._in_flight.discard(event.event_id)
            message.nack()
            self._count(failed=1)
            return
        with self._changed:
            # Remembered before the ack: if the ack is lost, the redelivery is dropped.
            self._in_flight.discard(event.event_id)
            self._recent.add(event.event_id)
        message.ack()
        self._count(handled=1)

    def _count(self, **increments: int) -> None:
        """Add to the stats (after the message is settled) and wake run()."""
        with self._changed:
            current = self._stats
            self._stats = replace(current, **{name: getattr(current, name) + n for name, n in increments.items()})
            self._changed.notify_all()

    def _stream_ended(self, _future: Any) -> None:
        with self._changed:
            self._changed.notify_all()
