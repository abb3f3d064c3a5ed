"""receiver.limiter: the per-client failure budget, driven by a fake clock."""

from __future__ import annotations

import pytest

from receiver.limiter import FailureLimiter

T0 = 1_700_000_000.0


def exhausted(limiter: FailureLimiter, client: str, failures: int, now: float = T0) -> FailureLimiter:
    for _ in range(failures):
        limiter.record_failure(client, now)
    return limiter


def test_unknown_client_is_allowed_and_not_tracked() -> None:
    limiter = FailureLimiter(burst=1, per_second=0.0, max_clients=10)
    assert limiter.allows("198.51.100.1", T0)
    assert len(limiter) == 0


def test_checking_a_client_spends_nothing() -> None:
    limiter = exhausted(FailureLimiter(burst=2, per_second=0.0, max_clients=10), "a", 1)
    for _ in range(100):
        assert limiter.allows("a", T0)


@pytest.mark.parametrize("burst", [1, 3, 20])
def test_client_is_refused_once_its_burst_of_failures_is_spent(burst: int) -> None:
    limiter = exhausted(FailureLimiter(burst=burst, per_second=1.0, max_clients=10), "a", burst - 1)
    assert limiter.allows("a", T0)
    limiter.record_failure("a", T0)
    assert not limiter.allows("a", T0)


def test_budget_refills_at_the_configured_rate() -> None:
    limiter = exhausted(FailureLimiter(burst=3, per_second=0.5, max_clients=10), "a", 3)
    assert not limiter.allows("a", T0 + 1.999)
    assert limiter.allows("a", T0 + 2.0)
    limiter.record_failure("a", T0 + 2.0)
    assert not limiter.allows("a", T0 + 2.0)
    assert limiter.allows("a", T0 + 4.0)


def test_refill_never_exceeds_the_burst() -> None:
    limiter = exhausted(FailureLimiter(burst=3, per_second=1.0, max_clients=10), "a", 3)
    later = T0 + 3600
    exhausted(limiter, "a", 2, now=later)
    assert limiter.allows("a", later)
    limiter.record_failure("a", later)
    assert not limiter.allows("a", later)


def test_zero_rate_never_refills() -> None:
    limiter = exhausted(FailureLimiter(burst=2, per_second=0.0, max_clients=10), "a", 2)
    assert not limiter.allows("a", T0 + 365 * 86400)


def test_failures_beyond_the_budget_do_not_push_it_below_empty() -> None:
    limiter = exhausted(FailureLimiter(burst=2, per_second=1.0, max_clients=10), "a", 50)
    assert limiter.allows("a", T0 + 1.0)


def test_clients_have_separate_budgets() -> None:
    limiter = exhausted(FailureLimiter(burst=2, per_second=0.0, max_clients=10), "a", 2)
    assert not limiter.allows("a", T0)
    assert limiter.allows("b", T0)
    limiter.record_failure("b", T0)
    assert limiter.allows("b", T0)


def test_number_of_tracked_clients_is_bounded() -> None:
    limiter = FailureLimiter(burst=1, per_second=0.0, max_clients=100)
    for number in range(10_000):
        limiter.record_failure(f"10.0.{number // 256}.{number % 256}", T0)
    assert len(limiter) == 100


def test_least_recently_failed_client_is_forgotten_first() -> None:
    limiter = FailureLimiter(burst=1, per_second=0.0, max_clients=2)
    limiter.record_failure("a", T0)
    limiter.record_failure("b", T0 + 1)
    limiter.record_failure("a", T0 + 2)  # "a" failed again: now more recent than "b"
    limiter.record_failure("c", T0 + 3)
    assert len(limiter) == 2
    assert limiter.allows("b", T0 + 3)  # evicted, so starts afresh
    assert not limiter.allows("a", T0 + 3)
    assert not limiter.allows("c", T0 + 3)


def test_oldest_client_is_evicted_when_a_new_one_fails() -> None:
    limiter = FailureLimiter(burst=1, per_second=0.0, max_clients=2)
    for client in ("a", "b", "c"):
        limiter.record_failure(client, T0)
    assert limiter.allows("a", T0)
    assert not limiter.allows("b", T0)
    assert not limiter.allows("c", T0)


def test_clock_stepping_back_grants_no_extra_failures() -> None:
    limiter = exhausted(FailureLimiter(burst=1, per_second=1.0, max_clients=10), "a", 1, now=T0)
    assert not limiter.allows("a", T0 - 10)  # wall clock stepped back 10 s (NTP correction)
    assert not limiter.allows("a", T0)  # back at the moment of the failure: no time has passed


# --- requests in flight ------------------------------------------------------------------------


def test_a_clean_client_is_admitted_up_to_its_in_flight_cap_and_again_once_one_is_released() -> None:
    limiter = FailureLimiter(burst=2, per_second=0.0, max_clients=10, max_in_flight=3)
    admitted = [limiter.admit("a", T0) for _ in range(3)]
    assert limiter.admit("a", T0) is None
    assert limiter.admit("b", T0) is not None  # the cap is per client
    admitted[0].release()  # type: ignore[union-attr]
    admitted[0].release()  # type: ignore[union-attr]  # a second release changes nothing
    assert limiter.in_flight("a") == 2
    assert limiter.admit("a", T0) is not None
    assert limiter.admit("a", T0) is None


def test_a_client_that_has_failed_has_its_requests_in_flight_counted_against_its_budget() -> None:
    limiter = exhausted(FailureLimiter(burst=5, per_second=0.0, max_clients=10, max_in_flight=100), "a", 2)
    held = [limiter.admit("a", T0) for _ in range(3)]  # 3 tokens left: 3 in flight at most
    assert None not in held
    assert limiter.admit("a", T0) is None
    for one in held:
        one.release()  # type: ignore[union-attr]
    assert limiter.in_flight("a") == 0
    assert limiter.admit("a", T0) is not None


def test_a_client_whose_budget_refilled_is_clean_again() -> None:
    limiter = exhausted(FailureLimiter(burst=2, per_second=1.0, max_clients=10, max_in_flight=100), "a", 1)
    assert [limiter.admit("a", T0) is not None for _ in range(2)] == [True, False]
    assert all(limiter.admit("a", T0 + 10) is not None for _ in range(50))
