"""Authenticating callers: the Google ID token each request carries, checked in code.

Cloud Run's IAM check (run.invoker for var.api_invokers) comes first; this one repeats it in the
service, as the push handlers do for Pub/Sub's token, so the API stays closed if someone grants
run.invoker more widely (or the ingress changes). A token passes when Google signed it, it is
current, its audience is this service (RELAY_API_AUDIENCE, else `https://<Host>`: Cloud Run's
own URL) and its verified e-mail is in RELAY_API_INVOKERS. RELAY_API_AUTH=off (the local stack
only; refused on Cloud Run) lets every request through.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from api.errors import Forbidden, Unauthenticated, Unavailable
from api.settings import ApiAuthSettings
from replicate_relay.oidc import CertsUnavailable, GoogleCerts, IdTokenVerifier, TokenRejected

_MISSING = (
    "no Authorization header: send `Authorization: Bearer <Google ID token>` "
    "(gcloud auth print-identity-token, or the metadata server's identity endpoint)"
)


class ApiAuthenticator:
    def __init__(self, settings: ApiAuthSettings, *, certs: GoogleCerts | None = None) -> None:
        self._settings = settings
        self._verifier = IdTokenVerifier(certs, what="ID token", missing=_MISSING)

    @property
    def enabled(self) -> bool:
        return self._settings.mode != "off"

    def authenticate(self, authorization: str | None, *, host: str | None) -> str | None:
        """The caller's e-mail (None with auth off). Raises Unauthenticated (401), Forbidden (403)
        or Unavailable (503: Google's certificates could not be fetched)."""
        settings = self._settings
        if settings.mode == "off":
            return None
        audience = settings.audience or (f"https://{host}" if host else None)
        try:
            claims: Mapping[str, Any] = self._verifier.verify(
                authorization, audience=audience, allowed=settings.invokers
            )
        except TokenRejected as rejected:
            problem = Forbidden if rejected.status == 403 else Unauthenticated
            raise problem(rejected.message, extra={"reason": rejected.reason}) from None
        except CertsUnavailable as error:
            raise Unavailable(f"cannot verify the ID token now: {error}", headers={"Retry-After": "5"}) from None
        return str(claims["email"])
