"""replicate_relay.webhooks: Standard Webhooks signing and verification, one broken field per test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import traceback

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicate_relay.config import ConfigError, Secret
from replicate_relay.webhooks import (
    DEFAULT_TOLERANCE_SECONDS,
    HEADER_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    MAX_ID_LENGTH,
    MAX_SIGNATURE_ENTRIES,
    MAX_SIGNATURE_HEADER_LENGTH,
    SignatureCheck,
    SigningKey,
    VerificationError,
    VerifiedWebhook,
    check_headers,
    parse_secret,
    parse_secrets,
    sign,
    signed_headers,
    verify,
)

# The Standard Webhooks reference test vector (docs/REPLICATE.md).
KNOWN_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KNOWN_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
KNOWN_TIMESTAMP = 1614265330
KNOWN_BODY = b'{"test": 2432232314}'
KNOWN_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

KEY = parse_secret(KNOWN_SECRET)
NEW_SECRET = "whsec_" + base64.b64encode(b"the-rotated-in-secret-32-bytes!!").decode("ascii")
NEW_KEY = parse_secret(NEW_SECRET)

# The one valid signed request every failure case breaks one field of.
VALID_HEADERS = {HEADER_ID: KNOWN_ID, HEADER_TIMESTAMP: str(KNOWN_TIMESTAMP), HEADER_SIGNATURE: KNOWN_SIGNATURE}
KNOWN_DIGEST = base64.b64decode(KNOWN_SIGNATURE.removeprefix("v1,"))
MISSING = object()


def with_header(name: str, value: object) -> dict[str, str]:
    """VALID_HEADERS with one header replaced, or removed when `value` is MISSING."""
    headers = dict(VALID_HEADERS)
    if value is MISSING:
        del headers[name]
    else:
        assert isinstance(value, str)
        headers[name] = value
    return headers


def v1(digest: bytes) -> str:
    return "v1," + base64.b64encode(digest).decode("ascii")


def rejection(
    headers: dict[str, str],
    body: bytes = KNOWN_BODY,
    *,
    keys: tuple[SigningKey, ...] = (KEY,),
    now: float = KNOWN_TIMESTAMP,
    **kwargs: int,
) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        verify(headers, body, keys=keys, now=now, **kwargs)
    return caught.value


# --- the known-answer vector -------------------------------------------------------------


def test_sign_reproduces_the_standard_webhooks_known_answer() -> None:
    assert sign(KEY, KNOWN_ID, KNOWN_TIMESTAMP, KNOWN_BODY) == KNOWN_SIGNATURE


def test_verify_accepts_the_standard_webhooks_known_answer() -> None:
    verified = verify(VALID_HEADERS, KNOWN_BODY, keys=[KEY], now=KNOWN_TIMESTAMP)
    assert verified == VerifiedWebhook(webhook_id=KNOWN_ID, timestamp=KNOWN_TIMESTAMP)


def test_signed_headers_carry_id_timestamp_and_one_signature_per_key() -> None:
    headers = signed_headers([KEY, NEW_KEY], KNOWN_ID, KNOWN_TIMESTAMP, KNOWN_BODY)
    assert headers == {
        HEADER_ID: KNOWN_ID,
        HEADER_TIMESTAMP: str(KNOWN_TIMESTAMP),
        HEADER_SIGNATURE: f"{KNOWN_SIGNATURE} {sign(NEW_KEY, KNOWN_ID, KNOWN_TIMESTAMP, KNOWN_BODY)}",
    }


@settings(derandomize=True, database=None, max_examples=200)
@given(
    webhook_id=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64),
    timestamp=st.integers(min_value=0, max_value=10**11),
    body=st.binary(max_size=512),
)
def test_anything_signed_with_a_configured_key_verifies(webhook_id: str, timestamp: int, body: bytes) -> None:
    headers = signed_headers([KEY], webhook_id, timestamp, body)
    assert verify(headers, body, keys=[KEY], now=timestamp) == VerifiedWebhook(webhook_id, timestamp)


@given(body=st.binary(max_size=512), cuts=st.lists(st.integers(min_value=0, max_value=512), max_size=6))
def test_the_signature_checked_piece_by_piece_as_the_body_arrives_is_the_signature_of_the_whole(
    body: bytes, cuts: list[int]
) -> None:
    headers = signed_headers([KEY, NEW_KEY], KNOWN_ID, KNOWN_TIMESTAMP, body)
    check = SignatureCheck(check_headers(headers, now=KNOWN_TIMESTAMP), [NEW_KEY])
    bounds = [0, *sorted(min(cut, len(body)) for cut in cuts), len(body)]
    for start, end in itertools.pairwise(bounds):
        check.update(body[start:end])
    assert check.verified() == VerifiedWebhook(KNOWN_ID, KNOWN_TIMESTAMP)


def test_a_body_checked_piece_by_piece_with_one_byte_changed_is_a_mismatch() -> None:
    check = SignatureCheck(check_headers(VALID_HEADERS, now=KNOWN_TIMESTAMP), [KEY])
    for piece in (KNOWN_BODY[:5], KNOWN_BODY[5:-1], b"]"):
        check.update(piece)
    with pytest.raises(VerificationError) as caught:
        check.verified()
    assert (caught.value.reason, caught.value.malformed) == ("signature_mismatch", False)


# --- timestamp tolerance ---------------------------------------------------------------------


@pytest.mark.parametrize("tolerance", [None, 60], ids=["default-300", "custom-60"])
@pytest.mark.parametrize("seconds_inside", [1, 0], ids=["one-second-inside", "exactly-at-limit"])
@pytest.mark.parametrize("direction", [1, -1], ids=["timestamp-in-past", "timestamp-in-future"])
def test_timestamp_within_tolerance_is_accepted(tolerance: int | None, seconds_inside: int, direction: int) -> None:
    limit = DEFAULT_TOLERANCE_SECONDS if tolerance is None else tolerance
    now = KNOWN_TIMESTAMP + direction * (limit - seconds_inside)
    kwargs = {} if tolerance is None else {"tolerance_seconds": tolerance}
    assert verify(VALID_HEADERS, KNOWN_BODY, keys=[KEY], now=now, **kwargs).timestamp == KNOWN_TIMESTAMP


@pytest.mark.parametrize("tolerance", [None, 60], ids=["default-300", "custom-60"])
@pytest.mark.parametrize("seconds_outside", [1, 0.5], ids=["one-second-outside", "half-second-outside"])
@pytest.mark.parametrize(
    ("direction", "reason"),
    [(1, "timestamp_too_old"), (-1, "timestamp_too_new")],
    ids=["timestamp-in-past", "timestamp-in-future"],
)
def test_timestamp_beyond_tolerance_is_rejected(
    tolerance: int | None, seconds_outside: float, direction: int, reason: str
) -> None:
    limit = DEFAULT_TOLERANCE_SECONDS if tolerance is None else tolerance
    now = KNOWN_TIMESTAMP + direction * (limit + seconds_outside)
    kwargs = {} if tolerance is None else {"tolerance_seconds": tolerance}
    error = rejection(VALID_HEADERS, now=now, **kwargs)
    assert (error.reason, error.malformed) == (reason, False)


def test_a_larger_custom_tolerance_accepts_what_the_default_rejects() -> None:
    now = KNOWN_TIMESTAMP + DEFAULT_TOLERANCE_SECONDS + 1
    assert rejection(VALID_HEADERS, now=now).reason == "timestamp_too_old"
    assert verify(VALID_HEADERS, KNOWN_BODY, keys=[KEY], now=now, tolerance_seconds=600).webhook_id == KNOWN_ID


def test_timestamp_is_checked_even_when_the_signature_is_valid_for_it() -> None:
    stale = KNOWN_TIMESTAMP - DEFAULT_TOLERANCE_SECONDS - 1
    headers = signed_headers([KEY], KNOWN_ID, stale, KNOWN_BODY)
    assert rejection(headers).reason == "timestamp_too_old"


# --- several signature entries ---------------------------------------------------------------


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(f"{v1(b'x' * 32)} {KNOWN_SIGNATURE}", id="wrong-entry-then-right-one"),
        pytest.param(f"{KNOWN_SIGNATURE} {v1(b'x' * 32)}", id="right-entry-then-wrong-one"),
        pytest.param(f"v2,{KNOWN_SIGNATURE[3:]} {KNOWN_SIGNATURE}", id="other-version-ignored"),
        pytest.param(f"v1a,whatever {KNOWN_SIGNATURE}", id="unknown-version-label-ignored"),
        pytest.param(f"v1, {KNOWN_SIGNATURE}", id="bare-v1-beside-a-valid-entry"),
        pytest.param(f"v1,!!not-base64!! {KNOWN_SIGNATURE}", id="undecodable-entry-beside-a-valid-one"),
        pytest.param(f"  {KNOWN_SIGNATURE}\t v2,abc  ", id="tabs-and-surrounding-spaces"),
        pytest.param(" ".join([*(["v2,abc"] * (MAX_SIGNATURE_ENTRIES - 1)), KNOWN_SIGNATURE]), id="max-entries"),
    ],
)
def test_any_one_valid_v1_entry_is_enough(signature: str) -> None:
    verified = verify(with_header(HEADER_SIGNATURE, signature), KNOWN_BODY, keys=[KEY], now=KNOWN_TIMESTAMP)
    assert verified.webhook_id == KNOWN_ID


def test_signature_header_of_exactly_the_maximum_length_is_accepted() -> None:
    filler = "v2," + "A" * (MAX_SIGNATURE_HEADER_LENGTH - len(KNOWN_SIGNATURE) - 4)
    signature = f"{filler} {KNOWN_SIGNATURE}"
    assert len(signature) == MAX_SIGNATURE_HEADER_LENGTH
    assert verify(with_header(HEADER_SIGNATURE, signature), KNOWN_BODY, keys=[KEY], now=KNOWN_TIMESTAMP)


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        pytest.param("v1,", "no_v1_signature", id="bare-v1-CVE-2024-21491"),
        pytest.param("v1, v1, v1,", "no_v1_signature", id="several-bare-v1"),
        pytest.param(f"v2,{KNOWN_SIGNATURE[3:]}", "no_v1_signature", id="right-digest-under-v2-label"),
        pytest.param(f"V1,{KNOWN_SIGNATURE[3:]}", "no_v1_signature", id="upper-case-version-label"),
        pytest.param("v1,!!not-base64!!", "no_v1_signature", id="undecodable-base64"),
        pytest.param(KNOWN_SIGNATURE[:-1], "no_v1_signature", id="truncated-by-one-character"),
        pytest.param(v1(KNOWN_DIGEST[:1]), "signature_mismatch", id="truncated-to-first-byte"),
        pytest.param(v1(KNOWN_DIGEST[:16]), "signature_mismatch", id="truncated-to-half"),
        pytest.param(v1(KNOWN_DIGEST[:-1]), "signature_mismatch", id="truncated-by-one-byte"),
        pytest.param(v1(KNOWN_DIGEST + b"\x00"), "signature_mismatch", id="one-byte-appended"),
        pytest.param(v1(bytes(32)), "signature_mismatch", id="all-zero-digest"),
        pytest.param(
            v1(hmac.new(KEY.key, KNOWN_BODY, hashlib.sha256).digest()), "signature_mismatch", id="body-only-hmac"
        ),
    ],
)
def test_signature_without_a_matching_v1_entry_is_rejected(signature: str, reason: str) -> None:
    error = rejection(with_header(HEADER_SIGNATURE, signature))
    assert (error.reason, error.malformed) == (reason, False)


# --- secret rotation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signed_with", "configured"),
    [
        pytest.param((KEY,), (KEY, NEW_KEY), id="old-secret-only"),
        pytest.param((NEW_KEY,), (KEY, NEW_KEY), id="new-secret-only"),
        pytest.param((KEY, NEW_KEY), (KEY, NEW_KEY), id="both-secrets"),
        pytest.param((KEY, NEW_KEY), (NEW_KEY,), id="both-signed-old-removed"),
        pytest.param((NEW_KEY,), (NEW_KEY, KEY), id="configured-order-irrelevant"),
    ],
)
def test_signature_from_any_configured_secret_is_accepted(
    signed_with: tuple[SigningKey, ...], configured: tuple[SigningKey, ...]
) -> None:
    headers = signed_headers(signed_with, KNOWN_ID, KNOWN_TIMESTAMP, KNOWN_BODY)
    assert verify(headers, KNOWN_BODY, keys=configured, now=KNOWN_TIMESTAMP).webhook_id == KNOWN_ID


def test_signature_from_a_removed_secret_is_rejected() -> None:
    headers = signed_headers([KEY], KNOWN_ID, KNOWN_TIMESTAMP, KNOWN_BODY)
    error = rejection(headers, keys=(NEW_KEY,))
    assert (error.reason, error.malformed) == ("signature_mismatch", False)


# --- malformed requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value", "reason"),
    [
        pytest.param(HEADER_ID, MISSING, "missing_webhook_id", id="id-missing"),
        pytest.param(HEADER_ID, "", "missing_webhook_id", id="id-empty"),
        pytest.param(HEADER_ID, "   ", "missing_webhook_id", id="id-blank"),
        pytest.param(HEADER_TIMESTAMP, MISSING, "missing_webhook_timestamp", id="timestamp-missing"),
        pytest.param(HEADER_TIMESTAMP, "", "missing_webhook_timestamp", id="timestamp-empty"),
        pytest.param(HEADER_TIMESTAMP, " \t", "missing_webhook_timestamp", id="timestamp-blank"),
        pytest.param(HEADER_SIGNATURE, MISSING, "missing_webhook_signature", id="signature-missing"),
        pytest.param(HEADER_SIGNATURE, "", "missing_webhook_signature", id="signature-empty"),
        pytest.param(HEADER_SIGNATURE, "  ", "missing_webhook_signature", id="signature-blank"),
        pytest.param(HEADER_TIMESTAMP, "yesterday", "malformed_timestamp", id="timestamp-not-digits"),
        pytest.param(HEADER_TIMESTAMP, f"-{KNOWN_TIMESTAMP}", "malformed_timestamp", id="timestamp-negative"),
        pytest.param(HEADER_TIMESTAMP, f"+{KNOWN_TIMESTAMP}", "malformed_timestamp", id="timestamp-plus-sign"),
        pytest.param(HEADER_TIMESTAMP, f"{KNOWN_TIMESTAMP}.0", "malformed_timestamp", id="timestamp-float"),
        pytest.param(HEADER_TIMESTAMP, "1.614265330e9", "malformed_timestamp", id="timestamp-exponent"),
        pytest.param(HEADER_TIMESTAMP, "1_614_265_330", "malformed_timestamp", id="timestamp-underscores"),
        pytest.param(HEADER_TIMESTAMP, "0x60379a32", "malformed_timestamp", id="timestamp-hex"),
        pytest.param(HEADER_TIMESTAMP, "١٦١٤٢٦٥٣٣٠", "malformed_timestamp", id="timestamp-non-ascii-digits"),
        pytest.param(HEADER_TIMESTAMP, "1614265330 1", "malformed_timestamp", id="timestamp-two-numbers"),
        pytest.param(HEADER_TIMESTAMP, "9" * 13, "malformed_timestamp", id="timestamp-huge"),
        pytest.param(HEADER_TIMESTAMP, "1" * 5000, "malformed_timestamp", id="timestamp-enormous"),
        pytest.param(HEADER_ID, "msg_é", "malformed_id", id="id-non-ascii"),
        pytest.param(HEADER_ID, "msg_\x00", "malformed_id", id="id-control-character"),
        pytest.param(HEADER_ID, "msg\nsecond-line", "malformed_id", id="id-newline"),
        pytest.param(HEADER_ID, "m" * (MAX_ID_LENGTH + 1), "malformed_id", id="id-too-long"),
        pytest.param(HEADER_SIGNATURE, KNOWN_SIGNATURE.replace(",", ""), "malformed_signature", id="entry-no-comma"),
        pytest.param(HEADER_SIGNATURE, "v1", "malformed_signature", id="bare-version-no-comma"),
        pytest.param(
            HEADER_SIGNATURE, f"{KNOWN_SIGNATURE} garbage", "malformed_signature", id="valid-entry-then-no-comma"
        ),
        pytest.param(
            HEADER_SIGNATURE,
            " ".join([*(["v2,abc"] * MAX_SIGNATURE_ENTRIES), KNOWN_SIGNATURE]),
            "malformed_signature",
            id="too-many-entries",
        ),
        pytest.param(
            HEADER_SIGNATURE,
            f"{KNOWN_SIGNATURE} v2,{'A' * MAX_SIGNATURE_HEADER_LENGTH}",
            "malformed_signature",
            id="header-too-long",
        ),
    ],
)
def test_malformed_header_is_rejected_as_malformed(header: str, value: object, reason: str) -> None:
    error = rejection(with_header(header, value))
    assert (error.reason, error.malformed) == (reason, True)


def test_webhook_id_of_exactly_the_maximum_length_is_accepted() -> None:
    webhook_id = "m" * MAX_ID_LENGTH
    headers = signed_headers([KEY], webhook_id, KNOWN_TIMESTAMP, KNOWN_BODY)
    assert verify(headers, KNOWN_BODY, keys=[KEY], now=KNOWN_TIMESTAMP).webhook_id == webhook_id


def test_twelve_digit_timestamp_is_well_formed_but_out_of_tolerance() -> None:
    error = rejection(with_header(HEADER_TIMESTAMP, "9" * 12))
    assert (error.reason, error.malformed) == ("timestamp_too_new", False)


def test_header_values_are_trimmed_before_checking() -> None:
    headers = {name: f"  {value} " for name, value in VALID_HEADERS.items()}
    assert verify(headers, KNOWN_BODY, keys=[KEY], now=KNOWN_TIMESTAMP).webhook_id == KNOWN_ID


@settings(derandomize=True, database=None, max_examples=300)
@given(webhook_id=st.text(max_size=300), timestamp=st.text(max_size=20), signature=st.text(max_size=300))
def test_arbitrary_headers_only_ever_raise_verification_error(webhook_id: str, timestamp: str, signature: str) -> None:
    headers = {HEADER_ID: webhook_id, HEADER_TIMESTAMP: timestamp, HEADER_SIGNATURE: signature}
    with pytest.raises(VerificationError):
        verify(headers, KNOWN_BODY, keys=[KEY], now=KNOWN_TIMESTAMP)


# --- tampering -------------------------------------------------------------------------------


@pytest.mark.parametrize("position", range(len(KNOWN_BODY)))
def test_body_with_one_byte_changed_is_rejected(position: int) -> None:
    tampered = bytearray(KNOWN_BODY)
    tampered[position] ^= 0x01
    error = rejection(VALID_HEADERS, bytes(tampered))
    assert (error.reason, error.malformed) == ("signature_mismatch", False)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(KNOWN_BODY + b" ", id="byte-appended"),
        pytest.param(KNOWN_BODY[:-1], id="last-byte-removed"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"test":2432232314}', id="re-serialised-without-space"),
    ],
)
def test_body_with_bytes_added_or_removed_is_rejected(body: bytes) -> None:
    assert rejection(VALID_HEADERS, body).reason == "signature_mismatch"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param(HEADER_ID, KNOWN_ID[:-1] + "K", id="other-webhook-id"),
        pytest.param(HEADER_TIMESTAMP, str(KNOWN_TIMESTAMP + 1), id="other-timestamp-within-tolerance"),
    ],
)
def test_signed_header_changed_is_rejected(header: str, value: str) -> None:
    error = rejection(with_header(header, value))
    assert (error.reason, error.malformed) == ("signature_mismatch", False)


# --- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(KNOWN_SECRET, id="with-prefix"),
        pytest.param(KNOWN_SECRET.removeprefix("whsec_"), id="without-prefix"),
        pytest.param(f"  {KNOWN_SECRET}\n", id="surrounding-whitespace"),
        pytest.param(Secret(KNOWN_SECRET), id="wrapped-in-Secret"),
    ],
)
def test_parse_secret_decodes_the_base64_after_the_optional_prefix(secret: str | Secret) -> None:
    assert parse_secret(secret) == SigningKey(base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("whsec_Zm9vYmFy!!notbase64", id="non-base64-characters"),
        pytest.param("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", id="bad-padding"),
        pytest.param("whsec_MfKQ9r8GKYqrTwjU PD8ILPZIo2LaLaSw", id="inner-space"),
        pytest.param("whsec_" + base64.b64encode(b"fifteen bytes!!").decode(), id="decodes-too-short"),
        pytest.param("whsec_", id="prefix-only"),
        pytest.param("", id="empty"),
    ],
)
def test_invalid_secret_raises_config_error_without_revealing_it(secret: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_secret(secret)
    shown = "".join(traceback.format_exception(caught.value))
    for part in {secret, secret.removeprefix("whsec_")} - {""}:
        assert part not in shown


def test_parse_secrets_requires_at_least_one() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        parse_secrets([])


def test_parse_secrets_keeps_every_secret_in_order() -> None:
    assert parse_secrets([Secret(NEW_SECRET), KNOWN_SECRET]) == (NEW_KEY, KEY)


def test_signing_key_repr_and_str_hide_the_key() -> None:
    shown = [repr(KEY), str(KEY), f"{KEY}", repr([KEY]), repr((KEY, NEW_KEY))]
    for text in shown:
        assert repr(KEY.key) not in text
        assert "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" not in text
        assert "*" in text


def test_config_secret_repr_and_str_hide_the_value() -> None:
    secret = Secret(KNOWN_SECRET)
    shown = [repr(secret), str(secret), f"{secret}", f"{secret!r}", repr({"secret": secret})]
    for text in shown:
        assert "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" not in text
        assert "*" in text
    assert secret.value == KNOWN_SECRET
