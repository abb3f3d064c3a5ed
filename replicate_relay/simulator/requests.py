"""Reading create requests (predictions and trainings): Replicate's fields, the `Cancel-After` header, and the
`sim_*` input keys that steer the run."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
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
MAX_WEIGHTS_BYTES = 10 * 1024**3  # served as a stream, never held in memory

Kind = Literal["prediction", "training"]

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Go's duration syntax, the one Replicate's examples use (`1m`, `30s`): one or more <number><unit>.
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:h|ms|m|s))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


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
    start_delay: float | None = None  # seconds spent `starting`; None: a tenth of the run, at most 0.1 s
    weights_bytes: int = 4096  # a training's weights file


@dataclass(frozen=True)
class CreateRequest:
    """A validated create request: a prediction, or a training (which has a `destination`)."""

    model: str
    version: str
    input: dict[str, Any]
    behaviour: Behaviour
    webhook: str | None = None
    webhook_completed: str | None = None
    events: frozenset[str] = field(default=DEFAULT_EVENTS)
    kind: Kind = "prediction"
    destination: str | None = None  # a training's "owner/name"
    cancel_after: float | None = None  # seconds from creation (the `Cancel-After` header), predictions only


def parse_create(body: Any, *, model: str | None = None, cancel_after: str | None = None) -> CreateRequest:
    """Validate a create-prediction body; `model` is "owner/name" for the model and deployment forms, None for the
    version form; `cancel_after` is the raw `Cancel-After` header, if any (400 when malformed)."""
    deadline = None if cancel_after is None else parse_duration(cancel_after)
    body = _object(body)
    problems: list[tuple[str, str]] = []

    if model is None:
        model, version = _version_form(body.get("version"), problems)
    else:
        version = _version_id(model)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        problems.append(("stream", "must be true or false"))
    return _request(body, problems, model=model, version=version, kind="prediction", cancel_after=deadline)


def parse_training(body: Any, *, model: str, version: str) -> CreateRequest:
    """Validate a create-training body (POST /v1/models/{owner}/{name}/versions/{version_id}/trainings)."""
    body = _object(body)
    problems: list[tuple[str, str]] = []
    raw = body.get("destination")
    owner, _, name = raw.partition("/") if isinstance(raw, str) else ("", "", "")
    if not (_MODEL_NAME.fullmatch(owner) and _MODEL_NAME.fullmatch(name)):
        problems.append(("destination", "is required: an existing model, owner/name"))
    destination = f"{owner}/{name}"
    return _request(body, problems, model=model, version=version, kind="training", destination=destination)


def parse_duration(raw: str) -> float:
    """Seconds in a `Cancel-After` value: Go-style `<number><unit>` parts (h, m, s, ms), e.g. `1m`, `1h30m`,
    `500ms`; a malformed or zero one is a 400."""
    text = raw.strip()
    if len(text) > 64 or not _DURATION.fullmatch(text):
        raise ApiError(400, f"Cancel-After: {raw[:64]!r} is not a duration such as 30s, 5m or 1h30m")
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text))
    if seconds <= 0:
        raise ApiError(400, "Cancel-After: the duration must be more than zero")
    return seconds


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _request(
    body: dict[str, Any], problems: list[tuple[str, str]], *, model: str, version: str, kind: Kind, **extra: Any
) -> CreateRequest:
    """The fields both kinds share (input, webhook, webhook_completed, webhook_events_filter); 422 naming each
    problem, `problems` included."""
    raw_input = body.get("input")
    if not isinstance(raw_input, dict):
        problems.append(("input", "is required and must be an object"))
        raw_input = {}
    behaviour = _behaviour(raw_input, kind, problems)
    webhook = _url(body, "webhook", problems)
    webhook_completed = _url(body, "webhook_completed", problems)
    events = _events(body.get("webhook_events_filter"), problems)
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
        kind=kind,
        **extra,
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
    "sim_start_delay": ("start_delay", lambda raw: number(raw, low=0.0, high=MAX_DURATION_SECONDS)),
    "sim_weights_bytes": ("weights_bytes", lambda raw: integer(raw, low=1, high=MAX_WEIGHTS_BYTES)),
}
# Keys that shape one kind's output only; sent with the other kind they are refused, not ignored.
_ONLY = {
    "prediction": frozenset({"sim_files", "sim_file_bytes", "sim_output_format", "sim_output_list", "sim_tokens"}),
    "training": frozenset({"sim_weights_bytes"}),
}


def _behaviour(raw_input: dict[str, Any], kind: Kind, problems: list[tuple[str, str]]) -> Behaviour:
    values: dict[str, Any] = {}
    other = "training" if kind == "prediction" else "prediction"
    for key, raw in raw_input.items():
        if not key.startswith(SIM_PREFIX):
            continue
        known = SIM_KEYS.get(key)
        if known is None:
            problems.append((f"input.{key}", f"unknown simulator key; known: {', '.join(SIM_KEYS)}"))
            continue
        if key in _ONLY[other]:
            problems.append((f"input.{key}", f"applies to a {other} only"))
            continue
        attribute, check = known
        try:
            values[attribute] = check(raw)
        except ValueError as error:
            problems.append((f"input.{key}", str(error)))
    behaviour = Behaviour(**values)
    if not behaviour.output_list and behaviour.files > 1:
        problems.append(("input.sim_output_list", "false needs sim_files of 0 or 1"))
    if behaviour.start_delay is not None and behaviour.start_delay > behaviour.duration:
        problems.append(("input.sim_start_delay", "must not exceed sim_duration, the whole run"))
    return behaviour
