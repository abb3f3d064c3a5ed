"""The job-status subscriber: keeps `jobs/{id}` in step with every event, forward only."""

from __future__ import annotations

from handlers.errors import TRANSIENT_ERRORS, TransientError
from replicate_relay.events import PredictionEvent
from replicate_relay.jobstore import Applied, JobStore


def apply(store: JobStore, event: PredictionEvent) -> Applied:
    """Apply one event; Firestore being unavailable or contended is a TransientError (retry)."""
    try:
        return store.apply(event)
    except TRANSIENT_ERRORS as error:
        raise TransientError("firestore_unavailable", f"{type(error).__name__}: {error}") from error
