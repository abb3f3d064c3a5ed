"""The announce-once rule: which write claims, who owes the announcement, when a claim may be taken."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from replicate_relay.announcements import LEASE, claim_fields, newly_final, owed, with_claim
from replicate_relay.jobs import Job, JobState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OPEN = Job(job_id="j", state=JobState.PROCESSING)
FINAL = Job(job_id="j", state=JobState.SUCCEEDED, announcer="job-status")


def test_only_the_write_that_makes_a_job_final_is_newly_final() -> None:
    assert newly_final(OPEN, FINAL)
    assert newly_final(None, FINAL)
    assert not newly_final(None, OPEN)
    assert not newly_final(FINAL, FINAL)  # a final job rewritten (announced_at) claims nothing again
    assert not newly_final(OPEN, None)


def test_the_final_write_carries_the_claim_and_no_other_write_does() -> None:
    written, claimed = with_claim(OPEN, FINAL, T0)
    assert claimed
    assert written.announce_claimed_at == T0
    for before, after in [(None, OPEN), (FINAL, FINAL)]:
        assert with_claim(before, after, T0) == (after, False)


def test_only_the_actor_that_made_the_job_final_owes_its_announcement() -> None:
    assert owed(FINAL, "job-status")
    assert not owed(FINAL, "archive-outputs")
    assert not owed(OPEN.model_copy(update={"announcer": "job-status"}), "job-status")
    assert not owed(FINAL.model_copy(update={"announced_at": T0}), "job-status")
    assert not owed(None, "job-status")


def test_a_claim_is_refused_while_another_is_younger_than_the_lease() -> None:
    held = FINAL.model_copy(update={"announce_claimed_at": T0})
    assert claim_fields(held, T0 + LEASE - timedelta(microseconds=1)) is None
    assert claim_fields(held, T0 + LEASE) == {"announce_claimed_at": T0 + LEASE}
    assert claim_fields(FINAL, T0) == {"announce_claimed_at": T0}


def test_an_open_missing_or_announced_job_cannot_be_claimed() -> None:
    for job in [None, OPEN, FINAL.model_copy(update={"announced_at": T0})]:
        assert claim_fields(job, T0) is None
