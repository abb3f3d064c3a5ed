"""How a push handler's failure is answered: retry it (non-2xx) or record it and move on (2xx)."""

from __future__ import annotations


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
