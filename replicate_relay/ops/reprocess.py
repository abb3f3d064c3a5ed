"""Republishing what Replicate knows of one prediction, as the reconciler does, but fresh and on demand."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from google.cloud import firestore

from replicate_relay.bodies import BodyStore
from replicate_relay.events import EventAttributes, PayloadError, Source, parse_prediction
from replicate_relay.jobstore import JOBS
from replicate_relay.ops.context import OpsSettings
from replicate_relay.ops.errors import OpsError
from replicate_relay.publisher import PublishError, TopicPublisher
from replicate_relay.replicate_api import ReplicateAPI, ReplicateAPIError


@dataclass(frozen=True)
class Reprocessed:
    prediction_id: str
    job_id: str | None  # when the id given was a job's
    status: str
    webhook_id: str
    topic: str
    message_id: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reprocess_webhook_id(prediction_id: str, status: str, now: datetime) -> str:
    """New every second, so the handlers apply the event rather than drop it as a duplicate."""
    return f"reprocess:{prediction_id}:{status}:{int(now.timestamp())}"


def resolve_prediction(db: firestore.Client, settings: OpsSettings, identifier: str) -> tuple[str, str | None, str]:
    """(Replicate's id, job id, kind) for a job id; (identifier, None, "prediction") for anything else, taken
    as the id of a prediction (or, if Replicate has none, of a training)."""
    if not identifier or "/" in identifier:
        raise OpsError(f"{identifier!r} is not a job or prediction id")
    with settings.firestore_errors():
        snapshot = db.collection(JOBS).document(identifier).get(**settings.rpc())
    if not snapshot.exists:
        return identifier, None, "prediction"
    document = snapshot.to_dict() or {}
    prediction_id = document.get("prediction_id")
    if not prediction_id:
        raise OpsError(f"job {identifier} has no prediction yet, so there is nothing to ask Replicate about")
    return str(prediction_id), identifier, str(document.get("kind") or "prediction")


def reprocess(
    replicate: ReplicateAPI,
    publisher: TopicPublisher,
    prediction_id: str,
    *,
    now: datetime,
    job_id: str | None = None,
    kind: str = "prediction",
    bodies: BodyStore | None = None,
) -> Reprocessed:
    """Fetch the prediction from Replicate and publish its exact JSON with source=reconciler.

    The handlers treat it like any event: a job already final absorbs it, one behind moves forward,
    and a succeeded prediction is archived again if its outputs are missing. A body too large for a
    message goes to the bucket through `bodies` and is published as a pointer, as the receiver does.
    """
    try:
        body = _read(replicate, kind, prediction_id)
        prediction = parse_prediction(body)
    except ReplicateAPIError as error:
        if error.status == 404:
            raise OpsError(f"Replicate has no prediction or training {prediction_id}") from None
        raise OpsError(f"cannot read {kind} {prediction_id} from Replicate: {error}") from None
    except PayloadError as error:
        raise OpsError(f"Replicate's answer for {prediction_id} is not a prediction: {error.message}") from None
    webhook_id = reprocess_webhook_id(prediction.id, prediction.status, now)
    attributes = EventAttributes.of(prediction, webhook_id, int(now.timestamp()), Source.RECONCILER)
    try:
        data, message = (body, attributes.to_message())
        if bodies is not None:
            data, message = bodies.message(body, message, prediction.id)
        message_id = publisher.publish(data, message)
    except PublishError as error:
        detail = " ".join(str(error).split())[:300]
        raise OpsError(f"nothing published to {publisher.topic_path}: {detail}") from None
    return Reprocessed(prediction.id, job_id, prediction.status, webhook_id, publisher.topic_path, message_id)


def _read(replicate: ReplicateAPI, kind: str, replicate_id: str) -> bytes:
    """The run's JSON: a training's, or a prediction's (then a training's, for an id of unknown kind)."""
    if kind == "training":
        return replicate.get_training(replicate_id)
    try:
        return replicate.get_prediction(replicate_id)
    except ReplicateAPIError as error:
        if error.status != 404:
            raise
        return replicate.get_training(replicate_id)


def render_reprocessed(result: Reprocessed) -> str:
    job = f" (job {result.job_id})" if result.job_id else ""
    return (
        f"Published prediction {result.prediction_id}{job}, status {result.status}, to {result.topic}: "
        f"message {result.message_id}, webhook_id {result.webhook_id}\n"
        f"A job already final absorbs it; see relay jobs show {result.job_id or result.prediction_id}"
    )
