"""Six JSON shapes Firestore's maps cannot hold, going through the pipeline, for the integration
and the image tests: each ends a succeeded job whose input and output read back exactly as sent.

Each is a value a Firestore map cannot hold, or holds changed: arrays directly in arrays, an empty
key, nesting past Firestore's 20 levels, and keys that field paths treat specially (`.`, `` ` ``,
`/`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from replicate_relay.devstack.stack import LocalStack
from replicate_relay.testing import prediction_lifecycle

# What a shape leaves as it is: prediction_lifecycle's input, and a plain text output.
PLAIN_INPUT: dict[str, Any] = {"input_image": "https://example.com/old-photo.jpg", "seed": 42, "output_format": "png"}
PLAIN_OUTPUT = "a plain text output"


def nested(depth: int) -> Any:
    """A value `depth` containers deep, objects and lists in turn, with a string at the bottom."""
    value: Any = "the bottom"
    for level in range(depth):
        value = {"level": level, "next": value} if level % 2 == 0 else [value]
    return value


@dataclass(frozen=True)
class Shape:
    id: str  # the test's id
    input: dict[str, Any]
    output: Any


SHAPES = (
    Shape("output-list-of-lists", PLAIN_INPUT, [[0.1, 0.2], [0.3, 0.4]]),
    Shape("input-list-of-lists", {"boxes": [[1, 2], [3, 4]]}, PLAIN_OUTPUT),
    Shape("input-empty-key", {"": 1, "prompt": "x"}, PLAIN_OUTPUT),
    Shape("output-empty-key", PLAIN_INPUT, {"": "v", "a": 1}),
    Shape("output-30-levels-deep", PLAIN_INPUT, nested(30)),
    Shape(
        "keys-with-dot-backtick-slash",
        {"a.b": 1, "`c`": "x", "d/e": [1.5, 2], ".": {"`": {"/": True}}},
        {"x.y": {"`": 0.25, "/": "slash"}, "p/q.r`": [None, False, 3], "`": {".": {"/": "deep"}}},
    ),
)


def lifecycle(prediction_id: str, shape: Shape) -> list[dict[str, Any]]:
    """The `starting` and `succeeded` webhook bodies of a prediction that took `shape.input` and
    returned `shape.output`."""
    bodies = prediction_lifecycle(prediction_id, output=shape.output, progress_events=0)
    return [{**body, "input": shape.input} for body in bodies]


def timestamps(count: int) -> list[int]:
    """`webhook-timestamp`s one second apart, the last now: the events' order, as Replicate's clock has it."""
    now = int(time.time())
    return [now - count + 1 + offset for offset in range(count)]


def exact(value: Any) -> str:
    """JSON text that tells apart what == does not: 1 from 1.0 and True, and keys in any order."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def handler_lines(stack: LocalStack, prediction_id: str) -> str:
    """What the handlers logged of the prediction: the first thing to read when its job ends wrong."""
    lines = [
        f"{name}: {line}"
        for name in ("job-status", "archive-outputs")
        for line in stack.functions[name].log_path.read_text(errors="replace").splitlines()
        if prediction_id in line
    ]
    return "the handlers logged:\n" + "\n".join(lines[-12:]) if lines else "the handlers logged nothing of it"
