"""Hypothesis strategies for any JSON a model may take or return : the values Firestore's maps cannot hold
and the ones a careless encoding changes, mixed into ordinary ones.

- arrays in arrays (embeddings, boxes, masks), empty arrays and objects;
- keys Firestore refuses or treats specially: empty, `.`, `` ` ``, `/`, `__x__`, `__name__`, NUL, astral-plane
  characters (`𝄞`), a string and its non-NFC twin (`é`, `e\\u0301`) side by side, lone surrogates;
- nesting far past Firestore's 20 levels: a value wrapped in 25-40 lists and objects;
- integers past 64 bits both ways (±2**70) and at its edges (-2**63, 2**63 - 1), floats at their edges (1e308,
  5e-324), ones that float32 would change (0.1, 1/3), -0.0; never NaN or an infinity, which JSON cannot say;
- text of any code point, lone surrogates included: JSON's "\\ud800" escape is valid JSON, json.loads (the
  receiver's and the handlers' parser) accepts it, so a model's output can carry one; and long text (tens of KiB).

Whole-string URLs and data: URIs are left out of `json_values`: in an output they are files, which archive-outputs
fetches (and refuses for any host but Replicate's), so a job with one does not simply succeed. `input_values` has
them: an input is never fetched, so its URLs must come back exactly as sent.

`json_text` is what compares two values type-exactly: 1 and 1.0, True and 1, 0.0 and -0.0 all differ in it.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from replicate_relay.outputs import find_files

# Keys and strings that stress field paths, escaping and normalisation.
ODD_KEYS = [
    "",
    ".",
    "`",
    "/",
    "__x__",
    "__name__",
    "__",
    "𝄞",
    "é",
    "e\u0301",
    "a.b",
    "a/b",
    "`a`",
    "*",
    "[0]",
    " ",
    "\x00",
    "\ud800",
    "$ref",
    "~1",
]
ODD_STRINGS = [
    "",
    "𝄞",
    "e\u0301",
    "é",
    "\ud800",
    "\udfff",
    "a\ud83d",  # the first half of a surrogate pair, alone
    "\udc00b",
    "\x00",
    "\u2028\u2029",
    "\ufeff",
    "\uffff",
    "\U0010ffff",
    "null",
    "1",
    "1.0",
    "true",
    "{}",
    "[]",
    '"',
    "\\",
    "__name__",
]
LAYERS = (25, 40)  # how many lists and objects `deeply_nested` wraps a value in
LONG_TEXT = (8_000, 40_000)  # characters

INTEGER_EDGES = [0, -1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, 2**70, -(2**70), 10**30]
FLOAT_EDGES = [
    1e308,
    -1e308,
    1.7976931348623157e308,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    0.1,
    1 / 3,
    -0.0,
    0.0,
    1.0,
    -2.0,
    1e16,
    16777217.0,  # float32 has 24 bits of mantissa
    2.0**53 + 2,
    3.4028235e38,
]


def not_a_file(text: str) -> bool:
    """Whether `text` is plain text in an output, not a file reference (replicate_relay.outputs.find_files)."""
    return not find_files(text)


def _repeated(pair: tuple[str, int]) -> str:
    unit, length = pair
    return (unit * (length // len(unit) + 1))[:length]


# Any code point, surrogates included (st.text leaves them out unless asked).
ANY_CHARACTER = st.characters(exclude_categories=())
short_text = st.one_of(st.text(max_size=30), st.text(ANY_CHARACTER, max_size=12), st.sampled_from(ODD_STRINGS))
long_text = st.tuples(st.text(ANY_CHARACTER, min_size=1, max_size=12), st.integers(*LONG_TEXT)).map(_repeated)
keys = st.one_of(st.sampled_from(ODD_KEYS), st.text(max_size=10), st.text(ANY_CHARACTER, max_size=4))
integers = st.one_of(st.integers(), st.sampled_from(INTEGER_EDGES))
floats = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(FLOAT_EDGES))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    integers,
    floats,
    short_text.filter(not_a_file),
    long_text.filter(not_a_file),
)


def _wrapped(pair: tuple[Any, list[str | None]]) -> Any:
    value, layers = pair
    for key in layers:  # None: a list around the value; a key: an object
        value = [value] if key is None else {key: value}
    return value


def deeply_nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`inner`'s value wrapped in 25-40 levels of lists and objects, in any mix."""
    layers = st.lists(st.one_of(st.none(), keys), min_size=LAYERS[0], max_size=LAYERS[1])
    return st.tuples(inner, layers).map(_wrapped)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4),
        deeply_nested(children),
    )


json_values = st.recursive(scalars, _containers, max_leaves=10)
# Strings an input holds that an output would not: files Replicate fetches itself, never Relay.
INPUT_URLS = [
    "https://replicate.delivery/pbxt/input.png",
    "https://example.com/old-photo.jpg?token=secret",
    "http://127.0.0.1:8080/x.png",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==",
    "data:text/plain;base64," + "QUJD" * 2_000,  # 8 KB: the kind of input the first versions cut
]
input_values = st.dictionaries(keys, st.one_of(json_values, st.sampled_from(INPUT_URLS)), max_size=5)


def json_text(value: Any) -> str:
    """`value` as canonical JSON text: equal texts mean equal values of the same JSON types."""
    return json.dumps(value, sort_keys=True, allow_nan=False)


def same_json(sent: Any, received: Any) -> bool:
    """Whether `received` is `sent`, type for type (1 is not 1.0, True is not 1, -0.0 is not 0.0)."""
    return json_text(sent) == json_text(received) and sent == received
