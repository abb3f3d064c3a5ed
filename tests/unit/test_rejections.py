"""receiver.rejections: which refusals are logged in full, and the counts of the others."""

from __future__ import annotations

from receiver.rejections import RejectionSampler

T0 = 1000.0


def test_the_first_of_each_reason_in_a_window_are_logged_in_full_and_the_rest_counted() -> None:
    sampler = RejectionSampler(per_window=2, window_seconds=60)
    logged = [sampler.log_in_full("missing_webhook_id", T0 + i) for i in range(5)]
    assert logged == [True, True, False, False, False]
    assert sampler.log_in_full("signature_mismatch", T0 + 5)  # each reason has its own sample
    assert sampler.ended_window(T0 + 59) is None
    assert sampler.ended_window(T0 + 60) == {"missing_webhook_id": 3}
    assert sampler.ended_window(T0 + 61) is None  # handed out once


def test_a_new_window_logs_in_full_again() -> None:
    sampler = RejectionSampler(per_window=1, window_seconds=60)
    assert [sampler.log_in_full("r", T0), sampler.log_in_full("r", T0 + 1)] == [True, False]
    assert sampler.ended_window(T0 + 60) == {"r": 1}
    assert sampler.log_in_full("r", T0 + 61)


def test_a_window_with_nothing_unlogged_has_no_summary() -> None:
    sampler = RejectionSampler(per_window=3, window_seconds=60)
    sampler.log_in_full("r", T0)
    assert sampler.ended_window(T0 + 120) is None
