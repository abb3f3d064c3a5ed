"""The job state machine: forward only, idempotent, order-insensitive, coalescing progress."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicate_relay.events import EventAttributes, Prediction, PredictionEvent, Source
from replicate_relay.jobs import (
    DEFAULT_POLICY,
    TERMINAL_STATES,
    Decision,
    Job,
    JobState,
    Outcome,
    Policy,
    apply_event,
    left_to_archive,
    plan_archive,
    target_state,
)
from replicate_relay.testing import prediction_lifecycle

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
RANK = {"submitted": 0, "starting": 1, "processing": 2, "archiving": 3}


def rank(job: Job | None) -> int:
    return -1 if job is None else RANK.get(job.state, 4)


def event(body: dict[str, Any], *, webhook_id: str, timestamp: int) -> PredictionEvent:
    prediction = Prediction.model_validate(body)
    return PredictionEvent(
        attributes=EventAttributes(
            prediction_id=prediction.id,
            status=prediction.status,
            webhook_id=webhook_id,
            webhook_timestamp=timestamp,
            source=Source.WEBHOOK,
        ),
        prediction=prediction,
    )


def lifecycle_events(final: dict[str, Any] | None = None, progress: int = 3) -> list[PredictionEvent]:
    """A lifecycle whose webhook timestamps advance one second per event, as Replicate's would."""
    bodies = prediction_lifecycle("p1", progress_events=progress, started=T0)
    if final is not None:
        bodies[-1] = {**bodies[-1], **final}
    base = int(T0.timestamp())
    return [event(body, webhook_id=f"msg_{i}", timestamp=base + i) for i, body in enumerate(bodies)]


def deliver(
    events: list[PredictionEvent], steps: list[float], policy: Policy = DEFAULT_POLICY
) -> tuple[Job | None, list[Decision]]:
    """Apply deliveries like the store does: a webhook-id seen before is a no-op."""
    job: Job | None = None
    seen: set[str] = set()
    decisions: list[Decision] = []
    now = T0
    for delivered, step in zip(events, steps, strict=True):
        now += timedelta(seconds=step)
        if delivered.attributes.webhook_id in seen:
            continue
        seen.add(delivered.attributes.webhook_id)
        before = rank(job)
        decision = apply_event(job, delivered, job_id="p1", now=now, policy=policy)
        decisions.append(decision)
        if decision.job is not None:
            job = decision.job
        assert rank(job) >= before, f"{decision.outcome} moved the job backwards"
    return job, decisions


def comparable(job: Job | None) -> dict[str, Any]:
    assert job is not None
    document = job.model_dump()
    document.pop("updated_at")  # the handler's clock, not the prediction's
    return document


FINALS = {
    "succeeded with text": None,
    "succeeded with files": {
        "output": ["https://replicate.delivery/a/out-0.png", "https://replicate.delivery/a/out-1.png"]
    },
    "failed": {"status": "failed", "output": None, "error": "CUDA out of memory"},
    "canceled": {"status": "canceled", "output": None},
}


@pytest.mark.parametrize("final", FINALS.values(), ids=FINALS.keys())
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_order_and_duplication_of_a_lifecycle_ends_in_the_same_document(
    final: dict[str, Any] | None, data: st.DataObject
) -> None:
    events = lifecycle_events(final)
    in_order, _ = deliver(events, [2.0] * len(events))

    shuffled = data.draw(st.permutations(events))
    duplicates = data.draw(st.lists(st.sampled_from(events), max_size=6))
    deliveries = list(shuffled)
    for duplicate in duplicates:
        deliveries.insert(data.draw(st.integers(0, len(deliveries))), duplicate)
    steps = data.draw(st.lists(st.floats(0, 3), min_size=len(deliveries), max_size=len(deliveries)))

    final_job, decisions = deliver(deliveries, steps)

    assert comparable(final_job) == comparable(in_order)
    terminal_decisions = [d for d in decisions if d.job is not None and d.job.state in TERMINAL_STATES | {"archiving"}]
    assert terminal_decisions, "the final event was never written"


def test_final_event_is_never_coalesced() -> None:
    events = lifecycle_events()
    decisions = [d.outcome for d in deliver(events, [0.0] * len(events))[1]]
    assert decisions[0] is Outcome.CREATED
    assert decisions[-1] is Outcome.APPLIED
    assert Outcome.COALESCED in decisions  # the progress events in the same instant were coalesced


def test_progress_within_the_window_is_coalesced_and_after_it_applied() -> None:
    starting, first, second, third, _ = lifecycle_events()
    job, _ = deliver([starting, first], [0.0, 0.0])
    assert apply_event(job, second, job_id="p1", now=T0 + timedelta(seconds=0.5)).outcome is Outcome.COALESCED
    later = apply_event(job, third, job_id="p1", now=T0 + timedelta(seconds=1.5))
    assert later.outcome is Outcome.APPLIED
    assert later.job is not None
    assert later.job.logs_tail == third.prediction.logs


def test_stale_event_never_moves_job_backwards() -> None:
    starting, first, *_, succeeded = lifecycle_events()
    job, _ = deliver([succeeded], [0.0])
    assert job is not None
    assert job.state == JobState.SUCCEEDED
    for late in (starting, first):
        assert apply_event(job, late, job_id="p1", now=T0 + timedelta(minutes=1)).outcome is Outcome.ABSORBED


def test_older_snapshot_in_the_same_state_is_ignored() -> None:
    _, first, second, third, _ = lifecycle_events()
    job, _ = deliver([third], [0.0])
    for older in (first, second):
        decision = apply_event(job, older, job_id="p1", now=T0 + timedelta(minutes=1))
        assert decision.outcome is Outcome.STALE


def test_shorter_logs_with_the_same_timestamp_are_stale() -> None:
    _, first, second, *_ = lifecycle_events()
    same_second = event(
        first.prediction.model_dump(), webhook_id="msg_x", timestamp=second.attributes.webhook_timestamp
    )
    job, _ = deliver([second], [0.0])
    assert apply_event(job, same_second, job_id="p1", now=T0 + timedelta(minutes=1)).outcome is Outcome.STALE


def test_unknown_status_keeps_the_state() -> None:
    starting, *_ = lifecycle_events()
    job, _ = deliver([starting], [0.0])
    paused = event(
        {**starting.prediction.model_dump(), "status": "paused"}, webhook_id="msg_p", timestamp=2_000_000_000
    )
    decision = apply_event(job, paused, job_id="p1", now=T0 + timedelta(minutes=1))
    assert decision.outcome is Outcome.UNKNOWN_STATUS
    assert decision.job is None


def test_unknown_status_of_an_unknown_prediction_still_creates_its_job() -> None:
    starting, *_ = lifecycle_events()
    paused = event({**starting.prediction.model_dump(), "status": "paused"}, webhook_id="msg_p", timestamp=1)
    decision = apply_event(None, paused, job_id="p1", now=T0)
    assert decision.outcome is Outcome.CREATED
    assert decision.job is not None
    assert decision.job.state == JobState.SUBMITTED
    assert decision.job.replicate_status == "paused"


def test_job_submitted_through_us_keeps_its_metadata_and_source() -> None:
    starting, *_ = lifecycle_events()
    submitted = Job(job_id="j1", prediction_id="p1", source="submit", metadata={"order": "A-1"})
    decision = apply_event(submitted, starting, job_id="j1", now=T0)
    assert decision.job is not None
    assert (decision.job.state, decision.job.source, decision.job.metadata) == ("starting", "submit", {"order": "A-1"})


def test_adopted_job_keeps_its_source_through_its_events() -> None:
    *_, succeeded = lifecycle_events()
    adopted = Job(job_id="p1", prediction_id="p1", source="adopted")
    decision = apply_event(adopted, succeeded, job_id="p1", now=T0)
    assert decision.job is not None
    assert (decision.job.state, decision.job.source) == ("succeeded", "adopted")


@pytest.mark.parametrize(
    ("status", "data_removed", "expected"),
    [
        ("succeeded", True, JobState.ARCHIVING),  # read after Replicate's retention: the archive handler fails it
        ("succeeded", False, JobState.SUCCEEDED),  # a succeeded prediction whose output is genuinely empty
        ("failed", True, JobState.FAILED),
    ],
)
def test_succeeded_prediction_whose_data_was_removed_goes_to_archiving_not_succeeded(
    status: str, data_removed: bool, expected: JobState
) -> None:
    *_, final = lifecycle_events(final={"status": status, "output": None, "data_removed": data_removed, "logs": ""})
    decision = apply_event(None, final, job_id="p1", now=T0)
    assert decision.job is not None
    assert decision.job.state == expected


@pytest.mark.parametrize(
    ("status", "output", "expected"),
    [
        ("starting", None, JobState.STARTING),
        ("processing", None, JobState.PROCESSING),
        ("succeeded", "plain text", JobState.SUCCEEDED),
        ("succeeded", ["to", "kens"], JobState.SUCCEEDED),
        ("succeeded", "https://replicate.delivery/x/out.png", JobState.ARCHIVING),
        ("succeeded", {"image": ["data:image/png;base64,AAAA"]}, JobState.ARCHIVING),
        ("failed", None, JobState.FAILED),
        ("canceled", None, JobState.CANCELED),
        ("aborted", None, JobState.ABORTED),
        ("paused", None, None),
    ],
)
def test_target_state_of_each_status(status: str, output: Any, expected: JobState | None) -> None:
    assert target_state(status, output) == expected


def test_text_tokens_are_joined_into_the_output_value() -> None:
    events = lifecycle_events({"output": ["Hello", ", ", "world"]})
    job, _ = deliver(events, [2.0] * len(events))
    assert job is not None
    assert job.output_value == "Hello, world"


@pytest.mark.parametrize(
    "output",
    [
        [[0.1, 0.2], [0.3, 0.4]],
        {"": "empty key", "a.b/c`d": 1, "__x__": None},
        {"image": "https://replicate.delivery/x/out.png", "boxes": [[1, 2, 3, 4]], "label": "cat"},
        [2**70, -(2**63), 1e308, 5e-324, 0.1],
    ],
    ids=["list of lists", "odd keys", "files and values", "numbers"],
)
def test_the_output_is_kept_exactly_as_sent_whatever_its_shape(output: Any) -> None:
    events = lifecycle_events({"output": output, "input": {"boxes": [[1, 2], [3, 4]], "": 1}})
    job, _ = deliver(events, [2.0] * len(events))
    assert job is not None
    assert (job.output, job.input) == (output, {"boxes": [[1, 2], [3, 4]], "": 1})


def test_logs_tail_is_bounded() -> None:
    events = lifecycle_events({"logs": "a" * 10_000})
    job, _ = deliver(events, [2.0] * len(events), Policy(logs_tail_chars=100))
    assert job is not None
    assert job.logs_tail == "a" * 100
    assert job.logs_length == 10_000


def test_the_whole_logs_are_kept_once_the_job_is_final() -> None:
    events = lifecycle_events({"logs": "line\n" * 5000})
    job, _ = deliver(events[:-1], [2.0] * (len(events) - 1))
    assert job is not None
    assert job.logs is None  # while it runs, the tail
    job, _ = deliver(events, [2.0] * len(events))
    assert job is not None
    assert job.logs == "line\n" * 5000


@pytest.mark.parametrize(
    ("final", "left"),
    [
        ({"output": ["https://replicate.delivery/x/out.png"]}, True),  # files to copy
        ({"output": "x" * 1_000_000}, False),  # no files: job-status stores it (in the bucket if too large)
        ({"output": None, "data_removed": True}, True),  # removed: archive-outputs fails it output_expired
        ({"output": "a short text"}, False),  # job-status makes it final itself
        ({"output": None}, False),
        ({"status": "failed", "output": None, "error": "boom"}, False),
        ({"status": "canceled", "output": ["https://replicate.delivery/x/out.png"]}, False),
    ],
)
def test_only_succeeded_events_with_something_to_archive_are_left_to_archive_outputs(
    final: dict[str, Any], left: bool
) -> None:
    *progress, last = lifecycle_events(final)
    assert left_to_archive(last) is left
    assert not any(left_to_archive(e) for e in progress)
    # What job-status leaves is what the state machine would have sent to archiving.
    assert left == (apply_event(None, last, job_id="p1", now=T0).job.state == JobState.ARCHIVING)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("final", "skip", "files", "failure"),
    [
        ({"output": ["https://replicate.delivery/x/a.png", "https://replicate.delivery/x/b.png"]}, None, 2, None),
        ({"output": None, "data_removed": True}, None, 0, "output_expired"),
        ({"output": "a short text"}, "nothing_to_archive", 0, None),
        ({"status": "failed", "output": None, "error": "boom"}, "ignored", 0, None),
    ],
)
def test_archive_outputs_copies_only_what_the_state_machine_leaves_to_it(
    final: dict[str, Any], skip: str | None, files: int, failure: str | None
) -> None:
    *progress, last = lifecycle_events(final)
    plan = plan_archive(last)
    assert (plan.skip, len(plan.files), plan.failure.code if plan.failure else None) == (skip, files, failure)
    assert all(plan_archive(e).skip == "ignored" for e in progress)


def test_the_json_form_keeps_values_pydantic_cannot_encode() -> None:
    job = Job(job_id="j", output={"\ud800": [[1]]}, input={"": 2**70}, completed_at=T0)
    form = job.json_form()
    assert (form["output"], form["input"], form["completed_at"]) == (
        {"\ud800": [[1]]},
        {"": 2**70},
        T0.isoformat().replace("+00:00", "Z"),
    )
    assert list(form) == list(Job.model_fields)


TRAINING_URLS = {
    "get": "https://api.replicate.com/v1/trainings/p1",
    "cancel": "https://api.replicate.com/v1/trainings/p1/cancel",
}


def test_a_webhook_of_a_training_nobody_submitted_makes_a_training_job() -> None:
    body = {"id": "p1", "status": "processing", "urls": TRAINING_URLS}
    created = apply_event(None, event(body, webhook_id="m1", timestamp=1), job_id="p1", now=T0).job
    assert created is not None
    assert created.kind == "training"
    prediction = {"id": "p2", "status": "processing", "urls": {"get": "https://api.replicate.com/v1/predictions/p2"}}
    other = apply_event(None, event(prediction, webhook_id="m2", timestamp=1), job_id="p2", now=T0).job
    assert other is not None
    assert other.kind == "prediction"


def test_a_succeeded_training_records_its_new_version_and_a_prediction_with_such_an_output_does_not() -> None:
    output = {"version": "acme/tuned:v2", "weights": "https://replicate.delivery/x/weights.tar"}
    body = {"id": "p1", "status": "succeeded", "output": output}
    training = Job(job_id="j1", prediction_id="p1", source="submit", kind="training", state="processing")
    done = apply_event(training, event(body, webhook_id="m1", timestamp=1), job_id="j1", now=T0).job
    assert done is not None
    assert (done.state, done.trained_version) == ("archiving", "acme/tuned:v2")
    prediction = training.model_copy(update={"kind": "prediction"})
    other = apply_event(prediction, event(body, webhook_id="m1", timestamp=1), job_id="j1", now=T0).job
    assert other is not None
    assert other.trained_version is None


@pytest.mark.parametrize(
    ("status", "error", "state", "error_code"),
    [
        ("canceled", None, "canceled", "deadline_exceeded"),
        ("canceled", "Prediction was canceled", "canceled", "deadline_exceeded"),
        ("aborted", None, "aborted", "deadline_exceeded"),
        ("succeeded", None, "succeeded", None),
        ("failed", "CUDA out of memory", "failed", "failed"),
        ("processing", None, "processing", "deadline_exceeded"),
    ],
)
def test_deadline_exceeded_combines_with_what_replicate_reports(
    status: str, error: str | None, state: str, error_code: str | None
) -> None:
    past = Job(
        job_id="j1",
        prediction_id="p1",
        state="starting",
        error_code="deadline_exceeded",
        error="the deadline passed: Relay asked Replicate to cancel it",
    )
    body = {"id": "p1", "status": status, "error": error, "output": "done" if status == "succeeded" else None}
    job = apply_event(past, event(body, webhook_id="m1", timestamp=1), job_id="j1", now=T0).job
    assert job is not None
    assert (job.state, job.error_code) == (state, error_code)
    assert (job.error is None) == (error_code is None)


@pytest.mark.parametrize(
    ("completed", "requested", "error_code"),
    [
        (T0 + timedelta(minutes=10), None, "deadline_exceeded"),  # Replicate's Cancel-After ended it
        (T0 + timedelta(minutes=9, seconds=30), None, "deadline_exceeded"),  # within the clocks' slack
        (T0 + timedelta(minutes=2), None, "canceled"),  # well before: someone else canceled it
        (T0 + timedelta(minutes=10), T0 + timedelta(minutes=1), "canceled"),  # a cancel was asked for
    ],
)
def test_a_run_replicate_canceled_at_its_deadline_is_marked_deadline_exceeded(
    completed: datetime, requested: datetime | None, error_code: str
) -> None:
    submitted = Job(
        job_id="j1",
        prediction_id="p1",
        state="processing",
        deadline_at=T0 + timedelta(minutes=10),
        cancel_requested_at=requested,
    )
    body = {"id": "p1", "status": "canceled", "error": "canceled", "completed_at": completed.isoformat()}
    ended = apply_event(submitted, event(body, webhook_id="m1", timestamp=1), job_id="j1", now=T0).job
    assert ended is not None
    assert (ended.state, ended.error_code) == ("canceled", error_code)
