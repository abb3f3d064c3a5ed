"""Authenticating the handlers' callers: the OIDC token Pub/Sub signs for each push subscription,
and the one Cloud Scheduler signs for the reconciler."""

from __future__ import annotations

import google.auth.transport.requests

from handlers.errors import TransientError, Unauthenticated
from handlers.settings import PushAuthSettings

# The generic part (Google's certificates, the token's checks) lives in replicate_relay/oidc.py, shared with
# the API; these names stay importable from here.
from replicate_relay.oidc import (
    CERTS_TIMEOUT_SECONDS,
    CLOCK_SKEW_SECONDS,
    GOOGLE_CERTS_URL,
    GOOGLE_ISSUERS,
    CertsUnavailable,
    GoogleCerts,
    IdTokenVerifier,
    TokenRejected,
)

__all__ = [
    "CERTS_TIMEOUT_SECONDS",
    "CLOCK_SKEW_SECONDS",
    "GOOGLE_CERTS_URL",
    "GOOGLE_ISSUERS",
    "CertsUnavailable",
    "GoogleCerts",
    "PushAuthenticator",
    "scheduler_authenticator",
]


class PushAuthenticator:
    """Checks that a push request carries the OIDC token Pub/Sub signs for this service.

    A token passes when Google signed it (a certificate of GOOGLE_CERTS_URL), it is within its
    validity period (±CLOCK_SKEW_SECONDS), its issuer is Google's, its audience is this service
    (RELAY_PUSH_AUDIENCE, else `https://<Host>`: Cloud Run's own URL, which Terraform sets as the
    subscription's audience) and its verified e-mail is the push service account. With
    RELAY_PUSH_AUTH=off (the local emulator sends no token) every request passes.
    """

    def __init__(
        self,
        settings: PushAuthSettings,
        *,
        certs: GoogleCerts | None = None,
        what: str = "push token",
        missing: str = "no Authorization header: push requests carry Pub/Sub's OIDC token",
        unavailable: str = "push_auth_unavailable",
    ) -> None:
        self._settings = settings
        self._certs = certs or GoogleCerts(google.auth.transport.requests.Request())
        self._what = what
        self._unavailable = unavailable
        self._verifier = IdTokenVerifier(self._certs, what=what, missing=missing)

    def authenticate(self, authorization: str | None, *, host: str | None) -> None:
        """Check one request's Authorization and Host headers.

        Raises Unauthenticated (401: no valid Google token; 403: a valid one for another audience
        or sender) or TransientError (503: Google's certificates could not be fetched). No message
        ever contains the token.
        """
        settings = self._settings
        if settings.mode == "off":
            return
        audience = settings.audience or (f"https://{host}" if host else None)
        allowed = [settings.service_account] if settings.service_account else []
        try:
            self._verifier.verify(authorization, audience=audience, allowed=allowed)
        except TokenRejected as rejected:
            raise Unauthenticated(rejected.reason, rejected.message, status=rejected.status) from None
        except CertsUnavailable as error:
            raise TransientError(self._unavailable, f"cannot verify the {self._what}: {error}") from None


def scheduler_authenticator(settings: PushAuthSettings, *, certs: GoogleCerts | None = None) -> PushAuthenticator:
    """The reconciler's check of Cloud Scheduler's token: as a push handler's, with the scheduler's
    account (RELAY_RECONCILE_INVOKER) and the reconciler's own URL (Scheduler's audience)."""
    return PushAuthenticator(
        settings,
        certs=certs,
        what="scheduler token",
        missing="no Authorization header: the reconciler takes calls from Cloud Scheduler's OIDC token only",
        unavailable="reconcile_auth_unavailable",
    )
