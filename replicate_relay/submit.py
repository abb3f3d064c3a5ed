"""Submitting a prediction: the job first, then the prediction with the webhook set, then the link."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from replicate_relay.announcements import announce_once
from replicate_relay.client import JobFailed, JobWaitTimeout, RelayClient
from replicate_relay.config import ConfigError, Env, Secret, job_events_topic

# Defined in the one exception tree, replicate_relay/errors.py; still importable from here.
from replicate_relay.errors import SubmitFailed as SubmitFailed  # noqa: PLC0414 - re-export
from replicate_relay.jobs import Job
from replicate_relay.jobstore import JobStore
from replicate_relay.metadata import check_metadata
from replicate_relay.publisher import PublishError, TopicPublisher
from replicate_relay.replicate_api import DEFAULT_BASE_URL, ModelRef, ReplicateAPI, ReplicateAPIError

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


def check_metadata_option(metadata: dict[str, str]) -> dict[str, str]:
    """`--metadata` pairs, checked as a job keeps them; ConfigError (exit 2) names the one at fault."""
    try:
        return check_metadata(metadata)
    except ValueError as error:
        raise ConfigError(f"--metadata: {error}") from None


@dataclass
class Submitter:
    """Creates jobs and their predictions. Clients are created by the caller and shared."""

    store: JobStore
    replicate: ReplicateAPI
    webhook_url: str
    events_filter: Sequence[str] = DEFAULT_EVENTS
    job_events: TopicPublisher | None = None

    @classmethod
    def configured(cls, store: JobStore, settings: SubmitSettings, *, job_events: TopicPublisher | None) -> Submitter:
        """The Submitter `settings` (read from the environment) describe, on the caller's clients."""
        replicate = ReplicateAPI.connect(settings.replicate_token.value, base_url=settings.replicate_base_url)
        return cls(store, replicate, settings.webhook_url, settings.events_filter, job_events)

    def submit(
        self,
        model: ModelRef,
        input: dict[str, Any],
        *,
        metadata: Mapping[str, str] | None = None,
        job_id: str | None = None,
    ) -> Job:
        """Create `jobs/{id}` (submitted), then the prediction, then link them; returns the job.

        `job_id`, when the caller chose it beforehand (the API records it with the request's
        Idempotency-Key, so a retry finds what this call created), else a new UUID hex.
        Raises ValueError, before anything is written, for metadata a job cannot keep
        (replicate_relay.metadata: empty or reserved keys, too many or too long entries).

        A crash after the prediction is created but before the link is written loses nothing:
        the prediction's first webhook creates a job for it (source webhook), and the reconciler
        marks this submitted job aborted once it has waited long enough.
        """
        job = Job(
            job_id=job_id or uuid.uuid4().hex,
            source="submit",
            model=str(model),
            input=input,
            metadata=check_metadata(metadata or {}),
        )
        self.store.create_submitted(job)
        try:
            prediction_id = self.replicate.create_prediction(
                model, input, webhook=self.webhook_url, events_filter=self.events_filter
            )
        except ReplicateAPIError as error:
            failed = self.store.fail_submission(job.job_id, str(error))
            self._announce(failed)
            raise SubmitFailed(failed, str(error)) from error
        job_id = self.store.attach_prediction(job.job_id, prediction_id)
        attached = self.store.load(job_id)
        if attached is None:
            raise LookupError(f"job {job_id} vanished after its prediction was attached")
        return attached

    def _announce(self, job: Job) -> None:
        if self.job_events is None:
            return
        try:
            announce_once(self.store, self.job_events, job)
        except PublishError as error:
            # The job stays final and unannounced; the reconciler announces such jobs.
            log.warning("could not announce job %s: %s", job.job_id, error)


def run_submit(*, model: str | None, inputs: dict[str, Any], metadata: dict[str, str], wait_seconds: float) -> int:
    """`relay submit`: submit one prediction, print the job, optionally wait for its end.

    Through RelayClient.from_env: the command is an app's client, made from the same variables
    (the job-events topic, and the bucket and inline budget of the job's values, among them).
    """
    settings = SubmitSettings.from_env(os.environ)
    try:
        ref = ModelRef.parse(model or settings.default_model)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    checked = check_metadata_option(metadata)
    with RelayClient.from_env(os.environ) as client:
        try:
            job = client.submit(ref, settings.input_for(ref, inputs), metadata=checked)
        except SubmitFailed as error:
            print(f"job {error.job.job_id} failed: {error}")
            return 1
        print(f"job {job.job_id} submitted: prediction {job.prediction_id} of {ref}")
        if not wait_seconds:
            return 0
        # One Firestore listener on the job, told of each change: no re-reading.
        try:
            final = client.wait(job.job_id, timeout=wait_seconds)
        except JobFailed as failed:
            final = failed.job
        except JobWaitTimeout as error:
            print(f"job {job.job_id} has not ended after {wait_seconds:g} s (last seen: {error.last_state or '-'})")
            return 1
    uris = ", ".join(entry["gs_uri"] for entry in final.outputs if entry.get("gs_uri")) or "-"
    print(f"job {final.job_id} {final.state}: outputs {uris}; error {final.error or '-'}")
    return 0 if final.state == "succeeded" else 1
