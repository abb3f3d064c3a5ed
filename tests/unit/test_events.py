"""replicate_relay.events: parsing prediction bodies and the attributes on `replicate-events`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from replicate_relay.events import EventAttributes, PayloadError, PredictionStatus, Source, parse_prediction
from replicate_relay.testing import prediction_lifecycle

VALID: dict[str, Any] = {"id": "ufawqhfynnddngldkgtslldrkq", "status": "succeeded", "output": "done"}


def body(**changes: Any) -> bytes:
    """VALID with fields changed (a value of ... removes the field), as JSON bytes."""
    document = {**VALID, **changes}
    return json.dumps({key: value for key, value in document.items() if value is not ...}).encode("utf-8")


def payload_error(raw: bytes) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        parse_prediction(raw)
    return caught.value


# --- parse_prediction: accepted ----------------------------------------------------------------


def test_minimal_prediction_is_parsed() -> None:
    prediction = parse_prediction(body())
    assert (prediction.id, prediction.status, prediction.output) == (VALID["id"], "succeeded", "done")
    assert prediction.model is None


def test_every_body_of_a_replicate_lifecycle_is_parsed_in_order() -> None:
    started = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    events = prediction_lifecycle("abc123", progress_events=2, started=started)
    parsed = [parse_prediction(json.dumps(event).encode()) for event in events]
    assert [p.status for p in parsed] == ["starting", "processing", "processing", "succeeded"]
    assert parsed[0].created_at == started
    assert parsed[-1].metrics == {"predict_time": 2.0}
    assert parsed[-1].is_terminal
    assert not parsed[0].is_terminal


@pytest.mark.parametrize("status", ["paused", "queued", "Succeeded", "something new from replicate"])
def test_unknown_status_is_accepted_and_not_terminal(status: str) -> None:
    prediction = parse_prediction(body(status=status))
    assert prediction.status == status
    assert not prediction.is_terminal


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (PredictionStatus.STARTING, False),
        (PredictionStatus.PROCESSING, False),
        (PredictionStatus.SUCCEEDED, True),
        (PredictionStatus.FAILED, True),
        (PredictionStatus.CANCELED, True),
        (PredictionStatus.ABORTED, True),
    ],
)
def test_documented_statuses_are_terminal_only_once_finished(status: PredictionStatus, terminal: bool) -> None:
    assert parse_prediction(body(status=status.value)).is_terminal is terminal


def test_unknown_fields_are_kept() -> None:
    prediction = parse_prediction(body(deployment="acme/restorer", urls={"get": "u", "future_link": "f"}, x=[1]))
    assert prediction.model_extra == {"deployment": "acme/restorer", "x": [1]}
    assert prediction.urls == {"get": "u", "future_link": "f"}


@pytest.mark.parametrize(
    "prediction_id",
    ["a", "A1", "abc_DEF-123", "9" * 128],
    ids=["one-character", "mixed-case", "underscore-and-dash", "max-length"],
)
def test_well_formed_prediction_id_is_accepted(prediction_id: str) -> None:
    assert parse_prediction(body(id=prediction_id)).id == prediction_id


def test_moderately_nested_output_is_accepted() -> None:
    nested = "[" * 50 + "]" * 50
    raw = f'{{"id": "abc", "status": "succeeded", "output": {nested}}}'.encode()
    assert parse_prediction(raw).output == json.loads(nested)


# --- parse_prediction: rejected ----------------------------------------------------------------

DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(b"\xff\xfe{}", "invalid_utf8", id="not-utf8"),
        pytest.param(b'{"id": "abc", "status": "ok", "logs": "\xc3"}', "invalid_utf8", id="truncated-utf8-sequence"),
        pytest.param(b"", "invalid_json", id="empty"),
        pytest.param(b"   ", "invalid_json", id="whitespace"),
        pytest.param(b"{", "invalid_json", id="unterminated-object"),
        pytest.param(b"{'id': 'abc', 'status': 'ok'}", "invalid_json", id="single-quotes"),
        pytest.param(body() + b"{}", "invalid_json", id="trailing-data"),
        pytest.param(
            b'{"id": "abc", "status": "ok", "n": ' + b"1" * 5000 + b"}", "invalid_json", id="integer-too-long"
        ),
        pytest.param(b"[" * 100_000, "json_too_deep", id="deep-unterminated-arrays"),
        pytest.param(DEEP_ARRAY, "json_too_deep", id="deep-arrays"),
        pytest.param(DEEP_OBJECT, "json_too_deep", id="deep-objects"),
        pytest.param(
            b'{"id": "abc", "status": "ok", "output": ' + DEEP_ARRAY + b"}", "json_too_deep", id="deep-output"
        ),
        pytest.param(b"[]", "not_an_object", id="array"),
        pytest.param(b'[{"id": "abc", "status": "ok"}]', "not_an_object", id="prediction-in-array"),
        pytest.param(b'"abc"', "not_an_object", id="string"),
        pytest.param(b"42", "not_an_object", id="number"),
        pytest.param(b"null", "not_an_object", id="null"),
        pytest.param(body(id=...), "invalid_prediction", id="missing-id"),
        pytest.param(body(status=...), "invalid_prediction", id="missing-status"),
        pytest.param(body(id=""), "invalid_prediction", id="empty-id"),
        pytest.param(body(id="abc/def"), "invalid_prediction", id="id-with-slash"),
        pytest.param(body(id="../etc"), "invalid_prediction", id="id-path-traversal"),
        pytest.param(body(id="a b"), "invalid_prediction", id="id-with-space"),
        pytest.param(body(id="-abc"), "invalid_prediction", id="id-leading-dash"),
        pytest.param(body(id="abcé"), "invalid_prediction", id="id-non-ascii"),
        pytest.param(body(id="a" * 129), "invalid_prediction", id="id-too-long"),
        pytest.param(body(id=123), "invalid_prediction", id="id-number"),
        pytest.param(body(id=None), "invalid_prediction", id="id-null"),
        pytest.param(body(status=""), "invalid_prediction", id="empty-status"),
        pytest.param(body(status="s" * 65), "invalid_prediction", id="status-too-long"),
        pytest.param(body(status="ok\nforged log line"), "invalid_prediction", id="status-with-newline"),
        pytest.param(body(status=5), "invalid_prediction", id="status-number"),
        pytest.param(body(status=None), "invalid_prediction", id="status-null"),
        pytest.param(body(created_at="yesterday"), "invalid_prediction", id="bad-created-at"),
        pytest.param(body(input=["not", "an", "object"]), "invalid_prediction", id="input-not-object"),
    ],
)
def test_unusable_body_raises_payload_error_with_reason(raw: bytes, reason: str) -> None:
    assert payload_error(raw).reason == reason


@pytest.mark.parametrize(("missing", "named"), [("id", "id"), ("status", "status")])
def test_missing_required_field_is_named_in_the_message(missing: str, named: str) -> None:
    assert payload_error(body(**{missing: ...})).message.startswith(f"prediction {named}:")


def test_prediction_id_with_trailing_newline_is_rejected() -> None:
    assert payload_error(body(id="abc\n")).reason == "invalid_prediction"


# --- EventAttributes ---------------------------------------------------------------------------

ATTRIBUTES = EventAttributes(
    prediction_id="abc123", status="processing", webhook_id="msg_1", webhook_timestamp=1_700_000_000
)
MESSAGE = {
    "prediction_id": "abc123",
    "status": "processing",
    "webhook_id": "msg_1",
    "webhook_timestamp": "1700000000",
    "source": "webhook",
}


def test_attributes_become_string_message_attributes() -> None:
    assert ATTRIBUTES.to_message() == MESSAGE


def test_traceparent_is_carried_only_when_set() -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    traced = EventAttributes(**{**ATTRIBUTES.__dict__, "traceparent": traceparent})
    assert traced.to_message() == {**MESSAGE, "traceparent": traceparent}


@pytest.mark.parametrize("source", list(Source))
@pytest.mark.parametrize("traceparent", [None, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"])
def test_attributes_round_trip_through_a_message(source: Source, traceparent: str | None) -> None:
    attributes = EventAttributes(
        prediction_id="abc123",
        status="paused",
        webhook_id="msg_2",
        webhook_timestamp=1_614_265_330,
        source=source,
        traceparent=traceparent,
    )
    assert EventAttributes.from_message(attributes.to_message()) == attributes


def test_message_without_source_is_read_as_a_webhook() -> None:
    message = {key: value for key, value in MESSAGE.items() if key != "source"}
    assert EventAttributes.from_message(message).source is Source.WEBHOOK


@pytest.mark.parametrize("name", ["prediction_id", "status", "webhook_id", "webhook_timestamp"])
def test_message_missing_a_required_attribute_is_rejected(name: str) -> None:
    message = {key: value for key, value in MESSAGE.items() if key != name}
    with pytest.raises(PayloadError) as caught:
        EventAttributes.from_message(message)
    assert caught.value.reason == "missing_attribute"
    assert name in caught.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("webhook_timestamp", "soon"),
        ("webhook_timestamp", ""),
        ("webhook_timestamp", "1.5"),
        ("source", "carrier-pigeon"),
        ("source", ""),
        ("source", "WEBHOOK"),
    ],
)
def test_message_with_an_invalid_attribute_is_rejected(name: str, value: str) -> None:
    with pytest.raises(PayloadError) as caught:
        EventAttributes.from_message({**MESSAGE, name: value})
    assert caught.value.reason == "invalid_attribute"
