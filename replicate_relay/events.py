"""The event contract on `replicate-events`: a Replicate prediction body plus routing attributes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

# Defined in the one exception tree, replicate_relay/errors.py; still importable from here.
from replicate_relay.errors import PayloadError as PayloadError  # noqa: PLC0414 - re-export

# Prediction ids are short lower-case base32-like strings; be a little generous but keep them
# safe to use as a Firestore document id and a Cloud Storage path segment.
_PREDICTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_MAX_STATUS_LENGTH = 64


class PredictionStatus(StrEnum):
    """The statuses Replicate documents. Others may appear; they are carried as plain strings."""

    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    ABORTED = "aborted"


class Source(StrEnum):
    """Who put an event on the topic."""

    WEBHOOK = "webhook"
    RECONCILER = "reconciler"
    REPLAY = "replay"
    ADOPTED = "adopted"  # `relay adopt`: a prediction created without a webhook (the old polling worker's)


class Prediction(BaseModel):
    """The prediction object Replicate sends (the same as GET /v1/predictions/{id}).

    Only `id` and `status` are required; everything else is optional, and unknown fields are
    kept, so a new field or status from Replicate never breaks the pipeline.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    status: str
    model: str | None = None
    version: str | None = None
    input: dict[str, Any] | None = None
    output: Any = None
    error: Any = None
    logs: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    data_removed: bool | None = None
    metrics: dict[str, Any] | None = None
    urls: dict[str, Any] | None = None

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        return _check_id(value)

    @field_validator("status")
    @classmethod
    def _check_status(cls, value: str) -> str:
        return _check_status(value)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def kind(self) -> Kind:
        """`training` when Replicate's own URL for the object is a training's (`…/v1/trainings/{id}`):
        a training's webhook carries the same body as a prediction's, and only that tells them apart."""
        get = (self.urls or {}).get("get")
        return "training" if isinstance(get, str) and "/v1/trainings/" in get else "prediction"

    @property
    def trained_version(self) -> str | None:
        """A succeeded training's new version (`output.version`, `owner/model:version-id`); else None."""
        if self.status != PredictionStatus.SUCCEEDED or not isinstance(self.output, dict):
            return None
        version = self.output.get("version")
        return version if isinstance(version, str) and version else None


# What Replicate runs: the job's `kind`.
Kind = Literal["prediction", "training"]

TERMINAL_STATUSES = frozenset(
    {PredictionStatus.SUCCEEDED, PredictionStatus.FAILED, PredictionStatus.CANCELED, PredictionStatus.ABORTED}
)


def _check_id(value: str) -> str:
    if not _PREDICTION_ID.fullmatch(value):
        raise ValueError("must be 1-128 letters, digits, '-' or '_'")
    return value


def _check_status(value: str) -> str:
    if not value or len(value) > _MAX_STATUS_LENGTH or not value.isprintable():
        raise ValueError(f"must be a non-empty printable string of at most {_MAX_STATUS_LENGTH} characters")
    return value


@dataclass(frozen=True)
class PredictionRef:
    """What the receiver needs of a body: which prediction, in which status."""

    id: str
    status: str


def parse_prediction_ref(body: bytes) -> PredictionRef:
    """Check that a body is a JSON object with a valid `id` and `status`, and nothing more.

    The receiver's check: the same rules as `Prediction` for those two fields, without building
    the whole model (the handlers do that), which halves the receiver's parsing cost.
    """
    document = _load_object(body)
    checked: dict[str, str] = {}
    for name, check in (("id", _check_id), ("status", _check_status)):
        value = document.get(name)
        if not isinstance(value, str):
            raise PayloadError("invalid_prediction", f"prediction {name}: must be a string")
        try:
            checked[name] = check(value)
        except ValueError as error:
            raise PayloadError("invalid_prediction", f"prediction {name}: {error}") from None
    return PredictionRef(checked["id"], checked["status"])


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different. json.loads would keep the last of a repeated
    key, so `{"status":"failed",…,"status":"succeeded"}` would mean whatever a parser picks."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return document


def _load_object(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("invalid_utf8", "body is not valid UTF-8") from None
    try:
        document = json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise PayloadError("json_too_deep", "body nests JSON too deeply") from None
    except _DuplicateKey as error:
        raise PayloadError("duplicate_key", f"body repeats the key {error.args[0][:64]!r} in one object") from None
    except ValueError as error:
        raise PayloadError("invalid_json", f"body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise PayloadError("not_an_object", "body is not a JSON object")
    return document


def parse_prediction(body: bytes) -> Prediction:
    """Parse a webhook body or message data into a Prediction, or raise PayloadError."""
    document = _load_object(body)
    try:
        return Prediction.model_validate(document)
    except RecursionError:
        raise PayloadError("json_too_deep", "body nests JSON too deeply") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise PayloadError("invalid_prediction", f"prediction {where}: {first['msg']}") from None


@dataclass(frozen=True)
class EventAttributes:
    """Pub/Sub message attributes on `replicate-events`; handlers route on them without parsing data."""

    prediction_id: str
    status: str
    webhook_id: str
    webhook_timestamp: int
    source: Source = Source.WEBHOOK
    traceparent: str | None = None

    def to_message(self) -> dict[str, str]:
        attributes = {
            "prediction_id": self.prediction_id,
            "status": self.status,
            "webhook_id": self.webhook_id,
            "webhook_timestamp": str(self.webhook_timestamp),
            "source": self.source.value,
        }
        if self.traceparent:
            attributes["traceparent"] = self.traceparent
        return attributes

    @classmethod
    def of(
        cls, prediction: Prediction | PredictionRef, webhook_id: str, timestamp: int, source: Source
    ) -> EventAttributes:
        """The attributes of one event about `prediction`."""
        return cls(prediction.id, prediction.status, webhook_id, timestamp, source)

    @classmethod
    def observed(cls, prediction: Prediction, source: Source, now: datetime) -> EventAttributes:
        """The attributes of a prediction Relay read from Replicate's API instead of a webhook
        (the reconciler, `relay adopt`). The webhook id is deterministic per observed state, so the
        same state published twice, by two runs or two reconcilers, is one event to the handlers."""
        webhook_id = f"{source.value}:{prediction.id}:{prediction.status}:{len(prediction.logs or '')}"
        return cls.of(prediction, webhook_id, int(now.timestamp()), source)

    @classmethod
    def from_message(cls, attributes: dict[str, str]) -> EventAttributes:
        """Read the attributes of a message; raises PayloadError when one is missing or wrong."""
        try:
            return cls(
                prediction_id=attributes["prediction_id"],
                status=attributes["status"],
                webhook_id=attributes["webhook_id"],
                webhook_timestamp=int(attributes["webhook_timestamp"]),
                source=Source(attributes.get("source", Source.WEBHOOK.value)),
                traceparent=attributes.get("traceparent"),
            )
        except KeyError as error:
            raise PayloadError("missing_attribute", f"message attribute {error.args[0]} is missing") from None
        except ValueError as error:
            raise PayloadError("invalid_attribute", f"message attribute is invalid: {error}") from None


@dataclass(frozen=True)
class PredictionEvent:
    """One event as the handlers see it: where it came from, and the prediction it carries."""

    attributes: EventAttributes
    prediction: Prediction
