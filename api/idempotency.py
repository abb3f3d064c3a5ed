"""Idempotency keys in Firestore: a retried `POST /v1/jobs` gets the first answer, never a second prediction.

`idempotency/{sha256(caller, key)}` holds the fingerprint of the request (a hash of its method, path and
canonical JSON body), the job id chosen for it, whether it is in progress or answered, the answer
(status and body), and `expire_at`, the field of the Firestore TTL policy (infra/firestore.indexes.json).
The key itself is not stored: it may be something the caller considers secret. Keys belong to
their caller (the app the API authenticated): the same key from another app is another record, so
it makes another job and never replays the first app's answer.

Every decision is taken in one Firestore transaction, so two requests with one key never both
proceed. The job id is chosen and recorded *before* anything is submitted: a request that died
half-way is found again by it once its lease lapses (see `claim`).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.cloud import firestore

from replicate_relay.jobstore import utcnow
from replicate_relay.values import dumps

COLLECTION = "idempotency"
MAX_KEY_CHARS = 255
IN_PROGRESS = "in_progress"
ANSWERED = "answered"


@dataclass(frozen=True)
class Proceed:
    """The key is this request's: submit as `job_id`."""

    job_id: str


@dataclass(frozen=True)
class Resume:
    """The first request with this key stopped answering (its lease lapsed) after recording
    `job_id`: if that job exists, answer with it (its prediction may exist); else submit as it."""

    job_id: str


@dataclass(frozen=True)
class Replay:
    """The first request was answered: give the same status and body."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class InProgress:
    """The first request is still being carried out."""

    retry_after_seconds: int


@dataclass(frozen=True)
class Reused:
    """The key was used with another request."""


Claimed = Proceed | Resume | Replay | InProgress | Reused


def key_id(key: str, caller: str | None) -> str:
    """The document id of `caller`'s key (any printable characters are allowed in keys, not in ids).
    `caller` None (the local stack's anonymous caller) hashes the key alone; a newline, which
    neither a key nor an e-mail holds, keeps `caller` and `key` from running into each other."""
    scoped = key if caller is None else f"{caller}\n{key}"
    return hashlib.sha256(scoped.encode("utf-8")).hexdigest()


def fingerprint(method: str, path: str, body: Any) -> str:
    """What makes two requests the same: method, path and the body's canonical JSON (key order
    and whitespace do not count, so a retry from another serialiser still matches)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: JSON may carry a lone surrogate ("\ud800"), which strict UTF-8 refuses.
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode("utf-8", "surrogatepass")).hexdigest()


def decide(record: Mapping[str, Any] | None, request: str, now: datetime) -> Claimed | None:
    """What a request with fingerprint `request` does given the key's record (pure).

    None: the key is free (no record, or an expired one that the TTL policy has not removed yet).
    """
    if record is None or _expired(record, now):
        return None
    if record.get("fingerprint") != request:
        return Reused()
    if record.get("state") == ANSWERED:
        return Replay(int(record["status"]), json.loads(record["body"]))
    lease_until: datetime = record["lease_until"]
    if lease_until > now:
        return InProgress(max(1, int((lease_until - now).total_seconds() + 0.999)))
    return Resume(str(record["job_id"]))


def _expired(record: Mapping[str, Any], now: datetime) -> bool:
    expire_at = record.get("expire_at")
    return isinstance(expire_at, datetime) and expire_at <= now


class IdempotencyStore:
    """Keys in Firestore; one instance per process, the client created by the caller."""

    def __init__(
        self,
        client: firestore.Client,
        *,
        retention: timedelta,
        lease: timedelta,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._client = client
        self._retention = retention
        self._lease = lease
        self._clock = clock

    def claim(self, key: str, request: str, *, caller: str | None) -> Claimed:
        """Take `caller`'s key for this request, or say what to answer instead (one transaction)."""
        ref = self._client.collection(COLLECTION).document(key_id(key, caller))

        @firestore.transactional
        def run(transaction: firestore.Transaction) -> Claimed:
            snapshot = ref.get(transaction=transaction)
            now = self._clock()
            decided = decide(snapshot.to_dict() if snapshot.exists else None, request, now)
            if isinstance(decided, Resume):
                transaction.update(ref, {"lease_until": now + self._lease, "claimed_at": now})
            if decided is not None:
                return decided
            job_id = uuid.uuid4().hex
            record = {
                "fingerprint": request,
                "state": IN_PROGRESS,
                "job_id": job_id,
                "claimed_at": now,
                "lease_until": now + self._lease,
                "status": None,
                "body": None,
                "created_at": now,
                "expire_at": now + self._retention,  # Firestore TTL policy field
            }
            if snapshot.exists:  # expired, not yet removed by the TTL policy
                transaction.set(ref, record)
            else:
                transaction.create(ref, record)  # a precondition too: fails if it appeared meanwhile
            return Proceed(job_id)

        claimed: Claimed = run(self._client.transaction())
        return claimed

    def answer(self, key: str, status: int, body: Mapping[str, Any], *, caller: str | None) -> None:
        """Record the answer a retry with `caller`'s key replays, for the retention period from now."""
        now = self._clock()
        self._client.collection(COLLECTION).document(key_id(key, caller)).update(
            {
                "state": ANSWERED,
                "status": status,
                # As JSON text: replayed byte for byte, whatever Firestore would make of its values.
                "body": dumps(body),
                "answered_at": now,
                "expire_at": now + self._retention,
            }
        )
