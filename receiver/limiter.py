"""Per-client limits checked on arrival: requests in flight, and a bounded token bucket of failures."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class FailureLimiter:
    """Admits a client's request on arrival, or not (the receiver answers 429 before reading it).

    Two counts per client address, one rule. A request is refused when its client already has
    `max_in_flight` requests in flight (admitted, not yet verified or finished), or when the client
    has failed recently and its failure budget left does not cover every request it has in flight
    plus this one. The budget is a token bucket: `burst` failures, then `per_second` a second; only
    failures spend it, so a sender is never slowed by its own valid traffic. Counting requests in
    flight against the budget is what stops a burst that arrives before any of it has failed from
    passing whole; doing so only once a client has failed, with a generous cap otherwise, keeps
    Replicate's many concurrent webhooks from its few addresses unharmed (settings.py).

    At most `max_clients` buckets are kept (least recently seen dropped first), and a client is in
    the in-flight table only while it has requests in flight, so memory is bounded however many
    addresses a flood comes from. Not thread-safe: the receiver runs it on one event loop.
    """

    def __init__(self, *, burst: int, per_second: float, max_clients: int, max_in_flight: int = 32) -> None:
        self._burst = float(burst)
        self._rate = per_second
        self._max_clients = max_clients
        self._max_in_flight = max_in_flight
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._in_flight: dict[str, int] = {}

    def allows(self, client: str, now: float) -> bool:
        """True when a request from `client` would be admitted now (nothing is spent or counted)."""
        in_flight = self._in_flight.get(client, 0)
        if in_flight >= self._max_in_flight:
            return False
        bucket = self._buckets.get(client)
        if bucket is None:
            return True
        self._refill(bucket, now)
        failed_recently = bucket.tokens < self._burst
        return bucket.tokens >= 1.0 + (in_flight if failed_recently else 0)

    def admit(self, client: str, now: float) -> InFlight | None:
        """The admitted request's place in flight (release it when it is verified or done), or None."""
        if not self.allows(client, now):
            return None
        self._in_flight[client] = self._in_flight.get(client, 0) + 1
        return InFlight(self, client)

    def in_flight(self, client: str) -> int:
        return self._in_flight.get(client, 0)

    def record_failure(self, client: str, now: float) -> None:
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = _Bucket(tokens=self._burst, updated=now)
            self._buckets[client] = bucket
            while len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
        else:
            self._refill(bucket, now)
            self._buckets.move_to_end(client)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)

    def __len__(self) -> int:
        return len(self._buckets)

    def _release(self, client: str) -> None:
        left = self._in_flight[client] - 1
        if left:
            self._in_flight[client] = left
        else:
            del self._in_flight[client]

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
        bucket.updated = max(bucket.updated, now)  # a clock stepping back must not refill twice


class InFlight:
    """One admitted request, counted against its client until `release()` (once; later calls do nothing)."""

    def __init__(self, limiter: FailureLimiter, client: str) -> None:
        self._limiter: FailureLimiter | None = limiter
        self._client = client

    def release(self) -> None:
        if self._limiter is not None:
            self._limiter._release(self._client)
            self._limiter = None
