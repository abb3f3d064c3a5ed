"""How a push handler's failure is answered: retry it (non-2xx) or record it and move on (2xx)."""

from __future__ import annotations

import google.auth.exceptions
import requests
from google.api_core import exceptions as google_exceptions

# What "Firestore, Cloud Storage or Pub/Sub is unavailable" looks like from their clients.
TRANSIENT_ERRORS = (
    google_exceptions.GoogleAPIError,
    requests.RequestException,
    google.auth.exceptions.TransportError,
    ConnectionError,
    TimeoutError,
)


class HandlerError(Exception):
    """Base of the handlers' errors. `reason` is a stable code for logs and metrics."""

    status = 500

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class TransientError(HandlerError):
    """Firestore, Cloud Storage or the network is unavailable: Pub/Sub redelivers with backoff,
    then dead-letters."""

    status = 503


class PermanentError(HandlerError):
    """Retrying cannot help (an undecodable message, say): logged at ERROR, then acknowledged so it
    is not redelivered forever."""

    status = 200


class Unauthenticated(HandlerError):
    """The push request lacks the OIDC token Pub/Sub signs (401), or its token was made for another
    audience or sender (403). Nothing is processed; a real message refused so (a misconfiguration)
    is redelivered by Pub/Sub, then dead-lettered, never lost."""

    status = 401

    def __init__(self, reason: str, message: str, *, status: int = 401) -> None:
        super().__init__(reason, message)
        self.status = status
