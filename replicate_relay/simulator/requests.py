"""Reading a create-prediction request: the Replicate fields, and the `sim_*` input keys that steer the run."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from replicate_relay.simulator.errors import ApiError, InvalidFields
from replicate_relay.simulator.settings import boolean, integer, number

EVENTS = ("start", "output", "logs", "completed")
# "With no filter Replicate sends on new output and on completion" (docs/REPLICATE.md).
DEFAULT_EVENTS = frozenset({"output", "completed"})
OUTCOMES = ("succeeded", "failed", "canceled", "aborted")
CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}
SIM_PREFIX = "sim_"
VERSION_FORM_MODEL = "replicate-relay/simulated-model"
MAX_DURATION_SECONDS = 1800.0  # Replicate times predictions out after 30 minutes

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class Behaviour:
    """How one simulated run goes, from its `sim_*` input keys."""

    outcome: str = "succeeded"
    duration: float = 1.5
    files: int = 1  # 0: text output, a list of `tokens` strings
    file_bytes: int = 2048
    output_format: str = "png"
    output_list: bool = True  # false: one bare value (the single file URL, or the whole text)
    tokens: int = 8
    logs: int = 3
    error: str = "simulated failure: the model raised an exception"
    drop_final: bool = False


@dataclass(frozen=True)
class CreateRequest:
    """A validated create-prediction request."""

    model: str
    version: str
    input: dict[str, Any]
    behaviour: Behaviour
    webhook: str | None = None
    webhook_completed: str | None = None
    events: frozenset[str] = field(default=DEFAULT_EVENTS)


def parse_create(body: Any, *, model: str | None = None) -> CreateRequest:
    """Validate a create body; `model` is "owner/name" for the model and deployment forms, None for the version form."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    problems: list[tuple[str, str]] = []

    if model is None:
        model, version = _version_form(body.get("version"), problems)
    else:
        version = _version_id(model)

    raw_input = body.get("input")
    if not isinstance(raw_input, dict):
        problems.append(("input", "is required and must be an object"))
        raw_input = {}
    behaviour = _behaviour(raw_input, problems)

    webhook = _url(body, "webhook", problems)
    webhook_completed = _url(body, "webhook_completed", problems)
    events = _events(body.get("webhook_events_filter"), problems)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        problems.append(("stream", "must be true or false"))

    if problems:
        raise InvalidFields(problems)
    return CreateRequest(
        model=model,
        version=version,
        input=dict(raw_input),
        behaviour=behaviour,
        webhook=webhook,
        webhook_completed=webhook_completed,
        events=events,
    )


def _version_form(raw: Any, problems: list[tuple[str, str]]) -> tuple[str, str]:
    # Replicate takes a version id, "owner/name:version" or (for official models) "owner/name".
    if not isinstance(raw, str) or not raw.strip():
        problems.append(("version", "is required: a version id, owner/name:version or owner/name"))
        return VERSION_FORM_MODEL, ""
    reference, _, version = raw.strip().partition(":")
    if "/" not in reference:
        return VERSION_FORM_MODEL, reference
    owner, _, name = reference.partition("/")
    if not (_MODEL_NAME.fullmatch(owner) and _MODEL_NAME.fullmatch(name)):
        problems.append(("version", "is not of the form owner/name:version"))
    return reference, version or _version_id(reference)


def _version_id(model: str) -> str:
    """A stable 64-hex version id for a model (the client's Prediction requires a version string)."""
    return hashlib.sha256(model.encode("utf-8")).hexdigest()


def _url(body: dict[str, Any], name: str, problems: list[tuple[str, str]]) -> str | None:
    raw = body.get(name)
    if raw is None:
        return None
    # Replicate requires https; plain http is allowed here because receivers under test run locally.
    parts = urlsplit(raw) if isinstance(raw, str) and len(raw) <= 2048 else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append((name, "must be an http(s) URL"))
        return None
    return str(raw)


def _events(raw: Any, problems: list[tuple[str, str]]) -> frozenset[str]:
    if raw is None:
        return DEFAULT_EVENTS
    if not isinstance(raw, list) or not all(isinstance(item, str) and item in EVENTS for item in raw):
        problems.append(("webhook_events_filter", f"must be a list of events from {', '.join(EVENTS)}"))
        return DEFAULT_EVENTS
    return frozenset(raw)


def _choice(options: tuple[str, ...] | dict[str, str]) -> Callable[[Any], str]:
    def check(raw: Any) -> str:
        if not isinstance(raw, str) or raw not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return raw

    return check


def _text(raw: Any) -> str:
    if not isinstance(raw, str) or len(raw) > 1000:
        raise ValueError("must be a string of at most 1000 characters")
    return raw


# input key -> (Behaviour field, check)
SIM_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "sim_outcome": ("outcome", _choice(OUTCOMES)),
    "sim_duration": ("duration", lambda raw: number(raw, low=0.0, high=MAX_DURATION_SECONDS)),
    "sim_files": ("files", lambda raw: integer(raw, low=0, high=100)),
    "sim_file_bytes": ("file_bytes", lambda raw: integer(raw, low=1, high=50_000_000)),
    "sim_output_format": ("output_format", _choice(CONTENT_TYPES)),
    "sim_output_list": ("output_list", boolean),
    "sim_tokens": ("tokens", lambda raw: integer(raw, low=0, high=1000)),
    "sim_logs": ("logs", lambda raw: integer(raw, low=0, high=1000)),
    "sim_error": ("error", _text),
    "sim_drop_final": ("drop_final", boolean),
}


def _behaviour(raw_input: dict[str, Any], problems: list[tuple[str, str]]) -> Behaviour:
    values: dict[str, Any] = {}
    for key, raw in raw_input.items():
        if not key.startswith(SIM_PREFIX):
            continue
        known = SIM_KEYS.get(key)
        if known is None:
            problems.append((f"input.{key}", f"unknown simulator key; known: {', '.join(SIM_KEYS)}"))
            continue
        attribute, check = known
        try:
            values[attribute] = check(raw)
        except ValueError as error:
            problems.append((f"input.{key}", str(error)))
    behaviour = Behaviour(**values)
    if not behaviour.output_list and behaviour.files > 1:
        problems.append(("input.sim_output_list", "false needs sim_files of 0 or 1"))
    return behaviour
