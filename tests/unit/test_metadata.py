"""replicate_relay.metadata: what a job's metadata map may hold, each rule with the case Firestore refuses,
and the OpenAPI document's `metadata` schema agreeing with the check on every case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from replicate_relay.metadata import (
    MAX_ENTRIES,
    MAX_KEY_CHARS,
    MAX_VALUE_CHARS,
    check_key,
    check_metadata,
    check_value,
)
from replicate_relay.values import is_utf8

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = json.loads((ROOT / "schemas" / "openapi.v1.json").read_text(encoding="utf-8"))
METADATA_SCHEMA = Draft202012Validator(OPENAPI["components"]["schemas"]["CreateJob"]["properties"]["metadata"])

ACCEPTED = [
    {},
    {"order": "A-1042"},
    {"k": ""},  # an empty value is a value
    {"a.b": "dots", "a`b": "backticks", " ": "a space", "a\x00b": "NUL", "é😀": "😀"},  # the emulator stores all
    {"__": "v", "___": "v", "__x": "v", "x__": "v", "a__b__": "v"},  # not both beginning and ending with __
    {"k" * MAX_KEY_CHARS: "v" * MAX_VALUE_CHARS},
    {"😀" * MAX_KEY_CHARS: "😀" * MAX_VALUE_CHARS},  # 1,024 bytes of key: under Firestore's 1,491
    {str(i): "x" for i in range(MAX_ENTRIES)},
]

REFUSED = [
    ({"": "v"}, "metadata key '': the key must not be empty"),
    ({"__name__": "v"}, "metadata key '__name__': the key must not begin and end with __"),
    ({"__x__": "v"}, "the key must not begin and end with __"),
    ({"____": "v"}, "the key must not begin and end with __"),
    ({"__a\nb__": "v"}, "the key must not begin and end with __"),
    ({"k" * (MAX_KEY_CHARS + 1): "v"}, f"the key must be at most {MAX_KEY_CHARS} characters, not {MAX_KEY_CHARS + 1}"),
    ({"k": "v" * (MAX_VALUE_CHARS + 1)}, f"metadata value of 'k': the value must be at most {MAX_VALUE_CHARS}"),
    ({"a\ud800": "v"}, r"metadata key 'a\ud800': the key must be Unicode text: character 1 is a lone surrogate"),
    ({"k": "\udc00x"}, r"metadata value of 'k': the value must be Unicode text: character 0 is a lone surrogate"),
    ({str(i): "x" for i in range(MAX_ENTRIES + 1)}, f"metadata has {MAX_ENTRIES + 1} entries; at most {MAX_ENTRIES}"),
    ({"k": 7}, "metadata value of 'k': the value must be a string"),
    ({7: "v"}, "metadata key 7: the key must be a string"),
]


@pytest.mark.parametrize("metadata", ACCEPTED)
def test_what_firestore_stores_is_accepted_as_a_copy(metadata: dict[str, str]) -> None:
    checked = check_metadata(metadata)
    assert checked == metadata
    assert checked is not metadata


@pytest.mark.parametrize(("metadata", "message"), REFUSED)
def test_what_cannot_be_stored_is_refused_naming_the_key_and_the_rule(metadata: Any, message: str) -> None:
    with pytest.raises(ValueError, match=r"^metadata") as raised:
        check_metadata(metadata)
    assert message in str(raised.value)
    str(raised.value).encode("utf-8")  # the message itself can be logged and sent: no lone surrogate in it


def test_a_long_bad_key_is_cut_in_the_message() -> None:
    with pytest.raises(ValueError, match="must be at most") as raised:
        check_metadata({"k" * 100_000: "v"})
    assert len(str(raised.value)) < 500


def test_the_single_checks_say_what_is_wrong_without_repeating_the_key() -> None:
    assert check_key("order") == "order"
    assert check_value("A-1") == "A-1"
    with pytest.raises(ValueError, match=r"^the key must not be empty$"):
        check_key("")
    with pytest.raises(ValueError, match=r"^the value must be Unicode text: character 0 is a lone surrogate"):
        check_value("\ud800")


def _said_in_json_schema(metadata: dict[Any, Any]) -> bool:
    """JSON Schema has no word for a lone surrogate (the description states that rule), and JSON
    object keys are strings."""
    texts = [part for pair in metadata.items() for part in pair if isinstance(part, str)]
    return all(isinstance(key, str) for key in metadata) and all(is_utf8(text) for text in texts)


@pytest.mark.parametrize("metadata", [entry for entry, _ in REFUSED if _said_in_json_schema(entry)])
def test_the_openapi_schema_refuses_what_the_check_refuses(metadata: dict[str, Any]) -> None:
    assert not METADATA_SCHEMA.is_valid(metadata)


@pytest.mark.parametrize("metadata", ACCEPTED)
def test_the_openapi_schema_accepts_what_the_check_accepts(metadata: dict[str, str]) -> None:
    assert METADATA_SCHEMA.is_valid(metadata)


@given(st.dictionaries(st.text(max_size=MAX_KEY_CHARS + 2), st.text(max_size=8), max_size=4))
def test_the_schema_and_the_check_agree_on_generated_maps(metadata: dict[str, str]) -> None:
    try:
        check_metadata(metadata)
    except ValueError:
        accepted = False
    else:
        accepted = True
    assert METADATA_SCHEMA.is_valid(metadata) == accepted
