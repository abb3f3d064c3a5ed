"""The consumer's bounded memory of handled event ids, and what it counts."""

from __future__ import annotations

import pytest

from replicate_relay.consumer import ConsumerStats, RecentIds


def test_recent_ids_forget_the_least_recently_handled_beyond_their_size() -> None:
    recent = RecentIds(2)
    recent.add("a:succeeded")
    recent.add("b:failed")
    recent.add("a:succeeded")  # handled again: now the most recent
    recent.add("c:succeeded")
    assert "a:succeeded" in recent
    assert "c:succeeded" in recent
    assert "b:failed" not in recent
    assert len(recent) == 2


def test_recent_ids_need_room_for_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RecentIds(0)


def test_acknowledged_counts_handled_events_and_dropped_duplicates_not_failures() -> None:
    assert ConsumerStats(handled=3, duplicates=2, failed=5, undecodable=1).acknowledged == 5
