"""The API's request and response bodies: pydantic models, the source of the OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.config import JsonDict

from replicate_relay import metadata as rules
from replicate_relay.config import parse_duration
from replicate_relay.jobs import Job
from replicate_relay.submit import DEFAULT_EVENTS
from replicate_relay.values import is_utf8

# Replicate's model names: owner and name of letters, digits, `-`, `_` and `.`; a version id of
# letters and digits (64 hex characters today). Stricter than replicate_relay.replicate_api.ModelRef.parse,
# which also reads names from operators' settings: here a bad name is the caller's error, a 422.
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
MODEL_PATTERN = rf"^{_NAME}(?::[A-Za-z0-9]+)?$"
DEPLOYMENT_PATTERN = rf"^{_NAME}$"  # a deployment, and a training's destination: `owner/name`, no version
VERSION_PATTERN = rf"^{_NAME}:[A-Za-z0-9]+$"  # a training's base: the version is required


def _shaped(pattern: str, shape: str) -> AfterValidator:
    """A check that the whole string matches `pattern`, saying the `shape` it must have."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"must look like {shape}")
        return value

    return AfterValidator(check)


ModelName = Annotated[str, _shaped(MODEL_PATTERN, "OWNER/NAME or OWNER/NAME:VERSION")]
OwnerName = Annotated[str, _shaped(DEPLOYMENT_PATTERN, "OWNER/NAME")]
VersionName = Annotated[str, _shaped(VERSION_PATTERN, "OWNER/NAME:VERSION")]
WebhookEvent = Literal["start", "output", "logs", "completed"]
# Checked one by one so that a 422 names the entry: `metadata.KEY` for a value, `metadata.KEY.[key]`
# for the key itself; then replicate_relay.metadata.check_metadata, the whole rule, for the number of entries.
MetadataKey = Annotated[str, AfterValidator(rules.check_key)]
MetadataValue = Annotated[str, AfterValidator(rules.check_value)]
# What replicate_relay.metadata enforces, in JSON Schema (lengths in characters, as maxLength counts them).
METADATA_SCHEMA: JsonDict = {
    "maxProperties": rules.MAX_ENTRIES,
    "propertyNames": {
        "minLength": 1,
        "maxLength": rules.MAX_KEY_CHARS,
        "not": {"pattern": rules.RESERVED_KEY_PATTERN},
    },
    "additionalProperties": {"type": "string", "maxLength": rules.MAX_VALUE_CHARS},
}


# A deadline as the API takes it: hours, minutes and seconds, each optional, in that order (`30m`,
# `1h30m`, `90s`), bounded so that any string the pattern allows is a duration Relay can keep;
# not all zero (the `not` of DEADLINE_SCHEMA). Stricter than the settings' durations
# (replicate_relay.config), which also read `off`: an app that wants no deadline of its own omits it.
DEADLINE_PATTERN = r"^(?:[0-9]{1,4}h)?(?:[0-9]{1,6}m)?(?:[0-9]{1,8}s)?$"
_DEADLINE = re.compile(DEADLINE_PATTERN)
DEADLINE_SCHEMA: JsonDict = {"pattern": DEADLINE_PATTERN, "minLength": 2, "not": {"pattern": r"^(?:0+[hms])+$"}}


def _absent_or(extra: JsonDict) -> Callable[[JsonDict], None]:
    """The schema of an optional field whose absence is told apart by `model_fields_set`: `extra`,
    and no `default` (its placeholder, which the field's own pattern refuses)."""

    def edit(schema: JsonDict) -> None:
        schema.pop("default", None)
        schema.update(extra)

    return edit


def parse_deadline(text: str) -> timedelta:
    """A deadline as DEADLINE_PATTERN allows it, read by the settings' parse_duration; ValueError
    for anything else, zero included."""
    if not (len(text) >= 2 and _DEADLINE.fullmatch(text)):
        raise ValueError("must be a duration of hours, minutes and seconds, such as 30m, 1h30m or 90s")
    duration = parse_duration(text)
    if not duration:
        raise ValueError("must be longer than zero; leave it out for RELAY_DEFAULT_DEADLINE")
    return duration


class _Submission(BaseModel):
    """What every submission carries besides what Replicate runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: dict[str, Any] = Field(
        description="The input, as the model (or the trainer) defines it. Its strings, keys too, must be Unicode "
        "text: a lone surrogate (`\\ud800`) cannot be sent to Replicate as UTF-8."
    )
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default={},
        description=f"Your own string key/values, kept on the job untouched: at most {rules.MAX_ENTRIES}; keys "
        f"of 1 to {rules.MAX_KEY_CHARS} characters, not beginning and ending with `__` (Firestore reserves "
        f"those); values of at most {rules.MAX_VALUE_CHARS} characters; no lone surrogates (`\\ud800`).",
        json_schema_extra=METADATA_SCHEMA,
    )
    webhook_events: (
        Annotated[list[WebhookEvent], Field(json_schema_extra={"contains": {"const": "completed"}})] | None
    ) = Field(
        default=None,
        description="Which of Replicate's webhook events to receive (must include `completed`; repeats count "
        "once); default RELAY_WEBHOOK_EVENTS, all four unless configured.",
    )
    deadline: str = Field(
        default="",
        description="How long the job may take, from now: hours, minutes and seconds (`30m`, `1h30m`, `90s`). "
        "Kept as the job's `deadline_at`, past which Relay cancels a job still open (`error_code` "
        "`deadline_exceeded`); a prediction's is also sent to Replicate as `Cancel-After`. Default "
        "RELAY_DEFAULT_DEADLINE for a prediction, RELAY_DEFAULT_TRAINING_DEADLINE for a training.",
        json_schema_extra=_absent_or(DEADLINE_SCHEMA),
        examples=["30m"],
    )

    @field_validator("input")
    @classmethod
    def _input_text(cls, value: dict[str, Any]) -> dict[str, Any]:
        found = lone_surrogate(value)
        if found is not None:
            path, text = found
            raise ValueError(f"input{path} is not Unicode text: it holds a lone surrogate ({_surrogate_in(text)!r})")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str]) -> dict[str, str]:
        return rules.check_metadata(value)

    @field_validator("webhook_events")
    @classmethod
    def _events(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if "completed" not in value:
            raise ValueError("must include completed, or the job never learns its outcome")
        return sorted(set(value), key=DEFAULT_EVENTS.index)

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, value: str) -> str:
        parse_deadline(value)
        return value

    def deadline_delta(self) -> timedelta | None:
        """`deadline` as a duration; None when not given (the submitter applies its default)."""
        return parse_deadline(self.deadline) if "deadline" in self.model_fields_set else None


class CreateJob(_Submission):
    """`POST /v1/jobs`: one Replicate prediction, of a model or a deployment, with its webhook set to
    Relay's receiver. Exactly one of `model` and `deployment`."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["model"]}, {"required": ["deployment"]}]},
    )

    model: ModelName = Field(
        default="",
        description="The model: `owner/name` (its latest version) or `owner/name:version`. Not with `deployment`.",
        json_schema_extra=_absent_or({"pattern": MODEL_PATTERN}),
        examples=["flux-kontext-apps/restore-image"],
    )
    deployment: OwnerName = Field(
        default="",
        description="A deployment of yours, `owner/name`: the prediction runs on its hardware and version "
        "(Replicate's `POST /v1/deployments/{owner}/{name}/predictions`). Not with `model`.",
        json_schema_extra=_absent_or({"pattern": DEPLOYMENT_PATTERN}),
        examples=["acme/restore-image-prod"],
    )

    def targets_given(self) -> list[str]:
        """Which of `model` and `deployment` the request names."""
        return [name for name in ("model", "deployment") if name in self.model_fields_set]


class CreateTraining(_Submission):
    """`POST /v1/trainings`: one Replicate training of a model version into `destination`, with its
    webhook set to Relay's receiver."""

    version: VersionName = Field(
        description="The version to train from: `owner/name:version`, the version id required.",
        json_schema_extra={"pattern": VERSION_PATTERN},
        examples=["ostris/flux-dev-lora-trainer:e440909d3512c31646ee2e0c7d6f6f4923224863a6a10c494606e79fb5844497"],
    )
    destination: OwnerName = Field(
        description="The model the new version is pushed to, `owner/name`; it must exist on Replicate.",
        json_schema_extra={"pattern": DEPLOYMENT_PATTERN},
        examples=["acme/flux-my-style"],
    )


def lone_surrogate(value: Any) -> tuple[str, str] | None:
    """The first string of a parsed JSON value, key or value, holding a lone surrogate (what JSON's
    `\\ud800` escape gives and json.loads lets through), as (its path, `.key` or `.0` parts, the
    string); None if there is none. Iterative: the value may be as deep as the parser allowed."""
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, str):
            if not is_utf8(item):
                return path, item
        elif isinstance(item, dict):
            for key, child in item.items():
                if not is_utf8(key):
                    return f"{path}.{key!a}", key
                pending.append((f"{path}.{key}", child))
        elif isinstance(item, list):
            pending.extend((f"{path}.{index}", child) for index, child in enumerate(item))
    return None


def _surrogate_in(text: str) -> str:
    return next(char for char in text if "\ud800" <= char <= "\udfff")


class JobList(BaseModel):
    """`GET /v1/jobs`: one page of jobs, newest first."""

    jobs: list[Job] = Field(description="The jobs of this page, newest `created_at` first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page. Opaque: do not parse it."
    )


class FieldError(BaseModel):
    field: str = Field(description="Where the problem is: a body path such as `input.prompt`, or a query parameter.")
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem detail: every 4xx and 5xx answer's body (`application/problem+json`)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A stable URI naming the problem (docs/API.md lists them); branch on it.")
    title: str = Field(description="A short summary of the problem type.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request.")
    instance: str = Field(description="The path of the request.")
    errors: list[FieldError] | None = Field(default=None, description="The fields at fault, for validation problems.")
    job_id: str | None = Field(
        default=None,
        description="The job the problem is about: the failed job of a submission Replicate refused or could not "
        "take (`submit-refused`, `replicate-unavailable`), or the job of a cancel (`job-final`, "
        "`replicate-unavailable`).",
    )
