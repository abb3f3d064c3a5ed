"""`job-events`: one announcement per job that reaches a final state, for downstream consumers."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_serializer

from replicate_relay.jobs import Job
from replicate_relay.outputs import ArchivedObject
from replicate_relay.publisher import TopicPublisher
from replicate_relay.values import StoredValue

SCHEMA_VERSION: Literal["1"] = "1"

# The final states, as the Literal types below must spell them out (tests check they match TERMINAL_STATES).
FinalState = Literal["succeeded", "failed", "canceled", "aborted"]
EventType = Literal["job.succeeded", "job.failed", "job.canceled", "job.aborted"]


class AnnouncedOutput(BaseModel):
    """One archived output of the job, as announced: where its copy is and how to check it."""

    model_config = ConfigDict(frozen=True, json_schema_serialization_defaults_required=True)

    index: int | None = Field(description=ArchivedObject.model_fields["index"].description)
    gs_uri: str = Field(description=ArchivedObject.model_fields["gs_uri"].description)
    content_type: str = Field(description=ArchivedObject.model_fields["content_type"].description)
    size: int = Field(description=ArchivedObject.model_fields["size"].description)
    crc32c: str = Field(description=ArchivedObject.model_fields["crc32c"].description)


class JobEvent(BaseModel):
    """The data of a job-events message (JSON, UTF-8): a job reached its final state.

    Published once per job by whichever part of Relay made it final; in the rare case of a crash
    between publishing and recording it, a second message with the same `event_id` follows, which
    consumers drop. The job document `jobs/{job_id}` holds everything else.
    """

    # Every key is always present (null when unknown): consumers can rely on each one.
    model_config = ConfigDict(frozen=True, json_schema_serialization_defaults_required=True)

    schema_version: Literal["1"] = Field(
        default=SCHEMA_VERSION, description="The major version of this contract; `1` for job-event.v1."
    )
    event_id: str = Field(description="`{job_id}:{state}`, deterministic: drop a message whose event_id you have seen.")
    type: EventType = Field(description="`job.` and the final state.")
    job_id: str = Field(description="The job's id: its document is `jobs/{job_id}`.")
    prediction_id: str | None = Field(description="Replicate's prediction id; null if the job never got one.")
    state: FinalState = Field(description="The job's final state.")
    model: str | None = Field(description="The model, `owner/name`, as on the job.")
    # Added within v1 (defaults, so that messages published before still parse).
    kind: Literal["prediction", "training"] = Field(
        default="prediction", description=Job.model_fields["kind"].description
    )
    trained_version: str | None = Field(default=None, description=Job.model_fields["trained_version"].description)
    outputs: list[AnnouncedOutput] = Field(
        description="The archived copies of the output, in order (see the job's `outputs`); files that could not be "
        "archived are left out (the job failed: see `error_code`)."
    )
    # Added within v1 (a default, so that messages published before still parse).
    output: Any = Field(
        default=None,
        description="The prediction's output exactly as Replicate sent it (see the job's `output`); null when it is "
        "kept in the bucket (see `stored_values`).",
    )
    output_value: Any = Field(
        description="The output when it has no files and is small (see the job's `output_value`); null otherwise."
    )
    error: Any = Field(description="What went wrong (see the job's `error`); null for a succeeded job.")
    error_code: str | None = Field(description="Why the job did not succeed (see the job's `error_code`).")
    metadata: dict[str, str] = Field(description="The submitter's own key/values, as on the job.")
    stored_values: dict[str, StoredValue] = Field(
        default={},
        description="The prediction's values kept in the bucket, as on the job: `output` among them when it was too "
        "large to carry here.",
    )
    completed_at: Annotated[
        datetime | None, WithJsonSchema({"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]})
    ] = Field(
        description="When Replicate finished the prediction, RFC 3339 with the offset written +00:00; null if it "
        "never ran (e.g. a submission Replicate refused)."
    )

    @field_serializer("completed_at")
    def _rfc3339(self, value: datetime | None) -> str | None:
        # isoformat(), as the first version wrote it: "+00:00", microseconds only when non-zero.
        return value.isoformat() if value else None

    @classmethod
    def of(cls, job: Job) -> JobEvent:
        return cls.model_validate(
            {
                "event_id": event_id(job),
                "type": f"job.{job.state}",
                "job_id": job.job_id,
                "prediction_id": job.prediction_id,
                "state": job.state,
                "model": job.model,
                "kind": job.kind,
                "trained_version": job.trained_version,
                # A failed entry has no copy to point to.
                "outputs": [AnnouncedOutput.model_validate(entry) for entry in job.outputs if entry.get("gs_uri")],
                "output": job.output,
                "output_value": job.output_value,
                "error": job.error,
                "error_code": job.error_code,
                "metadata": job.metadata,
                "stored_values": job.stored_values,
                "completed_at": job.completed_at,
            }
        )


class JobEventAttributes(BaseModel):
    """The attributes of a job-events message (Pub/Sub string attributes), for subscription filters and routing
    without parsing the data."""

    model_config = ConfigDict(frozen=True)

    event_id: str = Field(description="As in the data.")
    type: EventType = Field(description='As in the data, e.g. filter `attributes.type = "job.succeeded"`.')
    job_id: str = Field(description="As in the data.")
    state: FinalState = Field(description="As in the data.")
    # Pub/Sub attributes cannot be null: a job without a prediction has no such attribute.
    prediction_id: Annotated[str | None, WithJsonSchema({"type": "string"})] = Field(
        default=None, description="As in the data; absent when the job has no prediction."
    )
    app: Annotated[str | None, WithJsonSchema({"type": "string"})] = Field(
        default=None,
        description="The job's `app`: the e-mail of the app that submitted it through Relay's API; absent for a job "
        "from the CLI, RelayClient or a webhook. An app's subscription filters on it "
        '(`attributes.app = "orders@my-project.iam.gserviceaccount.com"`), so it receives its own jobs\' events only.',
    )
    # Added by the publisher (replicate_relay.telemetry.inject_message), not by job_event: documented here
    # because consumers see them.
    traceparent: Annotated[str | None, WithJsonSchema({"type": "string"})] = Field(
        default=None,
        description="W3C Trace Context of the span that published the message (`00-{trace-id}-{span-id}-{flags}`): "
        "a consumer that continues it joins Relay's trace of the job. Absent when the publisher was not tracing.",
    )
    tracestate: Annotated[str | None, WithJsonSchema({"type": "string"})] = Field(
        default=None, description="W3C tracestate accompanying `traceparent`, when the trace has one."
    )

    @classmethod
    def of(cls, event: JobEvent, *, app: str | None = None) -> JobEventAttributes:
        """The attributes of `event`; `app` is the job's (not in the data: the job document holds it)."""
        return cls(
            event_id=event.event_id,
            type=event.type,
            job_id=event.job_id,
            state=event.state,
            prediction_id=event.prediction_id or None,
            app=app or None,
        )

    def to_attributes(self) -> dict[str, str]:
        return {name: value for name, value in self.model_dump().items() if value is not None}


def event_id(job: Job) -> str:
    """Deterministic, so a consumer drops the (rare) duplicate announcement of the same final state."""
    return f"{job.job_id}:{job.state}"


def job_event(job: Job) -> tuple[bytes, dict[str, str]]:
    """The message announcing `job`'s final state: JSON data and routing attributes."""
    event = JobEvent.of(job)
    # json.dumps, not model_dump_json: the bytes stay those of the first version (ASCII escapes,
    # compact separators, str() for anything JSON cannot hold).
    data = json.dumps(event.model_dump(), default=str, separators=(",", ":")).encode("utf-8")
    return data, JobEventAttributes.of(event, app=job.app).to_attributes()


def announce(publisher: TopicPublisher, job: Job) -> str:
    """Publish the job's final state and wait for Pub/Sub; raises PublishError."""
    data, attributes = job_event(job)
    return publisher.publish(data, attributes)
