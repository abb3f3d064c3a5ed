"""The `relay submit`, `relay train` and `relay cancel` commands: an app's client, made from the environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from replicate_relay.client import JobFailed, JobWaitTimeout, RelayClient
from replicate_relay.config import ConfigError
from replicate_relay.errors import JobAlreadyFinal, JobNotFound, ReplicateAPIError, SubmitFailed
from replicate_relay.jobs import Job
from replicate_relay.metadata import check_metadata
from replicate_relay.replicate_api import DeploymentRef, ModelRef
from replicate_relay.submit import SubmitSettings


def check_metadata_option(metadata: dict[str, str]) -> dict[str, str]:
    """`--metadata` pairs, checked as a job keeps them; ConfigError (exit 2) names the one at fault."""
    try:
        return check_metadata(metadata)
    except ValueError as error:
        raise ConfigError(f"--metadata: {error}") from None


def run_submit(
    *,
    model: str | None,
    deployment: str | None,
    inputs: dict[str, Any],
    metadata: dict[str, str],
    deadline: timedelta | None,
    wait_seconds: float,
) -> int:
    """`relay submit`: submit one prediction of a model or a deployment, print the job, optionally wait for its end.

    Through RelayClient.from_env: the command is an app's client, made from the same variables
    (the job-events topic, and the bucket and inline budget of the job's values, among them).
    """
    settings = SubmitSettings.from_env(os.environ)
    if model and deployment:
        raise ConfigError("give --model or --deployment, not both")
    target: ModelRef | DeploymentRef
    try:
        target = DeploymentRef.parse(deployment) if deployment else ModelRef.parse(model or settings.default_model)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    given = settings.input_for(target, inputs) if isinstance(target, ModelRef) else dict(inputs)
    checked = check_metadata_option(metadata)
    model_ref, deployment_ref = (None, target) if isinstance(target, DeploymentRef) else (target, None)
    return _run(
        lambda client: client.submit(model_ref, given, deployment=deployment_ref, metadata=checked, deadline=deadline),
        f"of {target}",
        wait_seconds,
    )


def run_train(
    *,
    version: str,
    destination: str,
    inputs: dict[str, Any],
    metadata: dict[str, str],
    deadline: timedelta | None,
    wait_seconds: float,
) -> int:
    """`relay train`: submit one training, print the job, optionally wait for its end."""
    try:
        ref = ModelRef.parse(version)
    except ValueError as error:
        raise ConfigError(f"--version: {error}") from None
    if not ref.version:
        raise ConfigError(f"--version must name a version: OWNER/NAME:VERSION, got {version!r}")
    try:
        DeploymentRef.parse(destination)
    except ValueError:
        raise ConfigError(f"--destination must look like OWNER/NAME, got {destination!r}") from None
    checked = check_metadata_option(metadata)
    return _run(
        lambda client: client.submit_training(
            ref, destination=destination, input=inputs, metadata=checked, deadline=deadline
        ),
        f"of {ref} into {destination}",
        wait_seconds,
    )


def _run(submit: Callable[[RelayClient], Job], what: str, wait_seconds: float) -> int:
    """Submit with a client from the environment, print the job, and wait for its end if asked."""
    with RelayClient.from_env(os.environ) as client:
        try:
            job = submit(client)
        except SubmitFailed as error:
            print(f"job {error.job.job_id} failed: {error}")
            return 1
        deadline = job.deadline_at.isoformat(timespec="seconds") if job.deadline_at else "none"
        print(f"job {job.job_id} submitted: {job.kind} {job.prediction_id} {what}; deadline {deadline}")
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


def run_cancel(job_id: str) -> int:
    """`relay cancel`: ask Replicate to cancel the job's run and print the job; 1 when there is nothing to cancel."""
    with RelayClient.from_env(os.environ) as client:
        try:
            job = client.cancel(job_id)
        except (JobAlreadyFinal, JobNotFound) as error:
            print(f"relay: {error}", file=sys.stderr)
            return 1
        except ReplicateAPIError as error:
            print(f"relay: job {job_id}: the cancel is recorded but Replicate was not told: {error}", file=sys.stderr)
            return 1
    asked = job.cancel_requested_at.isoformat(timespec="seconds") if job.cancel_requested_at else "-"
    print(
        f"job {job.job_id} {job.state}: cancel of {job.kind} {job.prediction_id or '-'} requested at {asked}; "
        "it ends canceled when Replicate reports it"
    )
    return 0
