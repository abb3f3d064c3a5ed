"""The job-status subscriber: keeps `jobs/{id}` in step with every event, forward only."""

from __future__ import annotations

from handlers.errors import unavailable
from replicate_relay.events import PredictionEvent
from replicate_relay.jobstore import Applied, JobStore


def apply(store: JobStore, event: PredictionEvent) -> Applied:
    """Apply one event; Firestore being unavailable or contended is a TransientError (retry)."""
    with unavailable("firestore"):
        return store.apply(event)
