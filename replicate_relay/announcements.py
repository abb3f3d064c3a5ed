"""A final job is announced on job-events once: who owes it, the claim, the publish, the record.

The part of Relay whose write made a job final owes its announcement (`Job.announcer`). Two
deliveries of one event, or the two subscriptions, can reach that point at the same time, so
publishing needs the claim (`announce_claimed_at`):
- the write that makes a job final takes it in that same write (`with_claim`): no other process
  can hold a claim on a job that was open;
- any later attempt (a redelivery after a failed publish, the reconciler, submit) takes it in a
  transaction (`claim`), refused while another process's claim is younger than the lease.
Once published, `announced_at` is recorded. A claim not followed by that lapses after the lease,
so a failed publish is retried by a redelivery or the reconciler; a crash between publishing and
recording leaves a duplicate, which consumers drop by `event_id`. Once it is recorded, the job's
GPU seconds are counted (`relay.job.predict_time`, replicate_relay.usage): once per job.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from replicate_relay import usage
from replicate_relay.jobevents import announce
from replicate_relay.jobs import Job
from replicate_relay.publisher import TopicPublisher

if TYPE_CHECKING:  # the store writes claims with final writes (with_claim): it imports this module
    from replicate_relay.jobstore import JobStore

LEASE = timedelta(seconds=60)


def newly_final(before: Job | None, after: Job | None) -> bool:
    """Whether a write takes the job from open (or absent) to final: the one write that may also
    claim its announcement, since no other process can have claimed a job that was not final."""
    return after is not None and after.is_terminal and (before is None or not before.is_terminal)


def with_claim(before: Job | None, after: Job, now: datetime) -> tuple[Job, bool]:
    """`after` as a write from `before` stores it: holding the claim if the write makes it final."""
    if not newly_final(before, after):
        return after, False
    return after.model_copy(update={"announce_claimed_at": now}), True


def owed(job: Job | None, actor: str) -> bool:
    """Whether `actor` still owes job-events the announcement of this job's final state."""
    return job is not None and job.is_terminal and job.announcer == actor and job.announced_at is None


def claim_fields(job: Job | None, now: datetime, lease: timedelta = LEASE) -> dict[str, Any] | None:
    """What to write to claim the announcement of `job` now; None while it may not be claimed
    (open, announced, or claimed by someone else less than `lease` ago)."""
    if job is None or not job.is_terminal or job.announced_at is not None:
        return None
    if job.announce_claimed_at is not None and now - job.announce_claimed_at < lease:
        return None
    return {"announce_claimed_at": now}


def claim(store: JobStore, job_id: str, *, lease: timedelta = LEASE) -> Job | None:
    """Take the right to announce a final job, in a transaction; None if it is announced or
    someone else holds it."""
    return store.update_if("claim_announcement", job_id, lambda job, now: claim_fields(job, now, lease))


def announce_claimed(store: JobStore, publisher: TopicPublisher, job: Job) -> None:
    """Publish a job whose claim the caller holds and record it; raises PublishError (the claim
    then lapses, so a retry announces it)."""
    announce(publisher, job)
    store.update_fields(job.job_id, {"announced_at": store.now()})
    usage.count_final(job)


def announce_once(store: JobStore, publisher: TopicPublisher, job: Job) -> bool:
    """Announce a final job unless it was announced or another process is announcing it.

    Returns whether this call published; raises PublishError."""
    claimed = claim(store, job.job_id)
    if claimed is None:
        return False
    announce_claimed(store, publisher, claimed)
    return True


def announce_owed(store: JobStore, publisher: TopicPublisher, job: Job | None, actor: str, *, claimed: bool) -> bool:
    """After `actor`'s write: announce the job if `actor` owes it. `claimed`: that write took the
    claim (jobstore.Applied.claimed); otherwise, as after a failed publish, it is claimed first.

    Returns whether this call published; raises PublishError."""
    if job is None or not owed(job, actor):
        return False
    if claimed:
        announce_claimed(store, publisher, job)
        return True
    return announce_once(store, publisher, job)
