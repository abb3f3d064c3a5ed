"""The API's request and response bodies: pydantic models, the source of the OpenAPI document."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.config import JsonDict

from replicate_relay import metadata as rules
from replicate_relay.jobs import Job
from replicate_relay.submit import DEFAULT_EVENTS
from replicate_relay.values import is_utf8

# Replicate's model names: owner and name of letters, digits, `-`, `_` and `.`; a version id of
# letters and digits (64 hex characters today). Stricter than replicate_relay.replicate_api.ModelRef.parse,
# which also reads names from operators' settings: here a bad name is the caller's error, a 422.
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(?::[A-Za-z0-9]+)?$"
_MODEL = re.compile(MODEL_PATTERN)
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


class CreateJob(BaseModel):
    """`POST /v1/jobs`: one Replicate prediction to run, with its webhook set to Relay's receiver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        description="The model: `owner/name` (its latest version) or `owner/name:version`.",
        json_schema_extra={"pattern": MODEL_PATTERN},
        examples=["flux-kontext-apps/restore-image"],
    )
    input: dict[str, Any] = Field(
        description="The prediction's input, as the model defines it. Its strings, keys too, must be Unicode text: "
        "a lone surrogate (`\\ud800`) cannot be sent to Replicate as UTF-8."
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

    @field_validator("model")
    @classmethod
    def _model_format(cls, value: str) -> str:
        if not _MODEL.match(value):
            raise ValueError("must look like OWNER/NAME or OWNER/NAME:VERSION")
        return value

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
        default=None, description="The job created for a submission Replicate refused (`submit-*` problems)."
    )
