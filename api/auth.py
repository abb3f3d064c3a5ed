"""Authenticating callers: the Google ID token each request carries, checked in code.

Cloud Run's IAM check (run.invoker for var.api_invokers) comes first; this one repeats it in the
service, as the push handlers do for Pub/Sub's token, so the API stays closed if someone grants
run.invoker more widely (or the ingress changes). A token passes when Google signed it, it is
current, its audience is this service (RELAY_API_AUDIENCE, else `https://<Host>`: Cloud Run's
own URL) and its verified e-mail is in RELAY_API_INVOKERS or RELAY_API_OPERATORS.

That e-mail is the caller (`Caller`): the app recorded on the jobs it submits, which it alone reads
(operators read every job). RELAY_API_AUTH=off (the local stack only; refused on Cloud Run) lets
every request through: as the anonymous local caller, who reads and cancels every job, or as the
app named by the X-Relay-Dev-Caller header, which is read only then, so tests can be two apps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from api.errors import Forbidden, Unauthenticated, Unavailable
from api.settings import ApiAuthSettings
from replicate_relay.jobs import Job
from replicate_relay.oidc import CertsUnavailable, GoogleCerts, IdTokenVerifier, TokenRejected

_MISSING = (
    "no Authorization header: send `Authorization: Bearer <Google ID token>` "
    "(gcloud auth print-identity-token, or the metadata server's identity endpoint)"
)

# With RELAY_API_AUTH=off only: the app a request speaks for, as an ID token's e-mail would name it.
DEV_CALLER_HEADER = "X-Relay-Dev-Caller"
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


@dataclass(frozen=True)
class Caller:
    """Who sent a request: `app`, the e-mail recorded on the jobs it submits (None: the anonymous
    caller of a local stack with auth off); `operator`, whether it reads every app's jobs."""

    app: str | None
    operator: bool = False

    @property
    def reads_all(self) -> bool:
        return self.operator or self.app is None

    def may_read(self, job: Job) -> bool:
        """Whether the job is the caller's to see: another app's job is answered as if it did not exist."""
        return self.reads_all or job.app == self.app

    def may_cancel(self, job: Job) -> bool:
        """Only the app that submitted a job cancels it through the API; an operator reads it."""
        return self.app is None or job.app == self.app


ANONYMOUS = Caller(app=None)


class ApiAuthenticator:
    def __init__(self, settings: ApiAuthSettings, *, certs: GoogleCerts | None = None) -> None:
        self._settings = settings
        self._verifier = IdTokenVerifier(certs, what="ID token", missing=_MISSING)

    @property
    def enabled(self) -> bool:
        return self._settings.mode != "off"

    def authenticate(self, authorization: str | None, *, host: str | None, dev_caller: str | None = None) -> Caller:
        """The caller. Raises Unauthenticated (401), Forbidden (403) or Unavailable (503: Google's
        certificates could not be fetched). `dev_caller`, the X-Relay-Dev-Caller header, counts
        with auth off only; with auth on the token alone says who calls."""
        settings = self._settings
        if settings.mode == "off":
            return self._dev_caller(dev_caller)
        audience = settings.audience or (f"https://{host}" if host else None)
        try:
            claims: Mapping[str, Any] = self._verifier.verify(
                authorization, audience=audience, allowed=(*settings.invokers, *settings.operators)
            )
        except TokenRejected as rejected:
            problem = Forbidden if rejected.status == 403 else Unauthenticated
            raise problem(rejected.message, extra={"reason": rejected.reason}) from None
        except CertsUnavailable as error:
            raise Unavailable(f"cannot verify the ID token now: {error}", headers={"Retry-After": "5"}) from None
        email = str(claims["email"])
        return Caller(app=email, operator=email in settings.operators)

    def _dev_caller(self, header: str | None) -> Caller:
        if header is None:
            return ANONYMOUS
        if not _EMAIL.match(header):
            # 401, as a token naming no e-mail would be: every route documents it.
            raise Unauthenticated(
                f"{DEV_CALLER_HEADER} names the calling app by an e-mail, as an ID token would",
                extra={"reason": "malformed_dev_caller"},
            )
        return Caller(app=header, operator=header in self._settings.operators)
