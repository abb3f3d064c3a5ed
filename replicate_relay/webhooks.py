"""Standard Webhooks signatures, as Replicate sends them: verify (receiver) and sign (tests, simulator).

Written here rather than taken from `standardwebhooks` or `replicate.webhooks` because both
raise non-validation exceptions on malformed input, and the first hard-codes its tolerance
(see docs/REPLICATE.md, "Gotchas in the libraries"). Every failure here is a `VerificationError`
with a stable `reason` code, so the receiver can map each one to a 4xx and a precise log line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from replicate_relay.config import ConfigError, Secret

# Defined in the one exception tree, replicate_relay/errors.py; still importable from here.
from replicate_relay.errors import VerificationError as VerificationError  # noqa: PLC0414 - re-export

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_SECONDS = 300

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"

# Bounds on header sizes: a real header is far smaller; anything larger is rejected before
# any work is spent on it.
MAX_ID_LENGTH = 256
MAX_SIGNATURE_HEADER_LENGTH = 4096
MAX_SIGNATURE_ENTRIES = 16


@dataclass(frozen=True)
class SigningKey:
    """One decoded webhook secret."""

    key: bytes

    def __repr__(self) -> str:
        return "SigningKey(**********)"


@dataclass(frozen=True)
class VerifiedWebhook:
    """The identity of a webhook whose signature checked out."""

    webhook_id: str
    timestamp: int


def parse_secret(secret: str | Secret) -> SigningKey:
    """Decode a `whsec_<base64>` secret (the prefix is optional). Raises ConfigError."""
    raw = secret.value if isinstance(secret, Secret) else secret
    raw = raw.strip()
    if raw.startswith(SECRET_PREFIX):
        raw = raw[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        # The secret itself is never put in the message.
        raise ConfigError("a webhook secret is not valid base64 after its whsec_ prefix") from None
    if len(key) < 16:
        raise ConfigError("a webhook secret decodes to fewer than 16 bytes")
    return SigningKey(key)


def parse_secrets(secrets: Iterable[str | Secret]) -> tuple[SigningKey, ...]:
    """Decode every configured secret; several are accepted at once so secrets can rotate."""
    keys = tuple(parse_secret(secret) for secret in secrets)
    if not keys:
        raise ConfigError("at least one webhook secret is required")
    return keys


def sign(key: SigningKey, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one message."""
    digest = hmac.new(key.key, f"{webhook_id}.{timestamp}.".encode("ascii"), hashlib.sha256)
    digest.update(body)
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest.digest()).decode('ascii')}"


def signed_headers(keys: Sequence[SigningKey], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, with one signature per key (as during rotation)."""
    return {
        HEADER_ID: webhook_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: " ".join(sign(key, webhook_id, timestamp, body) for key in keys),
    }


@dataclass(frozen=True)
class SignedHeaders:
    """A webhook's three headers, well formed and in time: what is left to check is the body."""

    webhook_id: str
    timestamp: int
    signatures: tuple[bytes, ...]


def verify(
    headers: Mapping[str, str],
    body: bytes,
    *,
    keys: Sequence[SigningKey],
    now: float,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> VerifiedWebhook:
    """Check a webhook's headers and signature over the raw body, before anything parses it.

    `headers` must be case-insensitive (as every web framework's are) or use lower-case names.
    Accepts the message when any one `v1` entry matches any one key.
    """
    check = SignatureCheck(check_headers(headers, now=now, tolerance_seconds=tolerance_seconds), keys)
    check.update(body)
    return check.verified()


class SignatureCheck:
    """The HMAC of one webhook, fed the body as it arrives: no copy of the body is made to sign it.

    Made once `check_headers` has passed; `update` with each piece of the body in order, then
    `verified()` raises `signature_mismatch` unless any one `v1` entry matches any one key.
    """

    def __init__(self, signed: SignedHeaders, keys: Sequence[SigningKey]) -> None:
        self._signed = signed
        prefix = f"{signed.webhook_id}.{signed.timestamp}.".encode("ascii")
        self._macs = [hmac.new(key.key, prefix, hashlib.sha256) for key in keys]

    def update(self, piece: bytes) -> None:
        for mac in self._macs:
            mac.update(piece)

    def verified(self) -> VerifiedWebhook:
        expected = [mac.digest() for mac in self._macs]
        # Every candidate is compared with every key, in constant time per comparison, and
        # compare_digest never stops at the shorter input (the CVE-2024-21491 mistake).
        matched = False
        for candidate in self._signed.signatures:
            for digest in expected:
                matched |= hmac.compare_digest(candidate, digest)
        if not matched:
            raise VerificationError(
                "signature_mismatch", "no v1 signature matches any configured secret", malformed=False
            )
        return VerifiedWebhook(webhook_id=self._signed.webhook_id, timestamp=self._signed.timestamp)


def check_headers(
    headers: Mapping[str, str], *, now: float, tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS
) -> SignedHeaders:
    """The checks of `verify` that need no body: each header present and well formed, the timestamp
    within tolerance. The receiver makes them before it reads any of the body."""
    webhook_id = _header(headers, HEADER_ID)
    if len(webhook_id) > MAX_ID_LENGTH or not (webhook_id.isascii() and webhook_id.isprintable()):
        raise VerificationError("malformed_id", "webhook-id is too long or not printable ASCII", malformed=True)

    timestamp = _parse_timestamp(_header(headers, HEADER_TIMESTAMP))
    if timestamp < now - tolerance_seconds:
        raise VerificationError(
            "timestamp_too_old",
            f"webhook-timestamp is more than {tolerance_seconds} s in the past",
            malformed=False,
        )
    if timestamp > now + tolerance_seconds:
        raise VerificationError(
            "timestamp_too_new",
            f"webhook-timestamp is more than {tolerance_seconds} s in the future",
            malformed=False,
        )

    signatures = _parse_signatures(_header(headers, HEADER_SIGNATURE))
    return SignedHeaders(webhook_id, timestamp, tuple(signatures))


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None or not value.strip():
        raise VerificationError(f"missing_{name.replace('-', '_')}", f"{name} header is missing", malformed=True)
    return value.strip()


def _parse_timestamp(raw: str) -> int:
    # Only plain decimal digits: int() would also take "+1_614_265_330" or non-ASCII digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise VerificationError(
            "malformed_timestamp", "webhook-timestamp is not a Unix time in whole seconds", malformed=True
        )
    return int(raw)


def _parse_signatures(raw: str) -> list[bytes]:
    if len(raw) > MAX_SIGNATURE_HEADER_LENGTH:
        raise VerificationError("malformed_signature", "webhook-signature header is too long", malformed=True)
    entries = raw.split()
    if len(entries) > MAX_SIGNATURE_ENTRIES:
        raise VerificationError("malformed_signature", "webhook-signature has too many entries", malformed=True)
    signatures: list[bytes] = []
    for entry in entries:
        version, sep, encoded = entry.partition(",")
        if not sep:
            raise VerificationError(
                "malformed_signature", "a webhook-signature entry is not of the form v1,<base64>", malformed=True
            )
        if version != SIGNATURE_VERSION:
            continue  # other versions are ignored, as the spec says
        try:
            decoded = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue  # an undecodable entry is simply not a match; another entry may be
        if decoded:
            signatures.append(decoded)
    if not signatures:
        raise VerificationError("no_v1_signature", "webhook-signature has no usable v1 entry", malformed=False)
    return signatures
