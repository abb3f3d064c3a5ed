"""A job's metadata: the submitter's own string key/values, kept on the job as a Firestore map and
carried on job-events. The rules are what such a map can hold, checked before anything is written:

- at most MAX_ENTRIES entries;
- keys of 1 to MAX_KEY_CHARS characters: Firestore refuses an empty field name (the client raises
  ValueError) and one over 1,500 bytes with its path (`metadata.` and the key: 1,491 bytes of key),
  and 256 characters are at most 1,024 bytes of UTF-8;
- no key that begins and ends with `__`: Firestore reserves the names matching `__.*__` (the
  emulator refuses `__x__` and `_____` with "field name ... is reserved", 400; it stores `____`,
  which the documented rule covers, so it is refused too);
- values of at most MAX_VALUE_CHARS characters, so that 64 of them stay far under the 1 MiB of a
  job document;
- keys and values that are Unicode text: a lone surrogate ("\\ud800", which JSON's `\\u` escapes
  and Python's json module let through) cannot be encoded as UTF-8, which Firestore and Pub/Sub
  need (the client raises UnicodeEncodeError).

Lengths are in characters (code points), as JSON Schema's maxLength counts them, so the API's
OpenAPI document states these rules exactly (api/models.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_ENTRIES = 64
MAX_KEY_CHARS = 256
MAX_VALUE_CHARS = 1024
# Firestore's reserved field names, `__.*__`: beginning and ending with two underscores, whatever
# is between them (newlines too). As an ECMA-262 pattern for JSON Schema: `.` would not match "\n".
RESERVED_KEY_PATTERN = r"^__[\s\S]*__$"
_RESERVED_NAME = re.compile(r"__.*__", re.DOTALL)


def reserved_by_firestore(name: str) -> bool:
    """Whether Firestore reserves `name` (`__.*__`): as a field name, and as a document id too, whose
    read it refuses with InvalidArgument."""
    return _RESERVED_NAME.fullmatch(name) is not None


def key_problem(key: object) -> str | None:
    """What is wrong with `key` as a metadata key, or None."""
    if not isinstance(key, str):
        return "must be a string"
    if not key:
        return "must not be empty"
    if len(key) > MAX_KEY_CHARS:
        return f"must be at most {MAX_KEY_CHARS} characters, not {len(key)}"
    if reserved_by_firestore(key):
        return "must not begin and end with __ (Firestore reserves such names)"
    return _text_problem(key)


def value_problem(value: object) -> str | None:
    """What is wrong with `value` as a metadata value, or None."""
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > MAX_VALUE_CHARS:
        return f"must be at most {MAX_VALUE_CHARS} characters, not {len(value)}"
    return _text_problem(value)


def check_key(key: str) -> str:
    """`key` if it can be a metadata key; else ValueError saying why (not repeating the key)."""
    problem = key_problem(key)
    if problem is not None:
        raise ValueError(f"the key {problem}")
    return key


def check_value(value: str) -> str:
    """`value` if it can be a metadata value; else ValueError saying why."""
    problem = value_problem(value)
    if problem is not None:
        raise ValueError(f"the value {problem}")
    return value


def check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """A copy of `metadata` once every rule holds; else ValueError naming the first key at fault
    (as repr(), which escapes what cannot be printed) and the rule."""
    if len(metadata) > MAX_ENTRIES:
        raise ValueError(f"metadata has {len(metadata)} entries; at most {MAX_ENTRIES} are allowed")
    for key, value in metadata.items():
        problem = key_problem(key)
        if problem is not None:
            raise ValueError(f"metadata key {key!r:.300}: the key {problem}")
        problem = value_problem(value)
        if problem is not None:
            raise ValueError(f"metadata value of {key!r}: the value {problem}")
    return dict(metadata)


def _text_problem(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"must be Unicode text: character {error.start} is a lone surrogate ({text[error.start]!r})"
    return None
