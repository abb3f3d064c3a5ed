"""Submitting a prediction or training: the job first, then the run with the webhook set, then the link;
and asking Replicate to cancel a job's run."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, TypedDict, Unpack

from google.api_core import exceptions as google_exceptions

from replicate_relay.announcements import announce_once
from replicate_relay.config import (
    DEFAULT_DEADLINE,
    DEFAULT_TRAINING_DEADLINE,
    ConfigError,
    Env,
    Secret,
    default_deadline,
    default_training_deadline,
    job_events_topic,
)
from replicate_relay.errors import JobAlreadyFinal, JobNotFound

# Defined in the one exception tree, replicate_relay/errors.py; still importable from here.
from replicate_relay.errors import SubmitFailed as SubmitFailed  # noqa: PLC0414 - re-export
from replicate_relay.jobs import Job, JobState
from replicate_relay.jobstore import JobStore
from replicate_relay.metadata import check_metadata
from replicate_relay.publisher import PublishError, TopicPublisher
from replicate_relay.replicate_api import DEFAULT_BASE_URL, DeploymentRef, ModelRef, ReplicateAPI, ReplicateAPIError

# The first user's plan: every event, so the job shows progress. Replicate never retries the
# intermediate ones, and each costs one Pub/Sub message and, at most once a second, one write.
DEFAULT_EVENTS = ("start", "output", "logs", "completed")
VALID_EVENTS = frozenset(DEFAULT_EVENTS)
DEFAULT_MODEL = "flux-kontext-apps/restore-image"

log = logging.getLogger("relay.submit")


@dataclass(frozen=True)
class SubmitSettings:
    replicate_token: Secret
    replicate_base_url: str
    webhook_url: str
    events_filter: tuple[str, ...]
    default_model: str
    # The polling worker's REPLICATE_OUTPUT_FORMAT and REPLICATE_SAFETY_TOLERANCE: inputs added to a
    # prediction of the default model unless given explicitly.
    default_input: Mapping[str, Any] = field(default_factory=dict)
    # RELAY_JOB_EVENTS_TOPIC: where the job of a prediction Replicate refused is announced.
    job_events_topic: str = "job-events"
    # RELAY_DEFAULT_DEADLINE and RELAY_DEFAULT_TRAINING_DEADLINE: for a job submitted without one; None: none.
    default_deadline: timedelta | None = DEFAULT_DEADLINE
    default_training_deadline: timedelta | None = DEFAULT_TRAINING_DEADLINE

    def input_for(self, model: ModelRef, given: Mapping[str, Any]) -> dict[str, Any]:
        """`given`, with the default inputs under it when `model` is the default model (any version)."""
        default = ModelRef.parse(self.default_model)
        same = (model.owner, model.name) == (default.owner, default.name)
        return {**self.default_input, **given} if same else dict(given)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SubmitSettings:
        env = Env(environ)
        events = env.get_list("RELAY_WEBHOOK_EVENTS", DEFAULT_EVENTS)
        unknown = sorted(set(events) - VALID_EVENTS)
        if unknown:
            raise ConfigError(f"RELAY_WEBHOOK_EVENTS has unknown events {unknown}; use {sorted(VALID_EVENTS)}")
        if "completed" not in events:
            raise ConfigError("RELAY_WEBHOOK_EVENTS must include completed, or jobs never learn their outcome")
        webhook_url = env.get_str("RELAY_WEBHOOK_URL")
        if not webhook_url.startswith(("https://", "http://")):
            raise ConfigError(f"RELAY_WEBHOOK_URL must be an http(s) URL, got {webhook_url!r}")
        return cls(
            replicate_token=Secret(env.get_str("REPLICATE_API_TOKEN")),
            replicate_base_url=env.get_str("RELAY_REPLICATE_BASE_URL", DEFAULT_BASE_URL),
            webhook_url=webhook_url,
            events_filter=events,
            default_model=_default_model(env),
            default_input=_default_input(env),
            job_events_topic=job_events_topic(env),
            default_deadline=default_deadline(env),
            default_training_deadline=default_training_deadline(env),
        )


def _default_model(env: Env) -> str:
    """RELAY_DEFAULT_MODEL, or the polling worker's REPLICATE_MODEL; both only if they agree."""
    relay, legacy = env.get_optional("RELAY_DEFAULT_MODEL"), env.get_optional("REPLICATE_MODEL")
    if relay and legacy and relay != legacy:
        raise ConfigError(f"RELAY_DEFAULT_MODEL ({relay}) and REPLICATE_MODEL ({legacy}) are both set and differ")
    chosen, name = (relay, "RELAY_DEFAULT_MODEL") if relay else (legacy, "REPLICATE_MODEL")
    if chosen is None:
        return DEFAULT_MODEL
    try:
        ModelRef.parse(chosen)
    except ValueError as error:
        raise ConfigError(f"{name}: {error}") from None
    return chosen


def _default_input(env: Env) -> dict[str, Any]:
    values: dict[str, Any] = {}
    output_format = env.get_optional("REPLICATE_OUTPUT_FORMAT")
    if output_format is not None:
        values["output_format"] = output_format
    if env.get_optional("REPLICATE_SAFETY_TOLERANCE") is not None:
        values["safety_tolerance"] = env.get_int("REPLICATE_SAFETY_TOLERANCE", 0)
    return values


class JobOptions(TypedDict, total=False):
    """What `Submitter.submit` and `submit_training` take besides what to run (see `submit`)."""

    metadata: Mapping[str, str] | None
    job_id: str | None
    deadline: timedelta | None
    app: str | None


@dataclass
class Submitter:
    """Creates jobs and their predictions or trainings, and cancels them. Clients are created by the
    caller and shared."""

    store: JobStore
    replicate: ReplicateAPI
    webhook_url: str
    events_filter: Sequence[str] = DEFAULT_EVENTS
    job_events: TopicPublisher | None = None
    default_deadline: timedelta | None = DEFAULT_DEADLINE
    default_training_deadline: timedelta | None = DEFAULT_TRAINING_DEADLINE

    @classmethod
    def configured(cls, store: JobStore, settings: SubmitSettings, *, job_events: TopicPublisher | None) -> Submitter:
        """The Submitter `settings` (read from the environment) describe, on the caller's clients."""
        replicate = ReplicateAPI.connect(settings.replicate_token.value, base_url=settings.replicate_base_url)
        return cls(
            store,
            replicate,
            settings.webhook_url,
            settings.events_filter,
            job_events,
            settings.default_deadline,
            settings.default_training_deadline,
        )

    def submit(
        self,
        target: ModelRef | DeploymentRef,
        input: dict[str, Any],
        **options: Unpack[JobOptions],
    ) -> Job:
        """Create `jobs/{id}` (submitted), then the prediction of a model, version or deployment, then
        link them; returns the job.

        `job_id`, when the caller chose it beforehand (the API records it with the request's
        Idempotency-Key, so a retry finds what this call created), else a new UUID hex.
        `app`: the API's authenticated caller, recorded as `Job.app`; None from the CLI and client.
        `deadline`: how long the job may take from now, sent to Replicate as `Cancel-After` and kept
        as `deadline_at`; None takes `default_deadline` (RELAY_DEFAULT_DEADLINE), a zero one sets none.
        Raises ValueError, before anything is written, for metadata a job cannot keep
        (replicate_relay.metadata: empty or reserved keys, too many or too long entries) or a
        negative deadline; SubmitFailed when Replicate refuses the prediction or cannot be reached,
        429s included once the backoff gives up (the job is then final: failed, submit_failed).

        A crash after the prediction is created but before the link is written loses nothing:
        the prediction's first webhook creates a job for it (source webhook), and the reconciler
        marks this submitted job aborted once it has waited long enough.
        """
        chosen = _deadline(options.get("deadline"), self.default_deadline)
        deployment = str(target) if isinstance(target, DeploymentRef) else None
        job = self._job("prediction", input, options, chosen, model=None if deployment else str(target))
        job = job.model_copy(update={"deployment": deployment})
        return self._start(
            job,
            lambda: self.replicate.create_prediction(
                target, input, webhook=self.webhook_url, events_filter=self.events_filter, cancel_after=chosen
            ),
        )

    def submit_training(
        self,
        version: ModelRef,
        *,
        destination: str,
        input: dict[str, Any],
        **options: Unpack[JobOptions],
    ) -> Job:
        """As `submit`, for a training of `version` (`owner/name:version`) into the model `destination`
        (`owner/name`, which must exist at Replicate); the job's kind is `training`.

        Replicate documents `Cancel-After` for predictions only: a training's deadline (None:
        `default_training_deadline`, RELAY_DEFAULT_TRAINING_DEADLINE) is kept as `deadline_at`, which
        the reconciler enforces. Raises ValueError, before anything is written, when `version` names
        no version or `destination` is not `owner/name`.
        """
        if not version.version:
            raise ValueError(f"a training needs a version: OWNER/NAME:VERSION, got {version}")
        try:
            DeploymentRef.parse(destination)  # the same form: owner/name, no version
        except ValueError:
            raise ValueError(f"destination must look like OWNER/NAME, got {destination!r}") from None
        chosen = _deadline(options.get("deadline"), self.default_training_deadline)
        job = self._job("training", input, options, chosen, model=str(version))
        return self._start(
            job,
            lambda: self.replicate.create_training(
                version,
                destination=destination,
                input=input,
                webhook=self.webhook_url,
                events_filter=self.events_filter,
            ),
        )

    def cancel(self, job_id: str) -> Job:
        """Ask Replicate to cancel the job's prediction or training; returns the job, `cancel_requested_at` set.

        The job ends `canceled` when Replicate's webhook says so (or the reconciler finds it so), not
        here. Calling again is harmless: the first request's time is kept, and Replicate is asked
        again. Raises JobNotFound for no such job, JobAlreadyFinal for a final job or one whose run
        has already ended (archiving its files), ReplicateAPIError when Replicate cannot be asked
        (the request stays recorded: call again). A job still being submitted has no run to cancel
        yet: its submit cancels it as soon as the run is linked.
        """
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}")
        if job.is_terminal or job.state == JobState.ARCHIVING:
            raise JobAlreadyFinal(job)
        if job.cancel_requested_at is None:
            try:
                self.store.update_fields(job_id, {"cancel_requested_at": self.store.now()})
            except google_exceptions.NotFound:
                raise JobNotFound(f"no job {job_id} (deleted meanwhile)") from None
        if job.prediction_id is not None:
            self.replicate.cancel(job.kind, job.prediction_id)
        return self._load(job_id)

    def _job(
        self,
        kind: Literal["prediction", "training"],
        input: dict[str, Any],
        options: JobOptions,
        deadline: timedelta | None,
        *,
        model: str | None,
    ) -> Job:
        return Job(
            job_id=options.get("job_id") or uuid.uuid4().hex,
            source="submit",
            kind=kind,
            model=model,
            input=input,
            metadata=check_metadata(options.get("metadata") or {}),
            deadline_at=self.store.now() + deadline if deadline else None,
            app=options.get("app"),
        )

    def _start(self, job: Job, create: Callable[[], str]) -> Job:
        """Store the submitted job, create its run with `create`, link them; the job as it now stands."""
        self.store.create_submitted(job)
        try:
            replicate_id = create()
        except ReplicateAPIError as error:
            failed = self.store.fail_submission(job.job_id, str(error))
            self._announce(failed)
            raise SubmitFailed(failed, str(error)) from error
        attached = self._load(self.store.attach_prediction(job.job_id, replicate_id))
        if attached.cancel_requested_at is not None and not attached.is_terminal:
            # Canceled while being created, before there was a run to cancel.
            self.replicate.cancel(attached.kind, replicate_id)
        return attached

    def _load(self, job_id: str) -> Job:
        job = self.store.load(job_id)
        if job is None:
            raise JobNotFound(f"job {job_id} vanished while it was submitted or canceled")
        return job

    def _announce(self, job: Job) -> None:
        if self.job_events is None:
            return
        try:
            announce_once(self.store, self.job_events, job)
        except PublishError as error:
            # The job stays final and unannounced; the reconciler announces such jobs.
            log.warning("could not announce job %s: %s", job.job_id, error)


def _deadline(given: timedelta | None, default: timedelta | None) -> timedelta | None:
    """The deadline a job gets: `given`, else `default`; a zero one means none."""
    if given is not None and given < timedelta(0):
        raise ValueError(f"a deadline cannot be negative, got {given}")
    chosen = default if given is None else given
    return chosen or None
