"""The job document and its state machine: pure functions, the clock passed in.

Events arrive at least once and in any order (Replicate and Pub/Sub both allow it), so every
rule here is idempotent and forward-only: a job never moves back to an earlier state, a
terminal state absorbs everything after it, and within one state an older snapshot of the
prediction never overwrites a newer one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, TypeAdapter
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from replicate_relay.events import PredictionEvent, PredictionStatus
from replicate_relay.outputs import ArchivedObject, FailedOutput, OutputFile, find_files, plain_value
from replicate_relay.values import DEFAULT_INLINE_BYTES, VALUE_FIELDS, StoredValue, loads


class JobState(StrEnum):
    """Where a job is. The order of the first five is the order a job moves through them."""

    SUBMITTED = "submitted"
    STARTING = "starting"
    PROCESSING = "processing"
    ARCHIVING = "archiving"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    ABORTED = "aborted"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED, JobState.ABORTED})

_RANK = {
    JobState.SUBMITTED: 0,
    JobState.STARTING: 1,
    JobState.PROCESSING: 2,
    JobState.ARCHIVING: 3,
    **dict.fromkeys(TERMINAL_STATES, 4),
}

_STATE_FOR_STATUS = {
    PredictionStatus.STARTING: JobState.STARTING,
    PredictionStatus.PROCESSING: JobState.PROCESSING,
    PredictionStatus.FAILED: JobState.FAILED,
    PredictionStatus.CANCELED: JobState.CANCELED,
    PredictionStatus.ABORTED: JobState.ABORTED,
}


class _OutputEntries:
    """The schema of `Job.outputs`: entries stay plain dicts in Python (what Firestore stores and
    returns), but the published schema types them as the models that write them."""

    @classmethod
    def __get_pydantic_json_schema__(cls, _: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return handler(TypeAdapter(list[ArchivedObject | FailedOutput]).core_schema)


class Job(BaseModel):
    """One Replicate prediction, as Relay last saw it: what RelayClient and the API return.

    Every field is always present, null when unknown. Timestamps are UTC with microseconds, RFC 3339
    strings in JSON. In Firestore the job is the document `jobs/{job_id}`, where the prediction's
    values are JSON text (`input_json`, `output_json`, …, see replicate_relay.values): read it through Relay's
    client or API, which return it in this form.
    """

    # The field descriptions are the published contract (schemas/job.v1.schema.json, docs/SCHEMAS.md):
    # python -m replicate_relay.schemas regenerates both from them.
    model_config = ConfigDict(frozen=True, use_enum_values=True, json_schema_serialization_defaults_required=True)

    job_id: str = Field(
        description="The document's id: a UUID hex for a job submitted through Relay, else the prediction's id."
    )
    prediction_id: str | None = Field(
        default=None, description="Replicate's prediction id; null while a submitted job has no prediction yet."
    )
    source: str = Field(
        default="webhook",
        description="How the job came to be: `submit` (created by Relay's submit), `webhook` (created by the "
        "first webhook of a prediction nobody submitted through Relay) or `adopted` (created by `relay adopt` for "
        "a prediction made without a webhook).",
    )
    kind: Literal["prediction", "training"] = Field(
        default="prediction",
        description="What Replicate runs: a `prediction` (of a model, a version or a deployment) or a `training` "
        "(whose output names the new `version` and its `weights` file).",
    )
    model: str | None = Field(default=None, description="The model, `owner/name` (Replicate's) or as submitted.")
    deployment: str | None = Field(
        default=None, description="The deployment, `owner/name`, when the job was submitted through one; else null."
    )
    version: str | None = Field(default=None, description="The model version id Replicate reports.")
    input: dict[str, Any] | None = Field(
        default=None,
        description="The prediction's input, exactly as Replicate sent it (or as submitted, until Replicate reports "
        "it); null if unknown, or while it is only in the bucket (see `stored_values`).",
    )
    state: JobState = Field(
        default=JobState.SUBMITTED,
        description="Where the job is. It only moves forward: submitted → starting → processing → archiving → "
        "succeeded; failed, canceled and aborted are final too. A final state never changes.",
    )
    replicate_status: str | None = Field(
        default=None,
        description="The prediction's status as Replicate last reported it, passed through even when this version "
        "does not know it.",
    )
    outputs: Annotated[list[dict[str, Any]], _OutputEntries] = Field(
        default=[],
        description="The archived copies of the output's files, in order: one entry per file found anywhere in the "
        "output. Empty for an output without files.",
    )
    output: Any = Field(
        default=None,
        description="The prediction's output, exactly as Replicate sent it, files and values alike. While the job "
        "is open, an output too large for the document is left out until the final write; null while it is only "
        "in the bucket (see `stored_values`).",
    )
    output_value: Any = Field(
        default=None,
        description="The output when it holds no files and is kept in the document; a list of strings (streamed "
        "text) is joined into one string. Null otherwise.",
    )
    output_value_too_large: bool = Field(
        default=False,
        description="True when the output holds no files and is too large for the document: it is in the bucket "
        "once the job is final (see `stored_values`), and left out before.",
    )
    error: Any = Field(
        default=None,
        description="What went wrong: Replicate's `error` (usually a string) or Relay's message; null if nothing did.",
    )
    error_code: str | None = Field(
        default=None,
        description="Why the job did not succeed: `failed`, `canceled` or `aborted` from Replicate; "
        "`output_expired`, `output_refused`, `archive_conflict`, `submit_failed`, `submit_incomplete`, "
        "`deadline_exceeded` (the job passed `deadline_at`: Replicate ended it for its `Cancel-After`, or the "
        "reconciler asked Replicate to cancel it; it ends `canceled`, or `aborted` when it had not started, had "
        "no prediction yet or Replicate could not confirm the cancel), "
        "`cancel_unconfirmed` (a cancel was asked for and Replicate could not confirm it: the job ends `aborted`) "
        "or `not_stored` (Firestore refused the job as Replicate sent it: see `error`) from Relay. "
        "`deadline_exceeded` is set as soon as the reconciler asks for the cancel, so an open job may show it; "
        "a job that succeeds meanwhile clears it. Other values may be added within v1.",
    )
    logs_tail: str = Field(
        default="", description="The last RELAY_LOGS_TAIL_CHARS characters of the prediction's logs."
    )
    logs_length: int = Field(default=0, description="The length of the whole logs, in characters.")
    logs: str | None = Field(
        default=None,
        description="The whole logs as Replicate last sent them, once the job is final; null while it runs "
        "(see `logs_tail`), or while they are only in the bucket (see `stored_values`).",
    )
    metrics: dict[str, Any] | None = Field(
        default=None, description="Replicate's `metrics` (e.g. `predict_time` in seconds), as reported."
    )
    stored_values: dict[str, StoredValue] = Field(
        default={},
        description="The values of the prediction (`input`, `output`, `error`, `metrics`, `logs`) too large for the "
        "job document, each a JSON object in the bucket. Relay's client and API read them back into their fields; "
        "elsewhere those fields are null.",
    )
    metadata: dict[str, str] = Field(
        default={}, description="The submitter's own string key/values (e.g. an order number), returned untouched."
    )
    app: str | None = Field(
        default=None,
        description="The app that submitted the job through Relay's API: the verified e-mail of its Google ID token. "
        "The API shows a job to that app alone (and to its operators), and job-events carries it as the `app` "
        "attribute, which an app's subscription filters on. Null for a job from the CLI, RelayClient or a webhook.",
    )
    deadline_at: datetime | None = Field(
        default=None,
        description="When Relay gives up on the job: sent to Replicate as `Cancel-After` when submitted; past it, "
        "a job still open is canceled at Replicate by the reconciler and ends with `error_code` "
        "`deadline_exceeded`. Null: no deadline.",
    )
    cancel_attempts: int = Field(
        default=0,
        description="How many times the reconciler asked Replicate to cancel the job (past `deadline_at`, or a "
        "requested cancel Replicate had not confirmed) without the job ending; at RELAY_RECONCILE_CANCEL_TRIES the "
        "job ends `aborted` (docs/OPERATIONS.md).",
    )
    trained_version: str | None = Field(
        default=None,
        description="A succeeded training's new model version, `owner/model:version-id` (Replicate's "
        "`output.version`); null for predictions and for trainings that did not succeed.",
    )
    cancel_requested_at: datetime | None = Field(
        default=None,
        description="When a cancel was asked for (client, CLI or API); the job ends `canceled` once Replicate "
        "reports it, or the reconciler finds it so. Null: never asked.",
    )
    created_at: datetime | None = Field(default=None, description="When Replicate created the prediction.")
    started_at: datetime | None = Field(default=None, description="When the prediction started running.")
    completed_at: datetime | None = Field(default=None, description="When Replicate finished the prediction.")
    updated_at: datetime | None = Field(
        default=None, description="When Relay last wrote the job (its own clock); quiet jobs are found by it."
    )
    last_event_at: datetime | None = Field(
        default=None, description="The `webhook-timestamp` of the newest event applied."
    )
    # Who announces the final state on job-events: the handler whose transaction made it final.
    announcer: str | None = Field(
        default=None,
        description="Who made the job final and so announces it on job-events: `job-status`, `archive-outputs`, "
        "`submit` or `reconciler`.",
    )
    announced_at: datetime | None = Field(
        default=None, description="When the final state was published on job-events; null until then."
    )
    announce_claimed_at: datetime | None = Field(  # see replicate_relay.announcements
        default=None, description="When a process last claimed the right to announce (internal, a 60 s lease)."
    )

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_document(cls, data: Mapping[str, Any]) -> Job:
        """The job a Firestore document holds, in either of its forms: values as JSON text (with
        `stored_values`), or as the maps the first versions wrote (whose `input` was cut and whose
        `output` was not kept)."""
        if "stored_values" not in data:
            return cls.model_validate(data)
        fields = {name: value for name, value in data.items() if not name.endswith("_json")}
        for name in VALUE_FIELDS:
            text = data.get(f"{name}_json")
            fields[name] = loads(text) if text is not None else None
        fields["output_value"] = output_value(fields["output"])
        return cls.model_validate(fields)

    def json_form(self) -> dict[str, Any]:
        """The job as JSON data (RFC 3339 timestamps) with the prediction's values untouched.

        pydantic's JSON mode encodes every string as UTF-8 and so refuses a lone surrogate in an
        object key ("\ud800"), which JSON, and so a model's output, may hold.
        """
        plain = self.model_dump()
        converted = self.model_dump(mode="json", exclude=set(_AS_SENT))
        return {name: plain[name] if name in _AS_SENT else converted[name] for name in plain}

    def document(self, inline: Mapping[str, str]) -> dict[str, Any]:
        """The Firestore form: `inline` holds the JSON text of the values kept in the document (see
        replicate_relay.values); the others are linked from `stored_values` or left out."""
        document = self.model_dump(exclude={*VALUE_FIELDS, "output_value"})
        document.update({f"{name}_json": inline.get(name) for name in VALUE_FIELDS})
        return document


# The fields that hold the prediction's JSON as Replicate sent it.
_AS_SENT = frozenset({*VALUE_FIELDS, "output_value"})


def output_value(output: Any) -> Any:
    """`Job.output_value`: the output without files, streamed text joined; None for one with files."""
    if output is None or find_files(output):
        return None
    return plain_value(output)


@dataclass(frozen=True)
class Policy:
    """Tunable limits of the state machine and of the job document."""

    coalesce_window: timedelta = timedelta(seconds=1)
    logs_tail_chars: int = 4000
    # The prediction's values kept inline in the document, as JSON text, all together (replicate_relay.values).
    inline_value_bytes: int = DEFAULT_INLINE_BYTES


DEFAULT_POLICY = Policy()


class Outcome(StrEnum):
    """What an event did to its job; logged and counted."""

    CREATED = "created"  # first event of a prediction nobody had submitted through us
    APPLIED = "applied"
    COALESCED = "coalesced"  # same-state progress within the coalescing window; the next event carries it
    STALE = "stale"  # older than what the job already shows
    ABSORBED = "absorbed"  # the job is already terminal
    UNKNOWN_STATUS = "unknown_status"  # a status this version does not know; state kept
    DUPLICATE = "duplicate"  # this webhook-id was applied before
    # A succeeded event whose outputs must be archived first: job-status records it and leaves the
    # job to archive-outputs, the one writer of that final transition (see left_to_archive).
    DEFERRED = "deferred"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    job: Job | None  # the document to write; None when nothing is written


def needs_archive(output: Any) -> bool:
    """Whether a succeeded prediction's output has files to copy to Cloud Storage before the job is done."""
    return output is not None and bool(find_files(output))


def outputs_removed(event: PredictionEvent) -> bool:
    """Whether a succeeded prediction was read after Replicate's data retention (an hour for API
    predictions: `data_removed`, output null), as adopting or reconciling an old one does. Its job
    goes to archiving, where the archive handler ends it `failed`/`output_expired`, rather than
    passing for succeeded with nothing in it."""
    prediction = event.prediction
    removed = prediction.status == PredictionStatus.SUCCEEDED and bool(prediction.data_removed)
    return removed and prediction.output is None


def left_to_archive(event: PredictionEvent) -> bool:
    """Whether only archive-outputs moves the job for this event: a succeeded prediction whose
    outputs must be copied first (or were removed before Relay read them).

    Both subscriptions get the succeeded event. If job-status also wrote the job (to `archiving`),
    the two handlers would write one document in overlapping transactions on every such job, and
    contended transactions wait: the Firestore emulator holds their locks 2 s, real Firestore
    retries them with backoff. archive-outputs's transaction applies the event itself, so the job
    loses nothing; until then it shows its earlier state, and a quiet open job is what the
    reconciler checks.
    """
    if event.prediction.status != PredictionStatus.SUCCEEDED:
        return False
    return outputs_removed(event) or target_state(event.prediction.status, event.prediction.output) == (
        JobState.ARCHIVING
    )


def absorbs(job: Job | None) -> bool:
    """Whether `job` takes nothing any more: a final state absorbs every later event. A final job
    never changes, so a read outside any transaction that shows it final is enough."""
    return job is not None and job.is_terminal


@dataclass(frozen=True)
class ArchivePlan:
    """What archive-outputs does with an event: nothing (`skip` names why), copy `files`, or
    finish the job with `failure` at once (nothing left to copy)."""

    skip: str | None = None
    files: tuple[OutputFile, ...] = ()
    failure: Failure | None = None


def plan_archive(event: PredictionEvent) -> ArchivePlan:
    """archive-outputs's part of an event; job-status's is the rest (left_to_archive)."""
    if event.attributes.status != PredictionStatus.SUCCEEDED:
        return ArchivePlan(skip="ignored")  # the production subscription filters these out already
    if not left_to_archive(event):
        return ArchivePlan(skip="nothing_to_archive")  # job-status makes such a job final by itself
    if outputs_removed(event):
        return ArchivePlan(
            failure=Failure("output_expired", "Replicate had removed the outputs (data_removed) before Relay read them")
        )
    return ArchivePlan(files=tuple(find_files(event.prediction.output)))


def target_state(status: str, output: Any) -> JobState | None:
    """The job state a prediction status leads to; None for a status this version does not know."""
    if status == PredictionStatus.SUCCEEDED:
        return JobState.ARCHIVING if needs_archive(output) else JobState.SUCCEEDED
    try:
        return _STATE_FOR_STATUS[PredictionStatus(status)]
    except ValueError:
        return None


def apply_event(  # noqa: PLR0911 - one return per rule reads better than a chain of flags
    job: Job | None,
    event: PredictionEvent,
    *,
    job_id: str,
    now: datetime,
    policy: Policy = DEFAULT_POLICY,
    actor: str = "job-status",
) -> Decision:
    """Decide what `event` does to `job` (None when no job exists yet).

    `actor` is the handler deciding; if this event makes the job final, that handler announces it.
    """
    prediction = event.prediction
    target = target_state(prediction.status, prediction.output)
    if outputs_removed(event):
        target = JobState.ARCHIVING
    if job is None:
        fresh = Job(
            job_id=job_id,
            prediction_id=prediction.id,
            source="webhook",
            kind=prediction.kind,
            created_at=prediction.created_at,
        )
        return Decision(
            Outcome.CREATED, _merge(fresh, event, target or JobState.SUBMITTED, now=now, policy=policy, actor=actor)
        )
    if absorbs(job):
        return Decision(Outcome.ABSORBED, None)
    if target is None:
        return Decision(Outcome.UNKNOWN_STATUS, None)

    current_rank, new_rank = _RANK[JobState(job.state)], _RANK[target]
    if new_rank < current_rank:
        return Decision(Outcome.STALE, None)
    if new_rank == current_rank:
        # Same state: Replicate's logs only grow and its timestamps only advance, so an event
        # behind on either is an older snapshot delivered late.
        if _event_time(event) < (job.last_event_at or _EPOCH) or len(prediction.logs or "") < job.logs_length:
            return Decision(Outcome.STALE, None)
        # Progress events can come four times a second; Firestore takes about one write per
        # second per document. Skipping one loses nothing: the next event carries the whole
        # prediction, and the terminal event is a state change, which is never coalesced.
        if job.updated_at is not None and now - job.updated_at < policy.coalesce_window:
            return Decision(Outcome.COALESCED, None)
    return Decision(Outcome.APPLIED, _merge(job, event, target, now=now, policy=policy, actor=actor))


@dataclass(frozen=True)
class Failure:
    """Why the relay could not finish a job whose prediction succeeded."""

    code: str  # output_expired, output_refused, ...
    message: str


def finish_archive(
    job: Job | None,
    event: PredictionEvent,
    *,
    job_id: str,
    outputs: list[dict[str, Any]],
    failure: Failure | None,
    now: datetime,
    policy: Policy = DEFAULT_POLICY,
    actor: str = "archive-outputs",
) -> Decision:
    """The job once a succeeded prediction's outputs are archived (or could not be).

    The succeeded event is applied first, so this works whether or not the job-status handler
    has seen it yet (both subscriptions get every event, in no set order).
    """
    if absorbs(job):
        return Decision(Outcome.ABSORBED, None)
    applied = apply_event(job, event, job_id=job_id, now=now, policy=policy, actor=actor)
    base = applied.job or job
    if base is None:  # apply_event always creates a missing job; kept for the type checker
        raise ValueError("no job to finish")
    updates: dict[str, Any] = {
        "outputs": outputs,
        "state": (JobState.FAILED if failure else JobState.SUCCEEDED).value,
        "updated_at": now,
        "announcer": actor,
    }
    if event.prediction.logs is not None:  # final now: the whole logs, which `archiving` did not keep
        updates["logs"] = event.prediction.logs
    if failure is not None:
        updates.update(error=failure.message, error_code=failure.code)
    return Decision(Outcome.CREATED if job is None else Outcome.APPLIED, base.model_copy(update=updates))


_EPOCH = datetime.fromtimestamp(0, UTC)

# error_code of a job the reconciler found open past its deadline_at (see _past_deadline).
DEADLINE_EXCEEDED = "deadline_exceeded"


# Replicate's clock and Relay's may differ a little: Cancel-After counts from Replicate's creation,
# after Relay computed deadline_at, so a run Replicate ended for it completes at or after deadline_at.
_CLOCK_SLACK = timedelta(minutes=1)


def _ended_by_cancel_after(job: Job, state: JobState, completed_at: datetime) -> bool:
    """Whether Replicate canceled or aborted the run for its `Cancel-After` deadline: nobody asked
    for a cancel and it ended at the deadline or later. Its error_code is then `deadline_exceeded`."""
    if state not in {JobState.CANCELED, JobState.ABORTED} or job.deadline_at is None:
        return False
    return job.cancel_requested_at is None and completed_at + _CLOCK_SLACK >= job.deadline_at


def _past_deadline(state: JobState, job: Job) -> dict[str, Any]:
    """How `deadline_exceeded` (recorded when the reconciler asked Replicate to cancel the job)
    combines with the state Replicate then reports: a job it canceled or aborted keeps
    `deadline_exceeded` as its error_code (the reason, where Replicate says only `canceled`); one
    that succeeded before the cancel landed is a success, with no error; one that failed keeps
    Replicate's `failed` and error, the more precise story. An open state keeps the mark."""
    if state in {JobState.SUCCEEDED, JobState.ARCHIVING}:
        return {"error_code": None, "error": None}
    if state == JobState.FAILED:
        return {}
    return {"error_code": DEADLINE_EXCEEDED, "error": job.error}


def _event_time(event: PredictionEvent) -> datetime:
    return datetime.fromtimestamp(event.attributes.webhook_timestamp, UTC)


def _merge(job: Job, event: PredictionEvent, state: JobState, *, now: datetime, policy: Policy, actor: str) -> Job:
    prediction = event.prediction
    logs = prediction.logs or ""
    updates: dict[str, Any] = {
        "state": state.value,
        "replicate_status": prediction.status,
        "logs_tail": logs[-policy.logs_tail_chars :] if logs else job.logs_tail,
        "logs_length": max(len(logs), job.logs_length),
        "updated_at": now,
        "last_event_at": max(_event_time(event), job.last_event_at or _EPOCH),
    }
    if state in TERMINAL_STATES:
        updates["announcer"] = actor
    carried = {
        "prediction_id": prediction.id,
        "model": prediction.model,
        "version": prediction.version,
        "error": prediction.error,
        "error_code": prediction.status if prediction.error is not None and prediction.is_terminal else None,
        "metrics": prediction.metrics,
        "created_at": prediction.created_at,
        "started_at": prediction.started_at,
        "completed_at": prediction.completed_at,
        "input": prediction.input,
        "output": prediction.output,
        # The whole logs once, with the final state; while the job runs, the tail is enough.
        "logs": prediction.logs if state in TERMINAL_STATES else None,
    }
    if job.kind == "training":
        carried["trained_version"] = prediction.trained_version
    # A field the prediction leaves empty keeps what the job already has.
    updates.update({name: value for name, value in carried.items() if value is not None})
    if job.error_code == DEADLINE_EXCEEDED:
        updates.update(_past_deadline(state, job))
    elif _ended_by_cancel_after(job, state, prediction.completed_at or now):
        updates["error_code"] = DEADLINE_EXCEEDED
    if prediction.output is not None:
        updates["output_value"] = output_value(prediction.output)
    return job.model_copy(update=updates)
