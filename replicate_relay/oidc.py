"""Google ID tokens checked in code: Google's signing certificates (cached) and the token's claims.

Shared by every service that takes calls authenticated with a Google-signed OIDC token: the push
handlers (Pub/Sub's token, handlers/auth.py) and the API (its callers' tokens, api/auth.py). Each
maps TokenRejected and CertsUnavailable onto its own error hierarchy.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import google.auth.exceptions
import google.auth.transport
import google.auth.transport.requests
from google.auth import jwt

# Defined in the one exception tree, replicate_relay/errors.py; still importable from here.
from replicate_relay.errors import CertsUnavailable as CertsUnavailable  # noqa: PLC0414 - re-export
from replicate_relay.errors import TokenRejected as TokenRejected  # noqa: PLC0414 - re-export

# Where Google publishes the certificates (key id → PEM) its ID tokens are signed with: the URL
# google.oauth2.id_token.verify_oauth2_token uses.
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
CLOCK_SKEW_SECONDS = 60
CERTS_TIMEOUT_SECONDS = 5.0  # connect and read; a push request waits for it
# Without a Cache-Control max-age, keep the certificates this long (Google's is several hours).
_DEFAULT_MAX_AGE_SECONDS = 300.0
# A token naming a key id the cached certificates lack refetches them (Google rotated its keys),
# but at most this often, so tokens with made-up key ids cannot make every request fetch.
_UNKNOWN_KEY_REFETCH_SECONDS = 30.0
# After a failed fetch, requests in this window are answered 503 at once instead of each waiting
# out its own timeout behind the lock.
_FAILED_FETCH_BACKOFF_SECONDS = 5.0
_MAX_TOKEN_CHARS = 16 * 1024
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


class GoogleCerts:
    """Google's signing certificates, fetched with a timeout and kept for their Cache-Control
    max-age, so a message costs no fetch. Thread-safe: one fetch at a time per process.

    Written here rather than with CacheControl (google-auth's suggestion): it is not installed,
    and one cached document needs only its max-age, not an HTTP cache.
    """

    def __init__(
        self,
        request: google.auth.transport.Request,
        *,
        url: str = GOOGLE_CERTS_URL,
        timeout_seconds: float = CERTS_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._request = request
        self._url = url
        self._timeout = timeout_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._certs: Mapping[str, str] = {}
        self._fresh_until = -math.inf
        self._fetched_at = -math.inf
        self._failed_at = -math.inf

    def get(self, key_id: str | None) -> Mapping[str, str]:
        """The certificates by key id; fetched again when stale or when `key_id` is new to them.

        Raises CertsUnavailable when a needed fetch fails.
        """
        with self._lock:
            now = self._clock()
            stale = now >= self._fresh_until
            unknown_key = (
                key_id is not None
                and key_id not in self._certs
                and now - self._fetched_at >= _UNKNOWN_KEY_REFETCH_SECONDS
            )
            if stale or unknown_key:
                if now - self._failed_at < _FAILED_FETCH_BACKOFF_SECONDS:
                    raise CertsUnavailable(f"fetching {self._url} failed {now - self._failed_at:.1f} s ago")
                try:
                    self._certs, max_age = self._fetch()
                except CertsUnavailable:
                    self._failed_at = now
                    raise
                self._fetched_at = now
                self._fresh_until = now + max_age
            return self._certs

    def _fetch(self) -> tuple[Mapping[str, str], float]:
        try:
            response: Any = self._request(url=self._url, method="GET", timeout=self._timeout)
        except google.auth.exceptions.TransportError as error:
            raise CertsUnavailable(f"cannot fetch {self._url}: {error}") from error
        if response.status != 200:
            raise CertsUnavailable(f"{self._url} answered HTTP {response.status}")
        try:
            certs = json.loads(response.data)
        except ValueError:
            raise CertsUnavailable(f"{self._url} did not answer JSON") from None
        if (
            not isinstance(certs, dict)
            or not certs
            or not all(isinstance(key, str) and isinstance(cert, str) for key, cert in certs.items())
        ):
            raise CertsUnavailable(f"{self._url} did not answer an object of key ids to certificates")
        return certs, _max_age(response.headers)


def _max_age(headers: Mapping[str, str]) -> float:
    """Seconds the response stays fresh: Cache-Control max-age less the Age a cache added."""
    found = _MAX_AGE.search(_header(headers, "cache-control") or "")
    if not found:
        return _DEFAULT_MAX_AGE_SECONDS
    age = _header(headers, "age") or "0"
    return max(0.0, float(found.group(1)) - (float(age) if age.isdigit() else 0.0))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


class IdTokenVerifier:
    """Checks a `Bearer` Google ID token: Google signed it (a certificate of GOOGLE_CERTS_URL), it
    is within its validity period (±CLOCK_SKEW_SECONDS), its issuer is Google's, its audience is
    the one expected and its verified e-mail is one of the allowed callers.

    `what` names the token in messages ("push token", "ID token"); `missing` is the sentence a
    request without an Authorization header is answered with.
    """

    def __init__(self, certs: GoogleCerts | None = None, *, what: str = "token", missing: str | None = None) -> None:
        self._certs = certs or GoogleCerts(google.auth.transport.requests.Request())
        self._what = what
        self._missing = missing or "no Authorization header: send `Authorization: Bearer <Google ID token>`"

    def verify(self, authorization: str | None, *, audience: str | None, allowed: Collection[str]) -> Mapping[str, Any]:
        """The token's claims once every check passed.

        `audience` None (the expected audience is unknown) refuses every token as wrong_audience;
        `allowed` holds e-mails, compared case-insensitively. Raises TokenRejected, or
        CertsUnavailable when Google's certificates could not be fetched (retrying later can help).
        """
        token = self._bearer_token(authorization)
        try:
            header = jwt.decode_header(token)  # type: ignore[no-untyped-call]  # untyped upstream
        except (ValueError, TypeError):
            raise TokenRejected("malformed_token", "the bearer token is not a JWT") from None
        if not isinstance(header, Mapping):
            raise TokenRejected("malformed_token", "the bearer token's header is not a JSON object")
        key_id = header.get("kid")
        certs = self._certs.get(key_id if isinstance(key_id, str) else None)
        try:
            claims: Any = jwt.decode(token, certs=certs, audience=None, clock_skew_in_seconds=CLOCK_SKEW_SECONDS)  # type: ignore[no-untyped-call]  # untyped upstream
        except (ValueError, TypeError, google.auth.exceptions.GoogleAuthError) as error:
            # google-auth's messages name the key id or the times, but one of them quotes the whole
            # token: never let it through.
            detail = str(error).replace(token, "<token>")[:200]
            raise TokenRejected("invalid_token", f"the {self._what} is not valid: {detail}") from None
        return self._check_claims(claims, audience, allowed)

    def _bearer_token(self, authorization: str | None) -> str:
        if not authorization or not authorization.strip():
            raise TokenRejected("missing_token", self._missing)
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token or len(token) > _MAX_TOKEN_CHARS:
            raise TokenRejected("malformed_token", "the Authorization header is not `Bearer <token>`")
        return token

    def _check_claims(self, claims: Any, audience: str | None, allowed: Collection[str]) -> Mapping[str, Any]:
        what = self._what
        if not isinstance(claims, Mapping):
            raise TokenRejected("invalid_token", f"the {what}'s claims are not a JSON object")
        issuer = claims.get("iss")
        if issuer not in GOOGLE_ISSUERS:
            raise TokenRejected("wrong_issuer", f"the {what} was issued by {_shown(issuer)}, not Google")
        found = claims.get("aud")
        if audience is None or found != audience:
            raise TokenRejected(
                "wrong_audience", f"the {what} is for audience {_shown(found)}, expected {_shown(audience)}", status=403
            )
        email = claims.get("email")
        # Google's ID tokens carry a JSON boolean; its tokeninfo endpoint has used the string "true".
        verified = claims.get("email_verified") in (True, "true")
        allowed_folded = {entry.casefold() for entry in allowed}
        if not isinstance(email, str) or email.casefold() not in allowed_folded or not verified:
            expected = ", ".join(sorted(allowed)) or "nobody (no caller is configured)"
            raise TokenRejected(
                "wrong_sender",
                f"the {what}'s e-mail {_shown(email)} (verified: {verified}) is not {expected}",
                status=403,
            )
        return claims


def _shown(value: object) -> str:
    """A claim in a message: quoted, and short however long the sender made it."""
    return repr(value)[:120]
