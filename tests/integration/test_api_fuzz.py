"""The API service fuzzed from its own contract: schemathesis generates requests from
schemas/openapi.v1.json, valid ones and hostile ones (wrong types, missing and unknown fields,
odd strings, bad query parameters), and sends them to the test stack's api (auth off, the
Firestore emulator, the Replicate simulator). Every answer must be something other than a 5xx and
conform to the document (a documented status, its media type, its schema), and every request the
document calls valid must be accepted. Issue 21: "the api service answers no hostile body with a 5xx".

Bounded and repeatable: a fixed number of examples per operation, derandomized generation (the same
requests on every run), no example database, no deadline. Valid submissions become predictions in
the simulator, which the pipeline then runs like any other.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from api import errors
from api.core import check_idempotency_key
from api.idempotency import MAX_KEY_CHARS
from api.listing import CURSOR_FORMAT, Cursor, InvalidCursor
from replicate_relay.devstack.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 100
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,
]

# A `relay-cursor` is opaque: the document's pattern alone describes strings the API never made
# (and refuses, 400). Valid ones are what Cursor.encode makes: a position (created_at or null, a
# job id) and a state filter, which `_cursor_for_its_state` sets to the request's own `state`.
schemathesis.openapi.format(
    CURSOR_FORMAT,
    st.builds(
        Cursor,
        created_at=st.none() | st.datetimes(timezones=st.just(UTC), min_value=datetime(2000, 1, 1)),
        job_id=st.from_regex(r"\A[A-Za-z0-9_-][A-Za-z0-9_.-]{0,40}\Z"),
        state=st.none(),
    ).map(Cursor.encode),
)
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {
            "mode": "all",  # valid requests and hostile ones
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
        },
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
    }
)
SCHEMA = schemathesis.openapi.from_path(ROOT / "schemas" / "openapi.v1.json", config=CONFIG)


@SCHEMA.parametrize()
def test_no_request_gets_a_5xx_or_an_answer_the_document_does_not_describe(
    case: schemathesis.Case, stack: LocalStack
) -> None:
    _unique_idempotency_key(case)
    _cursor_for_its_state(case)
    case.call_and_validate(base_url=stack.api_url, checks=CHECKS, timeout=30)


def _unique_idempotency_key(case: schemathesis.Case) -> None:
    """A valid generated Idempotency-Key made unique to this request (a uuid before it, within the
    length limit). Generation repeats simple keys ("0") across bodies, and the same key with another
    body is rightly a 422 `idempotency-key-reused`: the document's state, not its format. Invalid
    keys are sent as generated."""
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if not isinstance(key, str):
        return
    try:
        check_idempotency_key(key)
    except errors.InvalidParameter:
        return
    headers["Idempotency-Key"] = (uuid.uuid4().hex + key)[:MAX_KEY_CHARS]


def _cursor_for_its_state(case: schemathesis.Case) -> None:
    """A generated cursor made for the request's `state`, as the document asks ("with the same
    `state`"): the two are drawn apart. Anything else is sent as generated."""
    query = case.query or {}
    cursor, state = query.get("cursor"), query.get("state")
    if not isinstance(cursor, str) or not (state is None or isinstance(state, str)):
        return
    try:
        decoded = Cursor.decode(cursor, state=None)
    except InvalidCursor:
        return
    query["cursor"] = Cursor(decoded.created_at, decoded.job_id, state or None).encode()
