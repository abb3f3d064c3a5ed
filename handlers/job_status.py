"""The job-status subscriber: keeps `jobs/{id}` in step with every event, forward only."""

from __future__ import annotations

from google.api_core import exceptions as google_exceptions

from handlers.errors import TransientError
from relay.events import PredictionEvent
from relay.jobstore import Applied, JobStore


def apply(store: JobStore, event: PredictionEvent) -> Applied:
    """Apply one event; Firestore being unavailable or contended is a TransientError (retry)."""
    try:
        return store.apply(event)
    except (google_exceptions.GoogleAPIError, ConnectionError, TimeoutError) as error:
        raise TransientError("firestore_unavailable", f"{type(error).__name__}: {error}") from error
