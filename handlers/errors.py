"""How a push handler's failure is answered: retry it (non-2xx) or record it and move on (2xx).

The classes are the `HandlerError` branch of the one exception tree (replicate_relay/errors.py,
where it is drawn), each carrying its status; TRANSIENT_ERRORS is the tree's one tuple of what the
Google clients and the network raise when a service is unavailable, which the API answers 503 for
too. The handlers turn the core's errors into these where they call the core, keeping their
`reason` (a PayloadError is a PermanentError, a DownloadFailed a TransientError `download_failed`,
a TokenRejected an Unauthenticated of its status), and handlers/main.py answers them in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from replicate_relay.errors import TRANSIENT_ERRORS, HandlerError, PermanentError, TransientError, Unauthenticated

__all__ = ["TRANSIENT_ERRORS", "HandlerError", "PermanentError", "TransientError", "Unauthenticated"]


@contextmanager
def unavailable(service: str) -> Iterator[None]:
    """Where what TRANSIENT_ERRORS lists means `service` is unavailable: a TransientError
    `{service}_unavailable`, so Pub/Sub redelivers the message after its backoff."""
    try:
        yield
    except TRANSIENT_ERRORS as error:
        raise TransientError(f"{service}_unavailable", f"{type(error).__name__}: {error}"[:500]) from error
