"""JobStore's transactions on contention, against the real google-cloud-firestore client with its RPCs faked:
attempts that run out are recognised by the Aborted they end on, never by the library's message text."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from google.api_core import exceptions as google_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1 import transaction as firestore_transaction
from google.cloud.firestore_v1.base_transaction import _EXCEED_ATTEMPTS_TEMPLATE
from google.cloud.firestore_v1.types import BatchGetDocumentsResponse

from replicate_relay import announcements
from replicate_relay.jobstore import JobStore

PROJECT = "contention-test"
# What the client raises once its attempts run out, in this version; its own text, not an API.
LIBRARY_MESSAGE = _EXCEED_ATTEMPTS_TEMPLATE


class FakeFirestoreAPI:
    """Firestore's RPCs as the client library calls them: every job is missing, and every commit is
    refused as contended (ABORTED), as when another transaction holds the job for longer than the
    budget. `read_error`, if set, is what reading the job raises instead."""

    def __init__(self, read_error: Exception | None = None) -> None:
        self.begins = 0
        self.commits = 0
        self.read_error = read_error

    def begin_transaction(self, request: dict[str, Any], **_: Any) -> SimpleNamespace:
        self.begins += 1
        return SimpleNamespace(transaction=f"t{self.begins}".encode())

    def batch_get_documents(self, request: dict[str, Any], **_: Any) -> Iterator[BatchGetDocumentsResponse]:
        if self.read_error is not None:
            raise self.read_error
        return iter(
            [BatchGetDocumentsResponse(missing=name, read_time=datetime.now(UTC)) for name in request["documents"]]
        )

    def commit(self, request: dict[str, Any], **_: Any) -> None:
        self.commits += 1
        raise google_exceptions.Aborted("Transaction lock timeout")  # type: ignore[no-untyped-call]

    def rollback(self, request: dict[str, Any], **_: Any) -> None:
        return None


def store_on(api: FakeFirestoreAPI) -> JobStore:
    client = firestore.Client(project=PROJECT, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    client._firestore_api_internal = api
    return JobStore(client, contention_budget=timedelta(seconds=0.5))


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(LIBRARY_MESSAGE, id="the-librarys-message"),
        pytest.param("Transaction still aborted after {:d} tries.", id="another-message"),
    ],
)
def test_attempts_that_run_out_are_contention_whatever_the_library_says(
    monkeypatch: pytest.MonkeyPatch, message: str
) -> None:
    """A library whose words change (its message is private) still ends in Relay's Aborted, after
    rounds of attempts for the budget, not in the library's ValueError at the first round's end."""
    monkeypatch.setattr(firestore_transaction, "_EXCEED_ATTEMPTS_TEMPLATE", message)
    api = FakeFirestoreAPI()

    with pytest.raises(google_exceptions.Aborted) as aborted:
        announcements.claim(store_on(api), "j1")

    assert "Firestore transaction claim_announcement still contended after" in str(aborted.value)
    assert "budget 0.5 s" in str(aborted.value)
    assert api.commits > 10  # more than one round of the client's 10 attempts


def test_an_error_carrying_the_librarys_words_is_not_contention(monkeypatch: pytest.MonkeyPatch) -> None:
    """What is not contention goes to the caller at once, whatever its text: no second attempt."""
    words = LIBRARY_MESSAGE.format(10)
    api = FakeFirestoreAPI(read_error=ValueError(words))

    with pytest.raises(ValueError, match=words) as raised:
        announcements.claim(store_on(api), "j1")

    assert not isinstance(raised.value, google_exceptions.Aborted)
    assert (api.begins, api.commits) == (1, 0)


def test_a_read_refused_as_contended_is_retried_in_another_round() -> None:
    """An Aborted the library does not retry itself (a read's, raised as it is) is contention too."""
    api = FakeFirestoreAPI(read_error=google_exceptions.Aborted("Transaction lock timeout"))  # type: ignore[no-untyped-call]

    with pytest.raises(google_exceptions.Aborted, match="still contended after") as aborted:
        announcements.claim(store_on(api), "j1")

    assert isinstance(aborted.value.__cause__, google_exceptions.Aborted)
    assert api.begins > 1
