"""Typed reading of environment variables, shared by every deployable's settings."""

from __future__ import annotations

import logging
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, TypeVar

from replicate_relay import logs

# Defined in the one exception tree, replicate_relay/errors.py; still importable from here.
from replicate_relay.errors import ConfigError as ConfigError  # noqa: PLC0414 - re-export
from replicate_relay.values import DEFAULT_INLINE_BYTES

T = TypeVar("T")
N = TypeVar("N", int, float)


@dataclass(frozen=True)
class Secret:
    """A value that must never reach a log line: its repr and str hide it."""

    value: str

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


class Env:
    """Reads typed values out of an environment mapping, naming the variable on any error."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get_str(self, name: str, default: str | None = None) -> str:
        value = self._environ.get(name, "").strip()
        if value:
            return value
        if default is None:
            raise ConfigError(f"{name} is required but not set")
        return default

    def _number(self, name: str, default: N, kind: Callable[[str], N], what: str) -> N:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{name} must be {what}, got {raw!r}") from None

    def get_optional(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def get_int(self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        value = self._number(name, default, int, "a whole number")
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name} must be at most {maximum}, got {value}")
        return value

    def get_float(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        value = self._number(name, default, float, "a number")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value:g}")
        return value

    def get_duration(self, name: str, default: timedelta | None) -> timedelta | None:
        """A duration (`30s`, `45m`, `2h`, `1h30m`; see parse_duration), `default` when unset; None for `0` or `off`."""
        raw = self.get_optional(name)
        if raw is None:
            return default
        try:
            duration = parse_duration(raw)
        except ValueError as error:
            raise ConfigError(f"{name}: {error}") from None
        return duration or None

    def get_list(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A comma- or whitespace-separated list."""
        raw = self._environ.get(name, "")
        items = tuple(item for item in raw.replace(",", " ").split() if item)
        return items or default


_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_NO_DURATION = frozenset({"0", "off", "none"})


def parse_duration(text: str) -> timedelta:
    """`30s`, `45m`, `2h` or `1h30m` (hours, minutes, seconds, as Replicate writes `Cancel-After`) as a
    timedelta; `0`, `off` or `none` as a zero one, which means no deadline. ValueError for anything else."""
    value = text.strip().lower()
    if value in _NO_DURATION:
        return timedelta(0)
    match = _DURATION.fullmatch(value)
    if not value or match is None:
        raise ValueError(f"a duration looks like 30s, 45m, 2h or 1h30m (0 or off: none), got {text!r}")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


# Replicate times a prediction out after 30 minutes: a shorter default would cancel work a slow model
# would still finish, a longer one would wait past the point where the prediction can only have failed.
# Apps whose predictions take seconds (a photo restore) give a shorter deadline per submit or here.
DEFAULT_DEADLINE = timedelta(minutes=30)
# Trainings run for hours: one that has not ended within a day is taken to be stuck.
DEFAULT_TRAINING_DEADLINE = timedelta(hours=24)


def default_deadline(env: Env) -> timedelta | None:
    """RELAY_DEFAULT_DEADLINE: the deadline of a prediction submitted (or adopted) without one; None: none."""
    return env.get_duration("RELAY_DEFAULT_DEADLINE", DEFAULT_DEADLINE)


def default_training_deadline(env: Env) -> timedelta | None:
    """RELAY_DEFAULT_TRAINING_DEADLINE: the deadline of a training submitted without one; None: none."""
    return env.get_duration("RELAY_DEFAULT_TRAINING_DEADLINE", DEFAULT_TRAINING_DEADLINE)


def on_cloud_run(env: Env) -> bool:
    """Whether this process runs on Cloud Run, which sets K_REVISION and K_CONFIGURATION in every container."""
    return bool(env.get_optional("K_REVISION") and env.get_optional("K_CONFIGURATION"))


def token_check_mode(env: Env, name: str, *, off_is_for: str, checks: str) -> Literal["oidc", "off"]:
    """The mode of a Google-token check read from `name`: `oidc` (the default) or `off`, which only a
    local stack may ask for: on Cloud Run it stops the process, naming what would go unchecked."""
    mode = env.get_str(name, "oidc").lower()
    if mode == "off":
        if on_cloud_run(env):
            raise ConfigError(
                f"{name}=off is for {off_is_for} only, never on Cloud Run (K_REVISION and K_CONFIGURATION "
                f"are set): remove it so {checks} verified"
            )
        return "off"
    if mode != "oidc":
        raise ConfigError(f"{name} must be one of oidc, off, got {mode!r}")
    return "oidc"


def project_id(env: Env) -> str:
    """The Google Cloud project: RELAY_PROJECT, else the variables Google's tools set."""
    for name in ("RELAY_PROJECT", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT"):
        value = env.get_optional(name)
        if value:
            return value
    raise ConfigError("RELAY_PROJECT (or GOOGLE_CLOUD_PROJECT) is required but not set")


def topic_path(project: str, topic: str) -> str:
    """The full name of a Pub/Sub topic, as the clients take it."""
    return f"projects/{project}/topics/{topic}"


def bucket_name(env: Env, project: str) -> str:
    """The archive bucket (outputs, and values too large for a job document): RELAY_BUCKET, else Terraform's name."""
    return env.get_str("RELAY_BUCKET", f"{project}-relay-outputs")


def inline_value_bytes(env: Env) -> int:
    """RELAY_INLINE_VALUE_BYTES: how much of a prediction's JSON a job document keeps inline (see values.py)."""
    return env.get_int("RELAY_INLINE_VALUE_BYTES", DEFAULT_INLINE_BYTES, minimum=1024, maximum=512 * 1024)


def job_events_topic(env: Env) -> str:
    """RELAY_JOB_EVENTS_TOPIC: the topic final jobs are announced on, by the handlers and by the submitter
    (`relay submit`, RelayClient.from_env) of a job whose prediction Replicate refused."""
    return env.get_str("RELAY_JOB_EVENTS_TOPIC", "job-events")


def load_or_exit(load: Callable[[], T], service: str) -> T:
    """Build a deployable's settings at start; a ConfigError stops the process with one log line."""
    try:
        return load()
    except ConfigError as error:
        logs.configure(service)
        logging.getLogger(f"relay.{service}").critical("%s cannot start: %s", service, error)
        sys.exit(2)
