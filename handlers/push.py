"""Decoding the push envelope Pub/Sub (and its emulator) POSTs to a subscriber."""

from __future__ import annotations

import base64
import binascii
import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from handlers.errors import PermanentError, unavailable
from replicate_relay.bodies import BodyStore, StoredBody
from replicate_relay.events import EventAttributes, PayloadError, PredictionEvent, parse_prediction


class PushMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    data: str = ""
    attributes: dict[str, str] = {}
    message_id: str = Field(default="", alias="messageId")
    publish_time: str | None = Field(default=None, alias="publishTime")


class PushEnvelope(BaseModel):
    """`{"message": {...}, "subscription": "projects/P/subscriptions/S", "deliveryAttempt": N}`.

    `deliveryAttempt` is sent only by the real service, and only with a dead-letter policy.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    message: PushMessage
    subscription: str = ""
    delivery_attempt: int | None = Field(default=None, alias="deliveryAttempt")

    @property
    def subscription_name(self) -> str:
        return self.subscription.rsplit("/", 1)[-1]


def parse_envelope(body: bytes) -> PushEnvelope:
    """Raise PermanentError for a body that is not a push envelope."""
    try:
        return PushEnvelope.model_validate(json.loads(body))
    except (ValueError, RecursionError, ValidationError) as error:
        raise PermanentError("bad_envelope", f"request is not a Pub/Sub push envelope: {error}") from None


def decode_event(envelope: PushEnvelope, bodies: BodyStore | None = None) -> PredictionEvent:
    """The prediction event in a push message, its body read from `bodies` when the message points
    there (replicate_relay/bodies.py); PermanentError when it cannot be decoded, TransientError when
    the bucket is unavailable."""
    try:
        data = base64.b64decode(envelope.message.data, validate=True)
    except (binascii.Error, ValueError):
        raise PermanentError("bad_data", "message data is not base64") from None
    try:
        attributes = EventAttributes.from_message(envelope.message.attributes)
        stored = StoredBody.from_attributes(envelope.message.attributes)
        if stored is not None:
            if bodies is None:
                raise PermanentError("no_body_store", "the message's body is in the bucket and no bucket is configured")
            with unavailable("storage"):
                data = bodies.get(stored)
        prediction = parse_prediction(data)
    except PayloadError as error:
        raise PermanentError(error.reason, error.message) from None
    if prediction.id != attributes.prediction_id:
        raise PermanentError("id_mismatch", "message attribute prediction_id differs from the body's id")
    return PredictionEvent(attributes=attributes, prediction=prediction)
