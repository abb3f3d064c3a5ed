"""receiver.intake: from headers and a body stream to one publish, with a fake publisher and clock."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from receiver import errors
from receiver.intake import Accepted, Intake, client_key
from receiver.settings import ReceiverSettings
from replicate_relay.config import ConfigError
from replicate_relay.testing import ChunkStream, RecordingPublisher, SignedWebhook, sign_webhook

SECRET = "whsec_" + base64.b64encode(b"receiver-unit-test-secret-32byte").decode("ascii")
OTHER_SECRET = "whsec_" + base64.b64encode(b"a-secret-the-receiver-never-saw!").decode("ascii")
NOW = 1_700_000_000
MAX_BODY = 2048
BURST = 3
ENV = {
    "RELAY_PROJECT": "unit-test-project",
    "RELAY_WEBHOOK_SECRETS": SECRET,
    "RELAY_MAX_BODY_BYTES": str(MAX_BODY),
    "RELAY_FAILURE_BURST": str(BURST),
    "RELAY_FAILURE_PER_SECOND": "1",
}
SETTINGS = ReceiverSettings.from_env(ENV)
CLIENT = "203.0.113.7"
OTHER_CLIENT = "198.51.100.20"

PREDICTION = {"id": "ufawqhfynnddngldkgtslldrkq", "status": "succeeded", "output": ["https://replicate.delivery/x"]}
VALID = sign_webhook(PREDICTION, [SECRET], webhook_id="msg_unit_1", timestamp=NOW)
EXPECTED_ATTRIBUTES = {
    "prediction_id": PREDICTION["id"],
    "status": "succeeded",
    "webhook_id": "msg_unit_1",
    "webhook_timestamp": str(NOW),
    "source": "webhook",
}


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_intake(
    publisher: RecordingPublisher | None = None, clock: Clock | None = None, settings: ReceiverSettings = SETTINGS
) -> Intake:
    return Intake(settings, publisher or RecordingPublisher(), clock=clock or Clock())  # type: ignore[arg-type]


def submit(
    intake: Intake, headers: dict[str, str], body: bytes | ChunkStream = VALID.body, *, client: str = CLIENT
) -> Accepted:
    stream = body if isinstance(body, ChunkStream) else ChunkStream([body])
    return asyncio.run(intake.handle(headers, stream, client=client))


def refused(
    intake: Intake, headers: dict[str, str], body: bytes | ChunkStream = VALID.body, *, client: str = CLIENT
) -> errors.Rejected:
    with pytest.raises(errors.Rejected) as caught:
        submit(intake, headers, body, client=client)
    return caught.value


def signed(prediction: dict[str, Any] | None = None, **kwargs: Any) -> SignedWebhook:
    kwargs.setdefault("webhook_id", "msg_unit_1")
    kwargs.setdefault("timestamp", NOW)
    return sign_webhook(prediction or PREDICTION, kwargs.pop("secrets", [SECRET]), **kwargs)


def bad_signature_headers() -> dict[str, str]:
    return signed(secrets=[OTHER_SECRET]).headers


# --- accepted ----------------------------------------------------------------------------------


def test_valid_webhook_is_published_with_its_exact_raw_body_and_attributes() -> None:
    publisher = RecordingPublisher()
    accepted = submit(make_intake(publisher), VALID.headers)
    assert accepted == Accepted(PREDICTION["id"], "succeeded", "msg_unit_1", "message-1")
    assert publisher.calls == [(VALID.body, EXPECTED_ATTRIBUTES)]


def test_body_is_published_byte_for_byte_not_re_serialised() -> None:
    raw = b'\n { "status" : "succeeded",\n  "id": "ufawqhfynnddngldkgtslldrkq", "logs": "caf\\u00e9" }\r\n'
    webhook = signed(body=raw)
    publisher = RecordingPublisher()
    submit(make_intake(publisher), webhook.headers, ChunkStream([raw[:7], raw[7:30], b"", raw[30:]]))
    assert publisher.calls[0][0] == raw


@pytest.mark.parametrize("status", ["paused", "starting", "aborted"])
def test_any_status_is_passed_on(status: str) -> None:
    webhook = signed({**PREDICTION, "status": status})
    publisher = RecordingPublisher()
    assert submit(make_intake(publisher), webhook.headers, webhook.body).status == status
    assert publisher.calls[0][1]["status"] == status


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/cloudevents+json",
        " application/json ",
    ],
)
def test_json_media_types_are_accepted(content_type: str) -> None:
    assert submit(make_intake(), {**VALID.headers, "content-type": content_type}).webhook_id == "msg_unit_1"


def test_body_of_exactly_the_limit_is_accepted_without_content_length() -> None:
    padding = MAX_BODY - len(signed({**PREDICTION, "logs": ""}).body)
    webhook = signed({**PREDICTION, "logs": "x" * padding})
    assert len(webhook.body) == MAX_BODY
    chunks = ChunkStream(webhook.body[i : i + 500] for i in range(0, MAX_BODY, 500))
    assert submit(make_intake(), webhook.headers, chunks).prediction_id == PREDICTION["id"]


def test_correct_content_length_is_accepted() -> None:
    headers = {**VALID.headers, "content-length": str(len(VALID.body))}
    assert submit(make_intake(), headers).prediction_id == PREDICTION["id"]


# --- rejected ----------------------------------------------------------------------------------


def _without(name: str) -> dict[str, str]:
    return {key: value for key, value in VALID.headers.items() if key != name}


def _signed_body(raw: bytes, reason: str, case_id: str) -> Any:
    """A correctly signed request whose body is not a usable prediction."""
    return pytest.param(signed(body=raw).headers, raw, errors.BadRequest, reason, id=case_id)


def _with(name: str, value: str) -> dict[str, str]:
    return {**VALID.headers, name: value}


# (headers, body, exact errors.Rejected subclass, reason)
REJECTIONS = [
    pytest.param(
        _without("content-type"), VALID.body, errors.UnsupportedMediaType, "unsupported_media_type", id="no-ct"
    ),
    pytest.param(
        _with("content-type", ""), VALID.body, errors.UnsupportedMediaType, "unsupported_media_type", id="empty-ct"
    ),
    pytest.param(
        _with("content-type", "text/plain"),
        VALID.body,
        errors.UnsupportedMediaType,
        "unsupported_media_type",
        id="text-plain",
    ),
    pytest.param(
        _with("content-type", "application/jsonp"),
        VALID.body,
        errors.UnsupportedMediaType,
        "unsupported_media_type",
        id="jsonp",
    ),
    pytest.param(
        _with("content-type", "json"), VALID.body, errors.UnsupportedMediaType, "unsupported_media_type", id="bare-json"
    ),
    pytest.param(
        _with("content-type", "application/x-www-form-urlencoded"),
        VALID.body,
        errors.UnsupportedMediaType,
        "unsupported_media_type",
        id="form",
    ),
    pytest.param(_without("webhook-id"), VALID.body, errors.BadRequest, "missing_webhook_id", id="no-webhook-id"),
    pytest.param(_without("webhook-timestamp"), VALID.body, errors.BadRequest, "missing_webhook_timestamp", id="no-ts"),
    pytest.param(
        _without("webhook-signature"), VALID.body, errors.BadRequest, "missing_webhook_signature", id="no-sig"
    ),
    pytest.param(_with("webhook-timestamp", "soon"), VALID.body, errors.BadRequest, "malformed_timestamp", id="bad-ts"),
    pytest.param(_with("webhook-id", "msg_\u00e9"), VALID.body, errors.BadRequest, "malformed_id", id="non-ascii-id"),
    pytest.param(
        _with("webhook-signature", "garbage"), VALID.body, errors.BadRequest, "malformed_signature", id="no-comma"
    ),
    pytest.param(
        _with("content-length", "12abc"), VALID.body, errors.BadRequest, "malformed_content_length", id="cl-junk"
    ),
    pytest.param(
        _with("content-length", "-1"), VALID.body, errors.BadRequest, "malformed_content_length", id="cl-negative"
    ),
    pytest.param(bad_signature_headers(), VALID.body, errors.Unauthorized, "signature_mismatch", id="other-secret"),
    pytest.param(VALID.headers, VALID.body + b" ", errors.Unauthorized, "signature_mismatch", id="tampered-body"),
    pytest.param(_with("webhook-signature", "v1,"), VALID.body, errors.Unauthorized, "no_v1_signature", id="bare-v1"),
    pytest.param(
        signed(timestamp=NOW - 301).headers, VALID.body, errors.Unauthorized, "timestamp_too_old", id="expired"
    ),
    pytest.param(
        signed(timestamp=NOW + 301).headers, VALID.body, errors.Unauthorized, "timestamp_too_new", id="future"
    ),
    pytest.param(
        _with("content-length", str(MAX_BODY + 1)),
        VALID.body,
        errors.PayloadTooLarge,
        "body_too_large",
        id="cl-over-limit",
    ),
    _signed_body(b"not json", "invalid_json", "signed-not-json"),
    _signed_body(b"", "invalid_json", "signed-empty"),
    _signed_body(b"\xff\xfe", "invalid_utf8", "signed-not-utf8"),
    _signed_body(b"[]", "not_an_object", "signed-array"),
    _signed_body(b"[" * 2000, "json_too_deep", "signed-deep-json"),
    _signed_body(b'{"id": "abc"}', "invalid_prediction", "signed-missing-status"),
    _signed_body(b'{"status": "succeeded"}', "invalid_prediction", "signed-missing-id"),
    _signed_body(b'{"id": "a/b", "status": "succeeded"}', "invalid_prediction", "signed-bad-id"),
]
STATUS = {
    errors.BadRequest: 400,
    errors.Unauthorized: 401,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
}


@pytest.mark.parametrize(("headers", "body", "kind", "reason"), REJECTIONS)
def test_unacceptable_request_is_rejected_with_its_status_and_never_published(
    headers: dict[str, str], body: bytes, kind: type[errors.Rejected], reason: str
) -> None:
    publisher = RecordingPublisher()
    error = refused(make_intake(publisher), headers, body)
    assert type(error) is kind
    assert (error.status, error.reason) == (STATUS[kind], reason)
    assert publisher.calls == []


def test_declared_oversize_body_is_refused_before_reading_it() -> None:
    stream = ChunkStream([VALID.body])
    error = refused(make_intake(), _with("content-length", str(MAX_BODY + 1)), stream)
    assert (type(error), error.status) == (errors.PayloadTooLarge, 413)
    assert stream.pulled == 0


def test_oversize_chunked_body_is_refused_without_reading_past_the_limit() -> None:
    publisher = RecordingPublisher()
    stream = ChunkStream([b"x" * 500] * 10)  # no content-length; the limit is crossed by chunk 5
    error = refused(make_intake(publisher), VALID.headers, stream)
    assert (type(error), error.status, error.reason) == (errors.PayloadTooLarge, 413, "body_too_large")
    assert stream.pulled == 5
    assert publisher.calls == []


def test_body_one_byte_over_the_limit_is_refused() -> None:
    stream = ChunkStream([b"x" * MAX_BODY, b"x"])
    assert type(refused(make_intake(), VALID.headers, stream)) is errors.PayloadTooLarge


def test_understated_content_length_does_not_lift_the_limit() -> None:
    stream = ChunkStream([b"x" * 1000] * 5)
    error = refused(make_intake(), _with("content-length", "10"), stream)
    assert type(error) is errors.PayloadTooLarge
    assert stream.pulled == 3


def test_publish_failure_is_answered_503_so_replicate_retries() -> None:
    publisher = RecordingPublisher(fail=True)
    error = refused(make_intake(publisher), VALID.headers)
    assert (type(error), error.status, error.reason) == (errors.PublishUnavailable, 503, "publish_failed")
    assert publisher.calls == [(VALID.body, EXPECTED_ATTRIBUTES)]


# --- the failure limiter -----------------------------------------------------------------------


def test_client_that_keeps_failing_is_refused_even_a_valid_webhook() -> None:
    publisher = RecordingPublisher()
    intake = make_intake(publisher)
    for _ in range(BURST):
        assert type(refused(intake, bad_signature_headers())) is errors.Unauthorized
    stream = ChunkStream([VALID.body])
    error = refused(intake, VALID.headers, stream)
    assert (type(error), error.status, error.reason) == (errors.TooManyFailures, 429, "too_many_failures")
    assert stream.pulled == 0
    assert publisher.calls == []


def test_other_clients_are_served_while_one_is_refused() -> None:
    publisher = RecordingPublisher()
    intake = make_intake(publisher)
    for _ in range(BURST):
        refused(intake, bad_signature_headers())
    assert type(refused(intake, VALID.headers)) is errors.TooManyFailures
    assert submit(intake, VALID.headers, client=OTHER_CLIENT).message_id == "message-1"
    assert len(publisher.calls) == 1


def test_every_kind_of_client_failure_spends_the_budget() -> None:
    intake = make_intake()
    refused(intake, _without("content-type"))  # 415
    refused(intake, _with("content-length", str(MAX_BODY + 1)))  # 413
    refused(intake, _without("webhook-id"))  # 400
    assert type(refused(intake, VALID.headers)) is errors.TooManyFailures


def test_refused_client_is_served_again_once_its_budget_refills() -> None:
    clock = Clock()
    intake = make_intake(clock=clock)
    for _ in range(BURST):
        refused(intake, bad_signature_headers())
    assert type(refused(intake, VALID.headers)) is errors.TooManyFailures
    clock.now += 1  # RELAY_FAILURE_PER_SECOND=1: one more attempt; still within the signature tolerance
    assert submit(intake, VALID.headers).prediction_id == PREDICTION["id"]


def test_accepted_webhooks_spend_no_budget() -> None:
    intake = make_intake()
    for _ in range(BURST * 3):
        submit(intake, VALID.headers)
    assert len(intake.limiter) == 0


def test_publish_failures_do_not_count_against_the_client() -> None:
    publisher = RecordingPublisher(fail=True)
    intake = make_intake(publisher)
    for _ in range(BURST * 2):
        assert type(refused(intake, VALID.headers)) is errors.PublishUnavailable
    assert len(intake.limiter) == 0
    publisher.fail = False
    assert submit(intake, VALID.headers).webhook_id == "msg_unit_1"


# --- client_key --------------------------------------------------------------------------------

PEER = "10.1.2.3"


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "trusted_hops", "expected"),
    [
        pytest.param(PEER, None, 0, PEER, id="no-proxy"),
        pytest.param(PEER, "198.51.100.9", 0, PEER, id="forwarded-for-ignored-without-trusted-hops"),
        pytest.param(PEER, "198.51.100.9", 1, "198.51.100.9", id="one-hop"),
        pytest.param(PEER, "6.6.6.6, 198.51.100.9", 1, "198.51.100.9", id="spoofed-leftmost-ignored"),
        pytest.param(PEER, "6.6.6.6,7.7.7.7, 198.51.100.9", 1, "198.51.100.9", id="several-spoofed-ignored"),
        pytest.param(PEER, "6.6.6.6, 198.51.100.9, 10.0.0.2", 2, "198.51.100.9", id="two-hops"),
        pytest.param(PEER, "  6.6.6.6 ,198.51.100.9  ", 1, "198.51.100.9", id="whitespace-trimmed"),
        pytest.param(PEER, "", 1, PEER, id="empty-header"),
        pytest.param(PEER, " , ", 1, PEER, id="only-separators"),
        pytest.param(PEER, "198.51.100.9", 2, PEER, id="fewer-entries-than-hops"),
        pytest.param(None, None, 0, "unknown", id="no-peer"),
        pytest.param(None, "198.51.100.9", 1, "198.51.100.9", id="no-peer-but-proxied"),
    ],
)
def test_client_key_trusts_only_the_configured_proxy_hops(
    peer: str | None, forwarded_for: str | None, trusted_hops: int, expected: str
) -> None:
    assert client_key(peer, forwarded_for, trusted_hops) == expected


# --- bodies larger than a message: stored, published as a pointer ------------------------------

STORED_MAX = 3 * MAX_BODY
LARGE_SETTINGS = ReceiverSettings.from_env({**ENV, "RELAY_MAX_STORED_BODY_BYTES": str(STORED_MAX)})


class FakeBodies:
    """BodyStore.message without a bucket: records what it stored."""

    def __init__(self) -> None:
        self.stored: list[bytes] = []

    def message(self, body: bytes, attributes: dict[str, str], prediction_id: str) -> tuple[bytes, dict[str, str]]:
        self.stored.append(body)
        uri = f"gs://bucket/bodies/{prediction_id}/{len(self.stored)}.json"
        return b"", {**attributes, "body_uri": uri, "body_size": str(len(body)), "body_crc32c": "AAAAAA=="}


def large_intake(publisher: RecordingPublisher, bodies: FakeBodies) -> Intake:
    return Intake(LARGE_SETTINGS, publisher, bodies=bodies, clock=Clock())  # type: ignore[arg-type]


def large(size: int, **kwargs: Any) -> SignedWebhook:
    padding = size - len(signed({**PREDICTION, "logs": ""}).body)
    return signed({**PREDICTION, "logs": "x" * padding}, **kwargs)


def in_chunks(body: bytes, size: int = 1000) -> ChunkStream:
    return ChunkStream(body[i : i + size] for i in range(0, len(body), size))


def test_a_body_past_the_message_limit_is_stored_and_published_as_a_pointer() -> None:
    publisher, bodies = RecordingPublisher(), FakeBodies()
    webhook = large(STORED_MAX)
    accepted = submit(large_intake(publisher, bodies), webhook.headers, in_chunks(webhook.body))
    assert accepted.prediction_id == PREDICTION["id"]
    assert bodies.stored == [webhook.body]
    [(data, attributes)] = publisher.calls
    assert data == b""
    assert attributes == {**EXPECTED_ATTRIBUTES, **attributes}
    assert attributes["body_size"] == str(STORED_MAX)


def test_a_body_within_the_message_limit_still_travels_in_the_message() -> None:
    publisher, bodies = RecordingPublisher(), FakeBodies()
    submit(large_intake(publisher, bodies), VALID.headers)
    assert (bodies.stored, publisher.calls) == ([], [(VALID.body, EXPECTED_ATTRIBUTES)])


def test_a_body_past_the_stored_limit_is_413_and_nothing_is_stored() -> None:
    publisher, bodies = RecordingPublisher(), FakeBodies()
    webhook = large(STORED_MAX + 1)
    error = refused(large_intake(publisher, bodies), webhook.headers, in_chunks(webhook.body))
    assert (error.status, error.reason) == (413, "body_too_large")
    assert (bodies.stored, publisher.calls) == ([], [])


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ({"content-type": "application/json"}, 400, "missing_webhook_id"),
        ({**signed(timestamp=NOW - 3600).headers}, 401, "timestamp_too_old"),
    ],
)
def test_a_large_body_whose_headers_cannot_be_a_webhooks_is_refused_before_any_of_it_is_read(
    headers: dict[str, str], status: int, reason: str
) -> None:
    webhook = large(STORED_MAX)
    stream = in_chunks(webhook.body)
    error = refused(large_intake(RecordingPublisher(), FakeBodies()), headers, stream)
    assert (error.status, error.reason) == (status, reason)
    assert stream.pulled == 0


def test_a_declared_large_body_with_bad_headers_is_refused_before_any_of_it_is_read() -> None:
    webhook = large(STORED_MAX)
    stream = in_chunks(webhook.body)
    headers = {"content-type": "application/json", "content-length": str(len(webhook.body))}
    assert refused(large_intake(RecordingPublisher(), FakeBodies()), headers, stream).status == 400
    assert stream.pulled == 0


def test_a_large_body_with_a_wrong_signature_is_401_and_not_stored() -> None:
    bodies = FakeBodies()
    webhook = large(STORED_MAX, secrets=[OTHER_SECRET])
    error = refused(large_intake(RecordingPublisher(), bodies), webhook.headers, in_chunks(webhook.body))
    assert (error.status, error.reason) == (401, "signature_mismatch")
    assert bodies.stored == []


def test_without_a_body_store_a_body_past_the_message_limit_is_413() -> None:
    webhook = large(STORED_MAX)
    assert refused(make_intake(settings=LARGE_SETTINGS), webhook.headers, in_chunks(webhook.body)).status == 413


def test_a_large_body_waits_for_the_one_being_read_and_gets_503_if_it_takes_too_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("receiver.intake.LARGE_BODY_WAIT_SECONDS", 0.01)
    intake = large_intake(RecordingPublisher(), FakeBodies())
    webhook = large(STORED_MAX)

    async def more_while_the_first_is_held() -> list[errors.Rejected]:
        await intake._large.acquire()  # a first large body, still being read
        refusals = []
        for _ in range(BURST + 1):
            with pytest.raises(errors.Rejected) as caught:
                await intake.handle(webhook.headers, in_chunks(webhook.body), client=CLIENT)
            refusals.append(caught.value)
        return refusals

    refusals = asyncio.run(more_while_the_first_is_held())
    # Every one waited and got 503, none 429: waiting is not the sender's failure.
    assert {(error.status, error.reason) for error in refusals} == {(503, "large_body_busy")}


def test_a_stored_body_limit_not_above_the_message_limit_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="RELAY_MAX_STORED_BODY_BYTES"):
        ReceiverSettings.from_env({**ENV, "RELAY_MAX_STORED_BODY_BYTES": str(MAX_BODY)})
