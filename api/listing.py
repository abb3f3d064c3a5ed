"""`GET /v1/jobs`: jobs newest first, a page at a time, with an opaque cursor.

A Firestore query rather than a JobStore method (JobStore belongs to the pipeline's writers):
`jobs` ordered by `created_at` then the document id, both descending, where `app == A` (the
caller's jobs; an operator's listing has no such filter) and optionally `state == S`. Each
equality filter needs its composite index, declared in infra/firestore.indexes.json: (app,
created_at desc), (state, created_at desc), (app, state, created_at desc); with neither filter,
Firestore's single-field index serves it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from replicate_relay.jobs import Job, JobState
from replicate_relay.jobstore import JOBS

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_CURSOR_VERSION = 1
# How the OpenAPI document describes a cursor: what `Cursor.encode` makes (base64url, no padding)
# and the name of that kind of string, for generators that can make one (tests/integration/test_api_fuzz.py).
CURSOR_FORMAT = "relay-cursor"
CURSOR_PATTERN = "^[A-Za-z0-9_-]*$"
_RESERVED_ID = re.compile(r"__.*__", re.DOTALL)


class InvalidCursor(ValueError):
    """The cursor was not made by this API for this query."""


@dataclass(frozen=True)
class Cursor:
    """Where the last page ended: its last job's `created_at` and id, and the query's state."""

    created_at: datetime | None
    job_id: str
    state: str | None

    def encode(self) -> str:
        data = {
            "v": _CURSOR_VERSION,
            "c": self.created_at.isoformat() if self.created_at else None,
            "i": self.job_id,
            "s": self.state,
        }
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str, *, state: str | None) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            data = json.loads(raw)
            # Only what encode() makes: anything else reaching the query (an id Firestore refuses,
            # such as "" or "a/b", a naive time) would be a 5xx instead of this 400.
            if not isinstance(data, dict) or type(data.get("v")) is not int or data["v"] != _CURSOR_VERSION:
                raise InvalidCursor("not a cursor of this API")
            created, job_id, state_value = data.get("c"), data["i"], data.get("s")
            created_at = datetime.fromisoformat(created) if created is not None else None
            if created_at is not None and created_at.utcoffset() is None:
                raise InvalidCursor("not a cursor of this API")
            if not _document_id(job_id) or not (state_value is None or isinstance(state_value, str)):
                raise InvalidCursor("not a cursor of this API")
            cursor = cls(created_at=created_at, job_id=job_id, state=state_value)
        except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise InvalidCursor("not a cursor of this API") from None
        if cursor.state != state:
            raise InvalidCursor("this cursor belongs to a listing with another state filter")
        return cursor


def _document_id(value: object) -> bool:
    """Whether `value` can be a Firestore document id: a non-empty string of at most 1,500 bytes of
    UTF-8, without "/", not "." or "..", not of the reserved form `__.*__`."""
    if not isinstance(value, str) or not value or "/" in value or value in {".", ".."}:
        return False
    if _RESERVED_ID.fullmatch(value):
        return False
    try:
        return len(value.encode("utf-8")) <= 1500
    except UnicodeEncodeError:  # a lone surrogate
        return False


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None


def list_jobs(
    client: firestore.Client, *, app: str | None, state: JobState | None, limit: int, cursor: Cursor | None
) -> Page:
    """One page of `app`'s jobs (None: every job): `limit` jobs after `cursor`, newest `created_at`
    first (jobs whose prediction Replicate has not yet reported, `created_at` null, come after all
    others)."""
    query: Any = client.collection(JOBS)
    if app is not None:
        query = query.where(filter=FieldFilter("app", "==", app))
    if state is not None:
        query = query.where(filter=FieldFilter("state", "==", state.value))
    query = query.order_by("created_at", direction=firestore.Query.DESCENDING).order_by(
        "__name__", direction=firestore.Query.DESCENDING
    )
    if cursor is not None:
        query = query.start_after({"created_at": cursor.created_at, "__name__": cursor.job_id})
    # One more than asked: whether a next page exists, without a second query.
    snapshots = list(query.limit(limit + 1).stream())
    jobs = [Job.from_document(snapshot.to_dict() or {}) for snapshot in snapshots[:limit]]
    if len(snapshots) <= limit or not jobs:
        return Page(jobs, None)
    last = jobs[-1]
    state_value = state.value if state is not None else None
    return Page(jobs, Cursor(last.created_at, snapshots[limit - 1].id, state_value).encode())
