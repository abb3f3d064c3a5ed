"""Which rejected requests are logged in full: a sample per reason, and a count of the rest.

Anyone can send the public receiver requests it refuses, and each one logged in full is a paid log
entry. So per reason, the first `per_window` refusals of each `window_seconds` are logged in full;
the others are only counted, and the counts of a window are logged in one summary line once it has
ended (with the first request after it). The metrics count every refusal whatever is logged.
"""

from __future__ import annotations

from collections import Counter

LOGGED_PER_MINUTE = 10


class RejectionSampler:
    """Decides per refusal whether to log it, and hands out the counts of those it did not."""

    def __init__(self, *, per_window: int = LOGGED_PER_MINUTE, window_seconds: float = 60.0) -> None:
        self._per_window = per_window
        self._window_seconds = window_seconds
        self._window_start: float | None = None
        self._logged: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()

    def log_in_full(self, reason: str, now: float) -> bool:
        """True for the first `per_window` refusals of `reason` in the window; the rest are counted."""
        self._roll(now)
        if self._logged[reason] < self._per_window:
            self._logged[reason] += 1
            return True
        self._unlogged[reason] += 1
        return False

    def ended_window(self, now: float) -> dict[str, int] | None:
        """Refusals not logged in full, per reason, of a window that has ended (each handed out once)."""
        if self._window_start is None or now - self._window_start < self._window_seconds:
            return None
        unlogged = dict(self._unlogged)
        self._window_start = None
        self._logged.clear()
        self._unlogged.clear()
        return unlogged or None

    def _roll(self, now: float) -> None:
        if self._window_start is None or now - self._window_start >= self._window_seconds:
            # Counts not yet handed out by ended_window() carry over rather than vanish.
            self._window_start = now
            self._logged.clear()
