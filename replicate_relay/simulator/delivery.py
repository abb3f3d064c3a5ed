"""Webhook delivery as Replicate does it: signed, throttled, the final event retried, with chaos on request."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import httpx

from replicate_relay.simulator.settings import Clock, SimConfig
from replicate_relay.webhooks import SigningKey, signed_headers

log = logging.getLogger("relay.simulator")

Final = Literal["pending", "delivered", "gave_up", "dropped", "not_requested"]
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


@dataclass(frozen=True)
class Delivery:
    """One line of a prediction's delivery log: an attempt, or a message deliberately not sent."""

    event: str  # start | output | logs | completed
    webhook_id: str
    attempt: int
    prediction_status: str
    made_at: float  # real Unix time the message (its body) was made: when the event happened
    at: float  # real Unix time the attempt began
    status_code: int | None = None
    error: str | None = None
    dropped: bool = False
    duplicate: bool = False
    delayed: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Message:
    """One webhook message: fixed body and id, whatever the number of attempts."""

    event: str
    webhook_id: str
    url: str
    body: bytes
    prediction_status: str
    made_at: float


class Sender:
    """Posts one signed attempt; never follows redirects; every failure becomes a status or an error."""

    def __init__(
        self, client: httpx.AsyncClient, keys: Sequence[SigningKey], clock: Clock, config: Callable[[], SimConfig]
    ) -> None:
        self._client = client
        self._keys = tuple(keys)
        self._clock = clock
        self._config = config

    async def attempt(self, message: Message) -> tuple[int | None, str | None]:
        config = self._config()
        # Standard Webhooks: the timestamp is that of the attempt, so each retry is signed anew.
        timestamp = int(self._clock.real()) + config.timestamp_skew_seconds
        headers = signed_headers(self._keys, message.webhook_id, timestamp, message.body)
        headers["content-type"] = "application/json"
        headers["user-agent"] = "replicate-relay-simulator"
        try:
            response = await self._client.post(
                message.url,
                content=message.body,
                headers=headers,
                timeout=config.webhook_timeout_seconds,
                follow_redirects=False,
            )
        except httpx.TimeoutException:
            return None, "timeout"
        except httpx.HTTPError as error:
            return None, f"{type(error).__name__}: {error}"
        return response.status_code, None


class Notifier:
    """The webhooks of one prediction: filter, throttle (coalescing to the latest state), send, retry."""

    def __init__(
        self,
        *,
        prediction_id: str,
        webhook: str | None,
        webhook_completed: str | None,
        events: frozenset[str],
        drop_final: bool,
        snapshot: Callable[[], tuple[bytes, str]],
        sender: Sender,
        config: Callable[[], SimConfig],
        clock: Clock,
        rng: random.Random,
        spawn: Spawn,
    ) -> None:
        self.prediction_id = prediction_id
        self._webhook = webhook
        self._webhook_completed = webhook_completed
        self._events = events
        self._drop_final = drop_final
        self._snapshot = snapshot  # (body, status) of the prediction now
        self._sender = sender
        self._config = config
        self._clock = clock
        self._rng = rng
        self._spawn = spawn
        self.deliveries: list[Delivery] = []
        self.in_flight = 0  # messages made but not yet done with (queued, held back or being attempted)
        self.final: Final = "pending" if self._target("completed") else "not_requested"
        self._pending: set[str] = set()
        self._last_flush: float | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[tuple[Message, bool]] | None = None

    def _target(self, event: str) -> str | None:
        if event == "completed" and self._webhook_completed:
            return self._webhook_completed
        return self._webhook if event in self._events else None

    def _message(self, event: str, url: str) -> Message:
        body, status = self._snapshot()
        return Message(event, f"msg_{self._rng.getrandbits(128):032x}", url, body, status, self._clock.real())

    def started(self) -> None:
        """The `start` event: never throttled."""
        url = self._target("start")
        if url:
            self._send_intermediate(self._message("start", url))

    def changed(self, event: Literal["output", "logs"]) -> None:
        """New output or a new log line: sent now, or coalesced into one send when the throttle allows."""
        if not self._target(event):
            return
        self._pending.add(event)
        if self._flush_task is not None:
            return  # the scheduled send will carry this change too
        loop = asyncio.get_running_loop()
        wait = 0.0 if self._last_flush is None else self._last_flush + self._config().throttle_seconds - loop.time()
        if wait <= 0:
            self._flush()
        else:
            self._flush_task = self._spawn(self._flush_after(wait))

    async def _flush_after(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self._flush()

    def _flush(self) -> None:
        event = "output" if "output" in self._pending else "logs"
        self._pending.clear()
        self._flush_task = None
        self._last_flush = asyncio.get_running_loop().time()
        url = self._target(event)
        if url:
            self._send_intermediate(self._message(event, url))

    def _send_intermediate(self, message: Message) -> None:
        # The chaos rolls are drawn now, in lifecycle order, so a fixed seed gives the same faults.
        config = self._config()
        drop, delay, duplicate = (self._rng.random() for _ in range(3))
        if drop < config.drop_intermediate_probability:
            self._record(message, 1, dropped=True, error="dropped by drop_intermediate_probability")
            return
        if delay < config.reorder_probability:
            self.in_flight += 1
            self._spawn(
                self._send_late(message, config.reorder_delay_seconds, duplicate < config.duplicate_probability)
            )
            return
        self._enqueue(message, duplicate < config.duplicate_probability)

    async def _send_late(self, message: Message, hold: float, duplicate: bool) -> None:
        """A reordered message: held back, then sent beside the outbox, so later messages overtake it."""
        try:
            await asyncio.sleep(hold)
            await self._attempt(message, 1, delayed=True)
            if duplicate:
                await self._attempt(message, 1, delayed=True, duplicate=True)
        finally:
            self.in_flight -= 1

    def _enqueue(self, message: Message, duplicate: bool) -> None:
        if self._outbox is None:
            self._outbox = asyncio.Queue()
            self._spawn(self._drain(self._outbox))
        self.in_flight += 1
        self._outbox.put_nowait((message, duplicate))

    async def _drain(self, outbox: asyncio.Queue[tuple[Message, bool]]) -> None:
        """Sends one message at a time, so without chaos they arrive in the order they were made."""
        while True:
            message, duplicate = await outbox.get()
            try:
                if message.event == "completed":
                    await self._deliver_final(message, duplicate)
                    return
                # Intermediate events are sent once and never retried, whatever the answer.
                await self._attempt(message, 1)
                if duplicate:
                    await self._attempt(message, 1, duplicate=True)
            finally:
                self.in_flight -= 1

    def completed(self) -> None:
        """The final event: pending throttled sends are superseded by it; it is retried (see _deliver_final)."""
        if self._flush_task is not None:
            self._flush_task.cancel()
            self._flush_task = None
        self._pending.clear()
        url = self._target("completed")
        if not url:
            return
        message = self._message("completed", url)
        config = self._config()
        if self._drop_final or config.drop_final:
            reason = "sim_drop_final" if self._drop_final else "drop_final"
            self._record(message, 1, dropped=True, error=f"dropped by {reason}")
            self.final = "dropped"
            return
        self._enqueue(message, self._rng.random() < config.duplicate_probability)

    async def _deliver_final(self, message: Message, duplicate: bool) -> None:
        """Attempts until a 2xx or the retry schedule ends; the same webhook-id on every attempt."""
        delays = self._config().retry_delays
        for attempt in range(1, len(delays) + 2):
            if await self._attempt(message, attempt):
                self.final = "delivered"
                if duplicate:
                    await self._attempt(message, attempt, duplicate=True)
                return
            if attempt <= len(delays):
                await asyncio.sleep(delays[attempt - 1])
        self.final = "gave_up"
        log.warning("prediction %s: completed webhook given up after %d attempts", self.prediction_id, len(delays) + 1)

    async def _attempt(self, message: Message, attempt: int, *, delayed: bool = False, duplicate: bool = False) -> bool:
        at = self._clock.real()
        status_code, error = await self._sender.attempt(message)
        self._record(
            message, attempt, at=at, status_code=status_code, error=error, delayed=delayed, duplicate=duplicate
        )
        return status_code is not None and 200 <= status_code < 300

    def _record(self, message: Message, attempt: int, *, at: float | None = None, **outcome: Any) -> None:
        delivery = Delivery(
            event=message.event,
            webhook_id=message.webhook_id,
            attempt=attempt,
            prediction_status=message.prediction_status,
            made_at=message.made_at,
            at=self._clock.real() if at is None else at,
            **outcome,
        )
        self.deliveries.append(delivery)
        log.info(
            "prediction %s: %s webhook %s attempt %d -> %s",
            self.prediction_id,
            delivery.event,
            delivery.webhook_id,
            delivery.attempt,
            delivery.status_code if delivery.status_code is not None else delivery.error,
        )


def encode(body: dict[str, Any]) -> bytes:
    """The exact bytes a webhook carries (and its signature covers)."""
    return json.dumps(body, separators=(",", ":")).encode("utf-8")
