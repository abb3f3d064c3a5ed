"""Hostile input at the receiver: every malformed request ends as a precise 4xx, never a publish, never a 500.

Two levels. `Intake.handle` (verify → validate → publish) with a publisher that records calls, the one boundary
faked here, for the whole catalogue of hostile input; then receiver/main.py's ASGI app, driven in process, for
a handful of representative cases: status code, JSON error body, and one JSON log line per request.

Cases already in test_intake.py (missing headers, bare `v1,`, other secret, a few content types and bodies,
the chunked-limit arithmetic) and in test_webhooks.py (the verifier alone) are not repeated here.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from functions_framework.aio import create_asgi_app
from starlette.exceptions import StarletteDeprecationWarning

import replicate_relay.logs
import replicate_relay.telemetry_setup
from receiver.errors import BadRequest, PayloadTooLarge, Rejected, Unauthorized, UnsupportedMediaType
from receiver.intake import Accepted, Intake
from receiver.settings import ReceiverSettings
from replicate_relay.events import PayloadError, parse_prediction
from replicate_relay.logs import CloudLoggingFormatter
from replicate_relay.serve import PerProcess
from replicate_relay.testing import ChunkStream, RecordingPublisher, SignedWebhook, sign_webhook
from replicate_relay.webhooks import MAX_ID_LENGTH
from replicate_relay.webhooks import MAX_SIGNATURE_ENTRIES as MAX_ENTRIES

with warnings.catch_warnings():
    # starlette asks for the httpx2 fork; the pinned httpx works the same for an in-process client.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

SECRET = "whsec_" + base64.b64encode(b"hostile-input-suite-secret-32by!").decode("ascii")
OTHER_SECRET = "whsec_" + base64.b64encode(b"a-secret-the-receiver-never-had!").decode("ascii")
NOW = 1_700_000_000
MAX_BODY = 1024 * 1024  # room for 100k-deep JSON (200-600 kB), so depth and size are tested apart
ENV = {
    "RELAY_PROJECT": "unit-test-project",
    "RELAY_WEBHOOK_SECRETS": SECRET,
    "RELAY_MAX_BODY_BYTES": str(MAX_BODY),
    "RELAY_FAILURE_BURST": "1000",
}
SETTINGS = ReceiverSettings.from_env(ENV)
CLIENT = "203.0.113.9"
WEBHOOK_ID = "msg_hostile_1"
PREDICTION: dict[str, Any] = {"id": "ufawqhfynnddngldkgtslldrkq", "status": "processing", "logs": "step 1"}
KIND: dict[int, type[Rejected]] = {400: BadRequest, 401: Unauthorized, 413: PayloadTooLarge, 415: UnsupportedMediaType}


def make_intake(publisher: RecordingPublisher) -> Intake:
    return Intake(SETTINGS, publisher, clock=lambda: NOW)


def signed(
    prediction: dict[str, Any] | None = None,
    *,
    body: bytes | None = None,
    webhook_id: str = WEBHOOK_ID,
    timestamp: int = NOW,
    secret: str = SECRET,
) -> SignedWebhook:
    """A request Replicate could have sent: correctly signed over exactly `body` (or the compact JSON)."""
    return sign_webhook(prediction or PREDICTION, [secret], webhook_id=webhook_id, timestamp=timestamp, body=body)


VALID = signed()
SIGNATURE = VALID.headers["webhook-signature"]  # one "v1,<base64>" entry
DIGEST = SIGNATURE.removeprefix("v1,")


def with_header(name: str, value: str) -> dict[str, str]:
    return {**VALID.headers, name: value}


def without(*names: str) -> dict[str, str]:
    return {key: value for key, value in VALID.headers.items() if key not in names}


def handle(headers: Mapping[str, str], body: bytes | ChunkStream, publisher: RecordingPublisher) -> Accepted:
    stream = body if isinstance(body, ChunkStream) else ChunkStream([body])
    return asyncio.run(make_intake(publisher).handle(headers, stream, client=CLIENT))


def assert_refused(headers: Mapping[str, str], body: bytes | ChunkStream, status: int, reason: str) -> Rejected:
    """The request ends as exactly this 4xx and reason, nothing is published, and the message is safe to log."""
    publisher = RecordingPublisher()
    with pytest.raises(Rejected) as caught:  # any other exception fails the test: it would be a 500
        handle(headers, body, publisher)
    error = caught.value
    assert (type(error), error.status, error.reason) == (KIND[status], status, reason)
    assert publisher.calls == []
    assert error.message.isprintable()
    assert len(error.message) <= 300
    return error


def assert_accepted(headers: Mapping[str, str], body: bytes) -> tuple[Accepted, dict[str, str]]:
    publisher = RecordingPublisher()
    accepted = handle(headers, body, publisher)
    [(data, attributes)] = publisher.calls
    assert data == body
    return accepted, attributes


def case(case_id: str, headers: Mapping[str, str], body: bytes, status: int, reason: str) -> Any:
    return pytest.param(dict(headers), body, status, reason, id=case_id)


def signed_body(case_id: str, raw: bytes, reason: str) -> Any:
    """A correctly signed request whose body is not a usable prediction: 400 with the parser's reason."""
    return case(case_id, signed(body=raw).headers, raw, 400, reason)


def document(**fields: Any) -> bytes:
    return json.dumps({**PREDICTION, **fields}, separators=(",", ":")).encode("utf-8")


# --- headers and signatures --------------------------------------------------------------------


def _url_safe(signature_digest: str) -> str:
    return signature_digest.replace("+", "-").replace("/", "_")


def _digest_with_url_unsafe_characters() -> str:
    """A correct v1 digest that contains '+' or '/', so its URL-safe spelling differs (deterministic search)."""
    for suffix in range(1000):
        digest = signed(webhook_id=f"{WEBHOOK_ID}_{suffix}").headers["webhook-signature"].removeprefix("v1,")
        if _url_safe(digest) != digest:
            return f"{WEBHOOK_ID}_{suffix}"
    raise AssertionError("no digest with '+' or '/' in 1000 tries")  # pragma: no cover


URL_UNSAFE_ID = _digest_with_url_unsafe_characters()
URL_UNSAFE = signed(webhook_id=URL_UNSAFE_ID).headers


def header(case_id: str, name: str, value: str, status: int, reason: str) -> Any:
    """VALID with one header replaced: the body is the signed one, so only that header is wrong."""
    return case(case_id, with_header(name, value), VALID.body, status, reason)


def refused_alike(name: str, status: int, reason: str, values: dict[str, str]) -> list[Any]:
    """`header` for each of `values` (test id → value of header `name`), all refused with the same answer."""
    return [header(case_id, name, value, status, reason) for case_id, value in values.items()]


FULLWIDTH = {ord("0") + digit: 0xFF10 + digit for digit in range(10)}
URL_SAFE_SIGNATURE = "v1," + _url_safe(URL_UNSAFE["webhook-signature"].removeprefix("v1,"))
ID, TS, SIG, CL, CT = "webhook-id", "webhook-timestamp", "webhook-signature", "content-length", "content-type"
HEADER_CASES = [
    # missing or empty (test_intake.py covers each header absent on its own)
    case("no-webhook-headers-at-all", without(ID, TS, SIG), VALID.body, 400, "missing_webhook_id"),
    header("id-empty", ID, "", 400, "missing_webhook_id"),
    header("id-blank", ID, " \t ", 400, "missing_webhook_id"),
    header("timestamp-empty", TS, "", 400, "missing_webhook_timestamp"),
    header("timestamp-blank", TS, "  ", 400, "missing_webhook_timestamp"),
    header("signature-empty", SIG, "", 400, "missing_webhook_signature"),
    header("signature-blank", SIG, "\t", 400, "missing_webhook_signature"),
    # signature entries: "v1,<base64>", space-separated, any one matching entry is enough
    header("sig-v1-without-comma", SIG, "v1", 400, "malformed_signature"),
    header("sig-comma-only", SIG, ",", 401, "no_v1_signature"),
    header("sig-several-bare-v1", SIG, "v1, v1, v1,", 401, "no_v1_signature"),
    header("sig-truncated-by-one-char", SIG, SIGNATURE[:-1], 401, "no_v1_signature"),
    header("sig-truncated-to-30-bytes", SIG, SIGNATURE[: 3 + 40], 401, "signature_mismatch"),
    header("sig-prefix-3-bytes", SIG, SIGNATURE[:7], 401, "signature_mismatch"),
    header("sig-prefix-1-char", SIG, SIGNATURE[:4], 401, "no_v1_signature"),
    header("sig-bad-base64-characters", SIG, "v1,!!!!", 401, "no_v1_signature"),
    case("sig-url-safe-alphabet", {**URL_UNSAFE, SIG: URL_SAFE_SIGNATURE}, VALID.body, 401, "no_v1_signature"),
    header("sig-excess-padding", SIG, SIGNATURE + "==", 401, "no_v1_signature"),
    header("sig-nul-inside-base64", SIG, f"{SIGNATURE[:20]}\x00{SIGNATURE[20:]}", 401, "no_v1_signature"),
    header("sig-space-inside-base64", SIG, f"{SIGNATURE[:20]} {SIGNATURE[20:]}", 400, "malformed_signature"),
    header("sig-right-digest-as-v2", SIG, f"v2,{DIGEST}", 401, "no_v1_signature"),
    header("sig-right-digest-as-V1", SIG, f"V1,{DIGEST}", 401, "no_v1_signature"),
    header("sig-right-digest-as-v1a", SIG, f"v1a,{DIGEST}", 401, "no_v1_signature"),
    header("sig-right-digest-as-v0", SIG, f"v0,{DIGEST}", 401, "no_v1_signature"),
    header("sig-a-thousand-bare-entries", SIG, " ".join(["v1,"] * 1000), 400, "malformed_signature"),
    header("sig-a-thousand-valid-entries", SIG, " ".join([SIGNATURE] * 1000), 400, "malformed_signature"),
    header("sig-valid-entry-one-too-many", SIG, " ".join([SIGNATURE] * (MAX_ENTRIES + 1)), 400, "malformed_signature"),
    header("sig-enormous-header", SIG, "v1," + "A" * 1_000_000, 400, "malformed_signature"),
    # timestamps: plain decimal digits only, at most 12 of them, within ±300 s
    *refused_alike(
        TS,
        400,
        "malformed_timestamp",
        {
            "ts-float": f"{NOW}.0",
            "ts-fraction": f"{NOW}.5",
            "ts-nan": "NaN",
            "ts-infinity": "Infinity",
            "ts-negative": f"-{NOW}",
            "ts-negative-zero": "-0",
            "ts-leading-plus": f"+{NOW}",
            "ts-exponent": "1.7e9",
            "ts-hex": hex(NOW),
            "ts-fullwidth-digits": str(NOW).translate(FULLWIDTH),
            "ts-inner-space": f"{NOW // 10**6} {NOW % 10**6:06d}",
            "ts-trailing-nul": f"{NOW}\x00",
            "ts-header-repeated-and-joined": f"{NOW}, {NOW}",
            "ts-13-digits": "9" * 13,
            "ts-100k-digits": "9" * 100_000,
        },
    ),
    header("ts-zero", TS, "0", 401, "timestamp_too_old"),
    header("ts-12-digits-far-future", TS, "9" * 12, 401, "timestamp_too_new"),
    # webhook ids: printable ASCII, at most 256 characters, checked before anything else
    *refused_alike(
        ID,
        400,
        "malformed_id",
        {
            "id-crlf": "msg\r\n1",
            "id-forged-log-line": 'msg\n{"severity":"CRITICAL","message":"forged"}',
            "id-ansi-escape": "msg\x1b[31mred\x1b[0m",
            "id-nul": "msg\x00_1",
            "id-delete-character": "msg\x7f_1",
            "id-c1-control-inside": "msg\x85_1",
            "id-zero-width-space": "msg\u200b_1",
            "id-right-to-left-override": "msg\u202e_1",
            "id-fullwidth-letters": "ｍｓｇ_1",
            "id-one-over-the-limit": "m" * (MAX_ID_LENGTH + 1),
            "id-a-megabyte": "m" * 1_000_000,
        },
    ),
    # ids with dots and slashes are printable ASCII, so legal; the signature must cover exactly that id
    header("id-with-dots-signed-for-another-id", ID, f"{WEBHOOK_ID}.{NOW}", 401, "signature_mismatch"),
    header("id-with-slashes-signed-for-another-id", ID, f"{WEBHOOK_ID}/../x", 401, "signature_mismatch"),
    case(
        "id-dot-moved-into-the-timestamp",  # "msg.1" + "." + NOW  ==  "msg" + "." + "1.NOW"
        {**signed(webhook_id=f"{WEBHOOK_ID}.1").headers, ID: WEBHOOK_ID, TS: f"1.{NOW}"},
        VALID.body,
        400,
        "malformed_timestamp",
    ),
    # content-length (test_intake.py covers "12abc", "-1" and one byte over the limit)
    header("cl-30-digits", CL, "9" * 30, 413, "body_too_large"),
    *refused_alike(
        CL,
        400,
        "malformed_content_length",
        {
            "cl-leading-plus": "+10",
            "cl-hex": "0x10",
            "cl-exponent": "1e3",
            "cl-padded": " 10",
            "cl-empty": "",
            "cl-repeated-and-joined": "10, 10",
            "cl-fullwidth-digits": "10".translate(FULLWIDTH),
        },
    ),
    # content-type (test_intake.py covers absent, empty, text/plain, jsonp, form)
    *refused_alike(
        CT,
        415,
        "unsupported_media_type",
        {
            "ct-crlf-injected-header": "application/json\r\nx-evil: 1",
            "ct-trailing-nul": "application/json\x00",
            "ct-json-with-suffix": "application/jsonx",
            "ct-list-of-types": "text/plain, application/json",
            "ct-enormous": "application/" + "x" * 100_000,
        },
    ),
]


@pytest.mark.parametrize(("headers", "body", "status", "reason"), HEADER_CASES)
def test_malformed_header_or_signature_is_refused_with_its_reason_and_never_published(
    headers: dict[str, str], body: bytes, status: int, reason: str
) -> None:
    assert_refused(headers, body, status, reason)


def test_refusal_message_never_echoes_the_hostile_header() -> None:
    error = assert_refused(
        with_header("content-type", "application/" + "x" * 100_000), VALID.body, 415, "unsupported_media_type"
    )
    assert len(error.message) < 120  # the media type is shown cut to 64 characters
    error = assert_refused(
        with_header("content-type", "text/plain\x1b[2J\r\n"), VALID.body, 415, "unsupported_media_type"
    )
    assert "\x1b" not in error.message
    assert "\r" not in error.message


@pytest.mark.parametrize(
    "timestamp",
    [
        pytest.param(f" {NOW} ", id="spaces"),
        pytest.param(f"\t{NOW}\t", id="tabs"),
    ],
)
def test_timestamp_padded_with_http_whitespace_is_trimmed_and_the_signature_covers_the_trimmed_value(
    timestamp: str,
) -> None:
    # Leading and trailing whitespace is not part of an HTTP field value (RFC 9110 §5.5); what is signed is the number.
    accepted, attributes = assert_accepted(with_header("webhook-timestamp", timestamp), VALID.body)
    assert attributes["webhook_timestamp"] == str(NOW)
    assert accepted.webhook_id == WEBHOOK_ID


@pytest.mark.parametrize(
    "webhook_id",
    [
        pytest.param("msg.with.dots", id="dots"),
        pytest.param(f"msg_1.{NOW}", id="dot-and-digits-like-a-timestamp"),
        pytest.param("msg/with/../slashes", id="slashes"),
        pytest.param("m" * MAX_ID_LENGTH, id="exactly-the-maximum-length"),
    ],
)
def test_correctly_signed_printable_ascii_id_is_accepted_and_passed_on_verbatim(webhook_id: str) -> None:
    # webhook-ids are any printable ASCII (replicate_relay/jobstore.py hashes them before using them as a document id).
    webhook = signed(webhook_id=webhook_id)
    accepted, attributes = assert_accepted(webhook.headers, webhook.body)
    assert accepted.webhook_id == attributes["webhook_id"] == webhook_id


# --- bodies --------------------------------------------------------------------------------------

DEEP_ARRAYS = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECTS = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
DIGITS_5000 = b"7" * 5000

BODY_CASES = [
    # not UTF-8 (test_intake.py covers b"\xff\xfe")
    signed_body("latin-1-encoded", b'{"id":"abc","status":"caf\xe9"}', "invalid_utf8"),
    signed_body("overlong-slash", b'{"id":"a\xc0\xafb","status":"ok"}', "invalid_utf8"),
    signed_body("utf8-encoded-surrogate", b'{"id":"abc","status":"\xed\xa0\x80"}', "invalid_utf8"),
    signed_body("truncated-multibyte-sequence", b'{"id":"abc","status":"ok\xe2\x82"}', "invalid_utf8"),
    signed_body("utf16-with-bom", json.dumps(PREDICTION).encode("utf-16"), "invalid_utf8"),
    signed_body("utf8-bom", b"\xef\xbb\xbf" + VALID.body, "invalid_json"),
    signed_body("escaped-lone-surrogate-in-status", b'{"id":"abc","status":"\\ud800"}', "invalid_prediction"),
    # depth and size of numbers
    signed_body("100k-deep-arrays", DEEP_ARRAYS, "json_too_deep"),
    signed_body("100k-deep-objects", DEEP_OBJECTS, "json_too_deep"),
    signed_body("100k-deep-unterminated", b"[" * 100_000, "json_too_deep"),
    signed_body(
        "100k-deep-output-of-a-valid-prediction", document()[:-1] + b',"output":' + DEEP_ARRAYS + b"}", "json_too_deep"
    ),
    signed_body("5000-digit-integer-in-a-free-field", document()[:-1] + b',"n":' + DIGITS_5000 + b"}", "invalid_json"),
    signed_body(
        "5000-digit-negative-integer-in-output", document()[:-1] + b',"output":[-' + DIGITS_5000 + b"]}", "invalid_json"
    ),
    signed_body("5000-digit-integer-as-id", b'{"id":' + DIGITS_5000 + b',"status":"ok"}', "invalid_json"),
    # not a JSON object (test_intake.py covers [] and not-JSON)
    signed_body("null", b"null", "not_an_object"),
    signed_body("true", b"true", "not_an_object"),
    signed_body("number", b"42", "not_an_object"),
    signed_body("string", b'"ufawqhfynnddngldkgtslldrkq"', "not_an_object"),
    signed_body("prediction-inside-an-array", b"[" + VALID.body + b"]", "not_an_object"),
    signed_body("whitespace-only", b" \r\n\t", "invalid_json"),
    signed_body("two-objects", VALID.body + VALID.body, "invalid_json"),
    # wrongly typed id or status
    *(
        signed_body(f"id-as-{name}", document(id=value), "invalid_prediction")
        for name, value in [
            ("integer", 123),
            ("float", 1.5),
            ("bool", True),
            ("null", None),
            ("empty-list", []),
            ("list", ["ufawqhfynnddngldkgtslldrkq"]),
            ("object", {"id": "abc"}),
        ]
    ),
    *(
        signed_body(f"status-as-{name}", document(status=value), "invalid_prediction")
        for name, value in [
            ("list", ["succeeded"]),
            ("object", {"status": "succeeded"}),
            ("integer", 5),
            ("zero", 0),
            ("bool", False),
            ("null", None),
        ]
    ),
    # ids and statuses that are strings but unusable
    *(
        signed_body(f"id-{name}", document(id=value), "invalid_prediction")
        for name, value in [
            ("empty", ""),
            ("with-dot", "abc.def"),
            ("path-traversal", "../jobs"),
            ("trailing-newline", "abc\n"),
            ("nul", "abc\x00"),
            ("fullwidth", "ａｂｃ"),
            ("129-characters", "a" * 129),
            ("ansi-escape", "abc\x1b[31m"),
        ]
    ),
    *(
        signed_body(f"status-{name}", document(status=value), "invalid_prediction")
        for name, value in [
            ("empty", ""),
            ("65-characters", "s" * 65),
            ("crlf-forged-log-line", "ok\r\nforged"),
            ("ansi-escape", "\x1b[31msucceeded"),
            ("nul", "succeeded\x00"),
            ("line-separator", "succeeded\u2028"),
        ]
    ),
]


@pytest.mark.parametrize(("headers", "body", "status", "reason"), BODY_CASES)
def test_correctly_signed_unusable_body_is_refused_with_its_reason_and_never_published(
    headers: dict[str, str], body: bytes, status: int, reason: str
) -> None:
    assert_refused(headers, body, status, reason)


# Each is the same JSON document as the signed one, spelled with different bytes.
SIGNED_COMPACT = signed(
    {**PREDICTION, "logs": "café ✓"},
    body=json.dumps({**PREDICTION, "logs": "café ✓"}, separators=(",", ":"), ensure_ascii=False).encode("utf-8"),
)
_DOCUMENT = json.loads(SIGNED_COMPACT.body)
RESERIALISED = [
    pytest.param(json.dumps(_DOCUMENT, ensure_ascii=False).encode("utf-8"), id="default-separators"),
    pytest.param(json.dumps(_DOCUMENT, indent=2, ensure_ascii=False).encode("utf-8"), id="pretty-printed"),
    pytest.param(
        json.dumps(dict(reversed(_DOCUMENT.items())), separators=(",", ":"), ensure_ascii=False).encode(),
        id="keys-reordered",
    ),
    pytest.param(json.dumps(_DOCUMENT, separators=(",", ":")).encode("ascii"), id="non-ascii-escaped"),
    pytest.param(SIGNED_COMPACT.body + b"\n", id="trailing-newline"),
    pytest.param(b" " + SIGNED_COMPACT.body, id="leading-space"),
    pytest.param(SIGNED_COMPACT.body.replace(b'"logs"', b'"\\u006cogs"'), id="key-spelled-with-an-escape"),
]


@pytest.mark.parametrize("resent", RESERIALISED)
def test_body_re_serialised_after_signing_is_refused(resent: bytes) -> None:
    assert json.loads(resent) == _DOCUMENT
    assert resent != SIGNED_COMPACT.body
    assert_refused(SIGNED_COMPACT.headers, resent, 401, "signature_mismatch")


# Declared too large: refused before one chunk is read; undeclared: refused at the chunk that crosses the limit.
OVERSIZED = signed({**PREDICTION, "logs": "x" * MAX_BODY})


@pytest.mark.parametrize(
    ("headers", "chunks", "pulled"),
    [
        pytest.param(
            {**OVERSIZED.headers, "content-length": str(len(OVERSIZED.body))},
            [OVERSIZED.body],
            0,
            id="validly-signed-with-its-true-content-length",
        ),
        pytest.param({**VALID.headers, "content-length": str(10**18)}, [VALID.body], 0, id="declared-exabyte"),
        pytest.param(OVERSIZED.headers, [OVERSIZED.body], 1, id="validly-signed-undeclared-one-chunk"),
        pytest.param(
            OVERSIZED.headers,
            [OVERSIZED.body[i : i + 65536] for i in range(0, len(OVERSIZED.body), 65536)],
            MAX_BODY // 65536 + 1,
            id="validly-signed-undeclared-64k-chunks",
        ),
        pytest.param(VALID.headers, [b"x" * (10 * MAX_BODY), b"never read"], 1, id="undeclared-ten-times-the-limit"),
        pytest.param(
            {**VALID.headers, "content-length": "0"},
            [b"", b"x" * MAX_BODY, b"x"],
            3,
            id="declared-empty-streams-over-the-limit",
        ),
    ],
)
def test_oversized_body_is_refused_413_without_reading_past_the_limit(
    headers: dict[str, str], chunks: list[bytes], pulled: int
) -> None:
    stream = ChunkStream(chunks)
    assert_refused(headers, stream, 413, "body_too_large")
    assert stream.pulled == pulled


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b'{"id":"ufawqhfynnddngldkgtslldrkq","status":"starting","status":"succeeded"}', id="status-twice"
        ),
        pytest.param(
            b'{"id":"ufawqhfynnddngldkgtslldrkq","id":"someoneelsesprediction","status":"succeeded"}', id="id-twice"
        ),
        pytest.param(b'{"id":"abc","status":"ok","logs":"a","logs":"a"}', id="same-value-twice"),
        pytest.param(b'{"id":"abc","status":"ok","input":{"seed":1,"seed":2}}', id="nested-object"),
        pytest.param(b'{"id":"abc","status":"ok","output":[{"url":"a","url":"b"}]}', id="object-in-a-list"),
        pytest.param(b'{"id":"abc","status":"ok","st\\u0061tus":"x"}', id="same-key-spelled-with-an-escape"),
        pytest.param(
            b'{"id":"abc","status":"ok","\\u001b[2J\\r\\n":1,"\\u001b[2J\\r\\n":2}', id="repeated-key-with-escapes"
        ),
    ],
)
def test_json_with_a_repeated_key_is_refused(raw: bytes) -> None:
    # json.loads would keep the last of a repeated key, and another consumer's parser may keep the first.
    assert_refused(signed(body=raw).headers, raw, 400, "duplicate_key")


def test_same_key_in_different_objects_is_not_a_repeat() -> None:
    webhook = signed({**PREDICTION, "input": {"id": "x", "status": "y"}, "output": [{"id": 1}, {"id": 2}]})
    assert_accepted(webhook.headers, webhook.body)


# Statuses Relay does not know, by test id: passed on as Replicate sent them.
UNKNOWN_STATUSES = {
    "queued": "queued",
    "other-case": "Succeeded",
    "with-spaces": "awaiting review",
    "non-ascii-printable": "état-intermédiaire",
    "64-characters": "s" * 64,
}


@pytest.mark.parametrize("status", UNKNOWN_STATUSES.values(), ids=UNKNOWN_STATUSES.keys())
def test_unknown_status_is_accepted_and_passed_on(status: str) -> None:
    webhook = signed({**PREDICTION, "status": status})
    accepted, attributes = assert_accepted(webhook.headers, webhook.body)
    assert accepted.status == attributes["status"] == status


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("input", ["not", "an", "object"], id="input-list"),
        pytest.param("created_at", ["2025-01-01T00:00:00Z"], id="created-at-list"),
        pytest.param("logs", {"text": "x"}, id="logs-object"),
        pytest.param("metrics", "fast", id="metrics-string"),
    ],
)
def test_wrongly_typed_optional_field_is_passed_on_by_the_receiver_and_refused_by_the_handlers(
    field: str, value: Any
) -> None:
    # docs/PERFORMANCE.md: the receiver checks only id and status; the handlers parse the whole prediction and
    # log and acknowledge what they cannot decode (docs/ARCHITECTURE.md, "Permanent vs transient").
    webhook = signed({**PREDICTION, field: value})
    assert_accepted(webhook.headers, webhook.body)
    with pytest.raises(PayloadError) as caught:
        parse_prediction(webhook.body)
    assert caught.value.reason == "invalid_prediction"


# --- refused before the body is read -----------------------------------------------------------

BIG = b"{" + b" " * (MAX_BODY - 2) + b"}"  # as large as the limit allows: reading it would cost the most
BIG_PIECES = [BIG[start : start + 65536] for start in range(0, len(BIG), 65536)]
BIG_LENGTH = {"content-length": str(len(BIG))}


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        pytest.param({"content-type": "application/json", **BIG_LENGTH}, 400, "missing_webhook_id", id="unsigned"),
        pytest.param({**without("webhook-signature"), **BIG_LENGTH}, 400, "missing_webhook_signature", id="no-sig"),
        pytest.param({**without("webhook-timestamp"), **BIG_LENGTH}, 400, "missing_webhook_timestamp", id="no-ts"),
        pytest.param({**with_header("webhook-id", "x" * (MAX_ID_LENGTH + 1)), **BIG_LENGTH}, 400, "malformed_id"),
        pytest.param({**with_header("webhook-timestamp", "1e9"), **BIG_LENGTH}, 400, "malformed_timestamp"),
        pytest.param({**with_header("webhook-signature", "v2,abc"), **BIG_LENGTH}, 401, "no_v1_signature"),
        pytest.param({**signed(timestamp=NOW - 301).headers, **BIG_LENGTH}, 401, "timestamp_too_old"),
        pytest.param({**signed(timestamp=NOW + 301).headers, **BIG_LENGTH}, 401, "timestamp_too_new"),
        pytest.param({**with_header("content-type", "text/plain"), **BIG_LENGTH}, 415, "unsupported_media_type"),
        pytest.param({**VALID.headers, "content-length": str(MAX_BODY + 1)}, 413, "body_too_large", id="declared"),
        pytest.param({**VALID.headers, "content-length": "4 MiB"}, 400, "malformed_content_length"),
    ],
)
def test_request_whose_headers_cannot_be_a_webhooks_is_refused_before_any_of_its_body_is_read(
    headers: dict[str, str], status: int, reason: str
) -> None:
    stream = ChunkStream(BIG_PIECES)
    assert_refused(headers, stream, status, reason)
    assert stream.pulled == 0


def test_well_formed_headers_with_a_forged_signature_are_refused_once_the_body_is_read() -> None:
    stream = ChunkStream(BIG_PIECES)
    assert_refused({**VALID.headers, **BIG_LENGTH}, stream, 401, "signature_mismatch")
    assert stream.pulled == len(BIG_PIECES)


# --- the in-flight limiter ---------------------------------------------------------------------


class HeldStream:
    """A body stream that sends nothing until `sent` is set: a request kept in flight."""

    def __init__(self, sent: asyncio.Event, body: bytes) -> None:
        self._sent, self._body, self.pulled = sent, body, 0

    def __aiter__(self) -> HeldStream:
        return self

    async def __anext__(self) -> bytes:
        await self._sent.wait()
        if self.pulled:
            raise StopAsyncIteration
        self.pulled += 1
        return self._body


async def _burst(intake: Intake, headers: Mapping[str, str], count: int, *, client: str = CLIENT) -> list[Any]:
    """`count` requests from one address whose bodies are held until all have arrived; each one's
    answer (Accepted or the Rejected), and how many were refused on arrival while the others waited."""
    sent = asyncio.Event()
    streams = [HeldStream(sent, VALID.body) for _ in range(count)]
    tasks = [asyncio.ensure_future(intake.handle(headers, stream, client=client)) for stream in streams]
    await asyncio.sleep(0)  # every request arrives and either waits for its body or is refused
    refused_on_arrival = sum(task.done() for task in tasks)
    sent.set()
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(stream.pulled == 0 for stream, answer in zip(streams, answers, strict=True) if _status(answer) == 429)
    return [refused_on_arrival, [_status(answer) for answer in answers]]


def _status(answer: Any) -> int:
    return answer.status if isinstance(answer, Rejected) else 200


def limited_intake(publisher: RecordingPublisher, **env: str) -> Intake:
    return Intake(ReceiverSettings.from_env({**ENV, **env}), publisher, clock=lambda: NOW)


def test_burst_from_one_address_past_its_in_flight_cap_gets_429_while_the_first_are_in_flight() -> None:
    intake = limited_intake(RecordingPublisher(), RELAY_MAX_IN_FLIGHT_PER_CLIENT="8")
    refused_on_arrival, statuses = asyncio.run(_burst(intake, VALID.headers, 12))
    assert refused_on_arrival == 4
    assert statuses == [200] * 8 + [429] * 4
    assert intake.limiter.in_flight(CLIENT) == 0  # each one released when done


def test_burst_of_forgeries_from_an_address_that_has_failed_passes_only_as_far_as_its_budget() -> None:
    publisher = RecordingPublisher()
    intake = limited_intake(publisher, RELAY_FAILURE_BURST="5", RELAY_FAILURE_PER_SECOND="0")
    assert_status_of(intake, signed(secret=OTHER_SECRET).headers, 401)  # one failure: 4 left
    _, statuses = asyncio.run(_burst(intake, signed(secret=OTHER_SECRET).headers, 10))
    assert statuses == [401] * 4 + [429] * 6  # a burst cannot spend more than the budget it has left
    assert publisher.calls == []


def test_replicates_concurrent_webhooks_from_one_address_are_all_accepted_under_the_default_cap() -> None:
    publisher = RecordingPublisher()
    intake = limited_intake(publisher)
    _, statuses = asyncio.run(_burst(intake, VALID.headers, 32))
    assert statuses == [200] * 32
    assert len(publisher.calls) == 32


def assert_status_of(intake: Intake, headers: Mapping[str, str], status: int) -> None:
    with pytest.raises(Rejected) as caught:
        asyncio.run(intake.handle(headers, ChunkStream([VALID.body]), client=CLIENT))
    assert caught.value.status == status


# --- over HTTP: receiver/main.py's ASGI app, in process --------------------------------------------------

RECEIVER_MAIN = Path(__file__).resolve().parents[2] / "receiver" / "main.py"


@dataclass
class Receiver:
    client: TestClient
    publisher: RecordingPublisher
    log: io.StringIO

    def log_lines(self) -> list[str]:
        text = self.log.getvalue()
        assert text.endswith("\n")
        return text.removesuffix("\n").split("\n")


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """receiver/main.py loaded as functions-framework loads it, its environment set before the import.

    Only the publisher is replaced (by monkeypatching `_INTAKE`, whose intake would open a gRPC channel to Pub/Sub);
    the log records go through CloudLoggingFormatter into a buffer instead of stdout.
    """
    for name in list(os.environ):
        if name.startswith(("RELAY_", "OTEL_", "K_", "FUNCTION_", "GOOGLE_CLOUD_PROJECT", "LOG_EXECUTION_ID")):
            monkeypatch.delenv(name)
    for name, value in {**ENV, "RELAY_TRUSTED_PROXY_HOPS": "1"}.items():
        monkeypatch.setenv(name, value)
    # The module configures logging and telemetry for a whole process; neither may leak into other tests.
    monkeypatch.setattr(replicate_relay.logs, "_configured_service", "receiver")
    monkeypatch.setattr(replicate_relay.telemetry_setup, "setup", lambda *args, **kwargs: None)
    monkeypatch.setattr(sys, "path", list(sys.path))  # functions-framework appends receiver/ to it
    monkeypatch.setitem(sys.modules, "main", types.ModuleType("main"))  # and registers the module as "main"
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(CloudLoggingFormatter("receiver", ENV["RELAY_PROJECT"]))
    logger = logging.getLogger("relay.receiver")
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "propagate", False)
    level = logger.level
    logger.setLevel(logging.INFO)

    app = create_asgi_app(target="receive", source=str(RECEIVER_MAIN))  # type: ignore[no-untyped-call]
    module = sys.modules["main"]
    assert module.__file__ == str(RECEIVER_MAIN)
    publisher = RecordingPublisher()
    intake = Intake(module.SETTINGS, publisher, clock=lambda: NOW)
    monkeypatch.setattr(module, "_INTAKE", PerProcess(lambda: intake))
    client = TestClient(app, raise_server_exceptions=False)
    try:
        yield Receiver(client, publisher, log)
    finally:
        client.close()
        logger.setLevel(level)


def only_log_line(receiver: Receiver) -> dict[str, Any]:
    """The request's one log line: a single line of valid JSON, with no raw control character in it."""
    [line] = receiver.log_lines()
    assert not any(ord(char) < 0x20 or ord(char) == 0x7F for char in line), repr(line)
    entry = json.loads(line)
    assert isinstance(entry, dict)
    assert (entry["service"], entry["logger"]) == ("receiver", "relay.receiver")
    return entry


def test_valid_webhook_over_http_is_answered_200_after_its_publish(receiver: Receiver) -> None:
    response = receiver.client.post("/", content=VALID.body, headers=VALID.headers)
    assert response.status_code == 200
    assert response.json() == {"status": "accepted", "message_id": "message-1"}
    assert receiver.publisher.calls == [
        (
            VALID.body,
            {
                "prediction_id": PREDICTION["id"],
                "status": "processing",
                "webhook_id": WEBHOOK_ID,
                "webhook_timestamp": str(NOW),
                "source": "webhook",
            },
        )
    ]
    entry = only_log_line(receiver)
    assert (entry["severity"], entry["outcome"], entry["http_status"]) == ("INFO", "accepted", 200)


def _chunks(body: bytes, size: int) -> Iterator[bytes]:
    return (body[start : start + size] for start in range(0, len(body), size))


DEEP = signed(body=DEEP_ARRAYS)
NOT_UTF8 = signed(body=b'{"id":"abc","status":"caf\xe9"}')
HTTP_CASES: list[Any] = [
    pytest.param("GET", VALID.headers, None, 405, "method_not_allowed", id="get-instead-of-post"),
    pytest.param("POST", without("webhook-signature"), VALID.body, 400, "missing_webhook_signature", id="unsigned"),
    pytest.param(
        "POST", signed(secret=OTHER_SECRET).headers, VALID.body, 401, "signature_mismatch", id="forged-signature"
    ),
    pytest.param(
        "POST", with_header("webhook-timestamp", "NaN"), VALID.body, 400, "malformed_timestamp", id="nan-timestamp"
    ),
    pytest.param(
        "POST", with_header("content-type", "text/plain"), VALID.body, 415, "unsupported_media_type", id="text-plain"
    ),
    pytest.param("POST", OVERSIZED.headers, OVERSIZED.body, 413, "body_too_large", id="oversized-declared"),
    pytest.param(
        "POST", OVERSIZED.headers, lambda: _chunks(OVERSIZED.body, 65536), 413, "body_too_large", id="oversized-chunked"
    ),
    pytest.param("POST", DEEP.headers, DEEP.body, 400, "json_too_deep", id="100k-deep-json"),
    pytest.param("POST", NOT_UTF8.headers, NOT_UTF8.body, 400, "invalid_utf8", id="not-utf8"),
]


@pytest.mark.parametrize(("method", "headers", "content", "status", "reason"), HTTP_CASES)
def test_hostile_request_over_http_gets_its_4xx_a_json_error_and_one_log_line(
    receiver: Receiver,
    method: str,
    headers: dict[str, str],
    content: bytes | Callable[[], Iterator[bytes]] | None,
    status: int,
    reason: str,
) -> None:
    body = content() if callable(content) else content
    response = receiver.client.request(method, "/", content=body, headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert set(error) == {"error", "message"}
    assert error["error"] == reason
    assert receiver.publisher.calls == []
    entry = only_log_line(receiver)
    assert (entry["severity"], entry["outcome"], entry["http_status"], entry["reason"]) == (
        "WARNING",
        "rejected",
        status,
        reason,
    )
    assert entry["message"] == f"webhook rejected: {error['message']}"


def test_log_line_stays_one_json_line_when_ids_and_forwarded_for_carry_crlf_and_ansi_escapes(
    receiver: Receiver,
) -> None:
    forged = b'\r\n{"severity":"CRITICAL","message":"forged line"}\x1b[2J\x1b[31m'
    headers: dict[str, str | bytes] = {
        **VALID.headers,
        "webhook-id": b"msg" + forged + b"\x00\x7f\x9b[0m",
        # RELAY_TRUSTED_PROXY_HOPS=1: the last entry is what the client is logged as.
        "x-forwarded-for": b"198.51.100.1, 203.0.113.5" + forged.replace(b",", b" "),
    }
    response = receiver.client.post("/", content=VALID.body, headers=headers)
    assert (response.status_code, response.json()["error"]) == (400, "malformed_id")
    assert receiver.publisher.calls == []
    entry = only_log_line(receiver)
    assert entry["reason"] == "malformed_id"
    assert entry["webhook_id"].isascii()
    assert entry["webhook_id"].isprintable()
    assert entry["webhook_id"].startswith("msg??{")  # every unprintable character shown as "?"
    assert entry["client"].startswith("203.0.113.5\r\n")  # kept, but JSON-escaped inside the one line
    assert "CRITICAL" not in {json.loads(line).get("severity") for line in receiver.log_lines()}


def test_every_request_gets_exactly_one_log_line(receiver: Receiver) -> None:
    receiver.client.post("/", content=VALID.body, headers=VALID.headers)
    receiver.client.post("/", content=VALID.body, headers=with_header("webhook-id", "msg\r\nx"))
    receiver.client.post("/", content=b"x" * (MAX_BODY + 1), headers=VALID.headers)
    entries = [json.loads(line) for line in receiver.log_lines()]
    assert [(entry["outcome"], entry["http_status"]) for entry in entries] == [
        ("accepted", 200),
        ("rejected", 400),
        ("rejected", 413),
    ]
