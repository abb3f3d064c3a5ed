"""The simulator's global switches (chaos, retention, retry schedule) and its movable clock."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from replicate_relay.simulator.errors import InvalidFields

# Replicate retries the final webhook with exponential backoff, the last retry about one minute
# after completion (docs/REPLICATE.md): waits of 1 + 2 + 4 + 8 + 16 + 30 s.
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
MAX_RETRIES = 20
THROTTLE_SCOPES = ("all", "creates")


@dataclass(frozen=True)
class SimConfig:
    """Switches that apply to every prediction, read when each decision is taken (so they act at run time)."""

    seed: int | None = None  # prediction ids, webhook ids and chaos rolls; None: different every run
    duplicate_probability: float = 0.0  # a message is sent a second time with the same webhook-id
    reorder_probability: float = 0.0  # an intermediate message is held back reorder_delay_seconds
    reorder_delay_seconds: float = 1.0
    drop_intermediate_probability: float = 0.0  # an intermediate message is never sent
    drop_final: bool = False  # no prediction's completed webhook is ever sent
    file_ttl_seconds: float = 3600.0  # output files, input, output and logs removed this long after completion
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS  # waits between attempts of the completed webhook
    webhook_timeout_seconds: float = 5.0
    throttle_seconds: float = 0.5  # at most one output/logs webhook per prediction per this interval
    timestamp_skew_seconds: int = 0  # added to webhook-timestamp, to test receivers' tolerance
    page_size: int = 100  # predictions per page of GET /v1/predictions
    throttle_requests: int = 0  # the next this many /v1 requests answer 429 with Retry-After (counts down)
    throttle_scope: str = "all"  # which requests throttle_requests hits: "all", or "creates" (predictions, trainings)
    throttle_retry_after_seconds: int = 1  # the Retry-After of those 429s

    def to_json(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body["retry_delays"] = list(self.retry_delays)
        return body

    def updated(self, changes: Mapping[str, Any]) -> SimConfig:
        """A copy with `changes` (JSON values) applied; raises InvalidFields naming every bad one."""
        values: dict[str, Any] = {}
        problems: list[tuple[str, str]] = []
        for name, raw in changes.items():
            check = _CHECKS.get(name)
            if check is None:
                problems.append((name, f"unknown setting; known: {', '.join(sorted(_CHECKS))}"))
                continue
            try:
                values[name] = check(raw)
            except ValueError as error:
                problems.append((name, str(error)))
        if problems:
            raise InvalidFields(problems)
        return dataclasses.replace(self, **values)


class Clock:
    """Simulated wall time: the real time plus an offset that only moves forward (`/_sim/advance`).

    Prediction timestamps and file expiry follow it; webhook-timestamp follows the real time, so a
    receiver's 5-minute tolerance still holds after the clock was advanced.
    """

    def __init__(self, real: Callable[[], float] = time.time) -> None:
        self._real = real
        self.offset = 0.0

    def now(self) -> float:
        return self._real() + self.offset

    def real(self) -> float:
        return self._real()

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def number(raw: Any, *, low: float, high: float) -> float:
    """A finite JSON number in [low, high] (booleans are not numbers here)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ValueError("must be a number")
    if not low <= raw <= high:
        raise ValueError(f"must be between {low:g} and {high:g}")
    return float(raw)


def integer(raw: Any, *, low: int, high: int) -> int:
    """A JSON integer in [low, high]."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError("must be an integer")
    if not low <= raw <= high:
        raise ValueError(f"must be between {low} and {high}")
    return raw


def boolean(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise ValueError("must be true or false")
    return raw


def _probability(raw: Any) -> float:
    return number(raw, low=0.0, high=1.0)


def _seconds(raw: Any) -> float:
    return number(raw, low=0.0, high=86_400.0 * 365)


def _seed(raw: Any) -> int | None:
    return None if raw is None else integer(raw, low=-(2**63), high=2**63 - 1)


def _throttle_scope(raw: Any) -> str:
    if raw not in THROTTLE_SCOPES:
        raise ValueError(f"must be one of {', '.join(THROTTLE_SCOPES)}")
    return str(raw)


def _retry_delays(raw: Any) -> tuple[float, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_RETRIES:
        raise ValueError(f"must be a list of at most {MAX_RETRIES} waits in seconds")
    return tuple(number(item, low=0.0, high=3600.0) for item in raw)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "seed": _seed,
    "duplicate_probability": _probability,
    "reorder_probability": _probability,
    "reorder_delay_seconds": _seconds,
    "drop_intermediate_probability": _probability,
    "drop_final": boolean,
    "file_ttl_seconds": _seconds,
    "retry_delays": _retry_delays,
    "webhook_timeout_seconds": lambda raw: number(raw, low=0.001, high=300.0),
    "throttle_seconds": lambda raw: number(raw, low=0.0, high=60.0),
    "timestamp_skew_seconds": lambda raw: integer(raw, low=-(10**9), high=10**9),
    "page_size": lambda raw: integer(raw, low=1, high=1000),
    "throttle_requests": lambda raw: integer(raw, low=0, high=10_000),
    "throttle_scope": _throttle_scope,
    "throttle_retry_after_seconds": lambda raw: integer(raw, low=0, high=3600),
}
