"""A bounded per-client token bucket for requests that fail verification."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class FailureLimiter:
    """Lets each client fail verification `burst` times, then `per_second` times a second.

    Only failures spend tokens, so a legitimate sender is never slowed by its own traffic, and a
    forger who floods the endpoint is answered 429 before any HMAC work is done. At most
    `max_clients` buckets are kept (least recently seen dropped first), so memory is bounded
    however many addresses a flood comes from. Not thread-safe: the receiver runs it on one
    event loop.
    """

    def __init__(self, *, burst: int, per_second: float, max_clients: int) -> None:
        self._burst = float(burst)
        self._rate = per_second
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def allows(self, client: str, now: float) -> bool:
        """True when `client` still has failure budget (no token is spent)."""
        bucket = self._buckets.get(client)
        if bucket is None:
            return True
        self._refill(bucket, now)
        return bucket.tokens >= 1.0

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

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
        bucket.updated = max(bucket.updated, now)  # a clock stepping back must not refill twice
