"""handlers.push: decoding the Pub/Sub push envelope into a PredictionEvent."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from handlers.errors import PermanentError
from handlers.push import PushEnvelope, decode_event, parse_envelope
from replicate_relay.events import EventAttributes, Source

PREDICTION = {"id": "ufawqhfynnddngldkgtslldrkq", "status": "succeeded", "output": "restored"}
DATA = json.dumps(PREDICTION).encode("utf-8")
ATTRIBUTES = {
    "prediction_id": PREDICTION["id"],
    "status": "succeeded",
    "webhook_id": "msg_unit_1",
    "webhook_timestamp": "1700000000",
    "source": "webhook",
}
SUBSCRIPTION = "projects/unit-test-project/subscriptions/job-status"


def envelope(*, data: bytes = DATA, **message_changes: Any) -> dict[str, Any]:
    """A push envelope as Pub/Sub sends it; a message field set to ... is left out."""
    message = {
        "data": base64.b64encode(data).decode("ascii"),
        "attributes": ATTRIBUTES,
        "messageId": "1234567890",
        "publishTime": "2025-01-02T03:04:05.678Z",
        **message_changes,
    }
    message = {key: value for key, value in message.items() if value is not ...}
    return {"message": message, "subscription": SUBSCRIPTION, "deliveryAttempt": 2}


def raw(document: Any) -> bytes:
    return json.dumps(document).encode("utf-8")


def permanent(body: bytes) -> PermanentError:
    with pytest.raises(PermanentError) as caught:
        decode_event(parse_envelope(body))
    assert caught.value.status == 200  # acknowledged: redelivery cannot help
    return caught.value


def test_valid_push_envelope_decodes_to_a_prediction_event() -> None:
    event = decode_event(parse_envelope(raw(envelope())))
    assert event.attributes == EventAttributes(
        prediction_id=PREDICTION["id"],
        status="succeeded",
        webhook_id="msg_unit_1",
        webhook_timestamp=1_700_000_000,
        source=Source.WEBHOOK,
    )
    assert (event.prediction.id, event.prediction.status, event.prediction.output) == (
        PREDICTION["id"],
        "succeeded",
        "restored",
    )


def test_envelope_fields_are_read() -> None:
    parsed = parse_envelope(raw(envelope()))
    assert parsed.subscription_name == "job-status"
    assert parsed.delivery_attempt == 2
    assert parsed.message.message_id == "1234567890"
    assert parsed.message.publish_time == "2025-01-02T03:04:05.678Z"


def test_envelope_from_the_emulator_without_delivery_attempt_is_read() -> None:
    document = envelope()
    del document["deliveryAttempt"]
    assert parse_envelope(raw(document)).delivery_attempt is None


def test_unknown_envelope_fields_are_ignored() -> None:
    document = envelope(orderingKey="k")
    document["somethingNew"] = True
    assert decode_event(parse_envelope(raw(document))).prediction.id == PREDICTION["id"]


def test_unknown_status_in_a_message_is_passed_on() -> None:
    data = json.dumps({**PREDICTION, "status": "paused"}).encode()
    event = decode_event(parse_envelope(raw(envelope(data=data, attributes={**ATTRIBUTES, "status": "paused"}))))
    assert (event.attributes.status, event.prediction.status) == ("paused", "paused")


# Bodies that are not a push envelope, by test id.
NOT_ENVELOPES = {
    "not-json": b"not json",
    "empty": b"",
    "not-utf8": b"\xff\xfe",
    "array": b"[]",
    "null": b"null",
    "missing-message": raw({"subscription": SUBSCRIPTION}),
    "message-not-object": raw({"message": "text"}),
    "data-not-string": raw({"message": {"data": 5}}),
    "attributes-not-object": raw({"message": {"attributes": ["a"]}}),
    "attribute-not-string": raw({"message": {"attributes": {"status": 1}}}),
    "deeply-nested-arrays": b"[" * 100_000,
    "deeply-nested-objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
}


@pytest.mark.parametrize("body", NOT_ENVELOPES.values(), ids=NOT_ENVELOPES.keys())
def test_body_that_is_not_a_push_envelope_is_a_permanent_error(body: bytes) -> None:
    with pytest.raises(PermanentError) as caught:
        parse_envelope(body)
    assert caught.value.reason == "bad_envelope"


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        pytest.param(envelope(data=b"", attributes=ATTRIBUTES), "invalid_json", id="empty-data"),
        pytest.param(envelope(data=b"not json"), "invalid_json", id="data-not-json"),
        pytest.param(envelope(data=b'{"id": "ufawqhfynnddngldkgtslldrkq"}'), "invalid_prediction", id="not-prediction"),
        pytest.param(envelope(attributes=...), "missing_attribute", id="missing-attributes"),
        pytest.param(envelope(attributes={}), "missing_attribute", id="empty-attributes"),
        pytest.param(
            envelope(attributes={k: v for k, v in ATTRIBUTES.items() if k != "prediction_id"}),
            "missing_attribute",
            id="missing-prediction-id",
        ),
        pytest.param(
            envelope(attributes={**ATTRIBUTES, "webhook_timestamp": "later"}), "invalid_attribute", id="bad-timestamp"
        ),
        pytest.param(envelope(attributes={**ATTRIBUTES, "source": "fax"}), "invalid_attribute", id="bad-source"),
        pytest.param(
            envelope(attributes={**ATTRIBUTES, "prediction_id": "someotherprediction"}),
            "id_mismatch",
            id="prediction-id-differs-from-body",
        ),
    ],
)
def test_undecodable_message_is_a_permanent_error(document: dict[str, Any], reason: str) -> None:
    assert permanent(raw(document)).reason == reason


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("not base64!", id="not-base64"),
        pytest.param("YWJjZA", id="missing-padding"),
        pytest.param(base64.urlsafe_b64encode(b"\xfb\xff" * 8).decode(), id="url-safe-alphabet"),
        pytest.param(base64.encodebytes(DATA * 3).decode(), id="line-breaks"),
    ],
)
def test_message_data_that_is_not_base64_is_a_permanent_error(data: str) -> None:
    document = envelope()
    document["message"]["data"] = data
    assert permanent(raw(document)).reason == "bad_data"


def test_envelope_model_accepts_python_field_names() -> None:
    parsed = PushEnvelope.model_validate({"message": {"data": "", "message_id": "7"}, "delivery_attempt": 3})
    assert (parsed.message.message_id, parsed.delivery_attempt) == ("7", 3)
