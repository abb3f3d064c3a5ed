"""The API's request and response bodies: pydantic models, the source of the OpenAPI document."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from relay.jobs import Job
from relay.submit import DEFAULT_EVENTS

# Replicate's model names: owner and name of letters, digits, `-`, `_` and `.`; a version id of
# letters and digits (64 hex characters today). Stricter than relay.replicate_api.ModelRef.parse,
# which also reads names from operators' settings: here a bad name is the caller's error, a 422.
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(?::[A-Za-z0-9]+)?$"
_MODEL = re.compile(MODEL_PATTERN)
WebhookEvent = Literal["start", "output", "logs", "completed"]
MAX_METADATA_ENTRIES = 64


class CreateJob(BaseModel):
    """`POST /v1/jobs`: one Replicate prediction to run, with its webhook set to Relay's receiver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        description="The model: `owner/name` (its latest version) or `owner/name:version`.",
        json_schema_extra={"pattern": MODEL_PATTERN},
        examples=["flux-kontext-apps/restore-image"],
    )
    input: dict[str, Any] = Field(description="The prediction's input, as the model defines it.")
    metadata: dict[str, str] = Field(
        default={},
        description=f"Your own string key/values (at most {MAX_METADATA_ENTRIES}), kept on the job untouched.",
    )
    webhook_events: list[WebhookEvent] | None = Field(
        default=None,
        description="Which of Replicate's webhook events to receive (must include `completed`); "
        "default RELAY_WEBHOOK_EVENTS, all four unless configured.",
    )

    @field_validator("model")
    @classmethod
    def _model_format(cls, value: str) -> str:
        if not _MODEL.match(value):
            raise ValueError("must look like OWNER/NAME or OWNER/NAME:VERSION")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_METADATA_ENTRIES:
            raise ValueError(f"at most {MAX_METADATA_ENTRIES} entries")
        return value

    @field_validator("webhook_events")
    @classmethod
    def _events(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if "completed" not in value:
            raise ValueError("must include completed, or the job never learns its outcome")
        return sorted(set(value), key=DEFAULT_EVENTS.index)


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
