"""The API's configuration, read once from the environment at start."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from replicate_relay.config import ConfigError, Env, bucket_name, inline_value_bytes, project_id, token_check_mode
from replicate_relay.jobs import Policy
from replicate_relay.submit import SubmitSettings
from replicate_relay.telemetry import TelemetrySettings

# Replicate takes JSON inputs of a few MB at most and recommends URLs over data: URIs above 256 KB;
# 1 MiB keeps one request's work (and its idempotency record) small.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
_MAX_BODY_CAP = 10 * 1024 * 1024
_EMAIL = re.compile(r"^[^@\s:]+@[^@\s:]+$")  # an e-mail, not an IAM member (serviceAccount:...)


@dataclass(frozen=True)
class ApiAuthSettings:
    """How a caller proves who it is (api/auth.py): a Google ID token, checked in code."""

    mode: Literal["oidc", "off"]
    invokers: tuple[str, ...]  # the e-mails a token may carry; empty: nobody passes
    # RELAY_API_OPERATORS: callers who read every app's jobs (their tokens pass too); with auth off,
    # the X-Relay-Dev-Caller values that do.
    operators: tuple[str, ...]
    audience: str | None  # None: `https://<Host header>`, the service's own Cloud Run URL

    @classmethod
    def from_env(cls, env: Env) -> ApiAuthSettings:
        mode = token_check_mode(env, "RELAY_API_AUTH", off_is_for="the local stack", checks="callers' ID tokens are")
        operators = _emails(env, "RELAY_API_OPERATORS")
        if mode == "off":
            return cls(mode="off", invokers=(), operators=operators, audience=None)
        invokers = _emails(env, "RELAY_API_INVOKERS")
        audience = env.get_optional("RELAY_API_AUDIENCE")
        if audience is not None and not audience.startswith("https://"):
            raise ConfigError(f"RELAY_API_AUDIENCE must be the service's https:// URL, got {audience!r}")
        return cls(mode="oidc", invokers=invokers, operators=operators, audience=audience)


@dataclass(frozen=True)
class ApiSettings:
    project: str
    submit: SubmitSettings
    auth: ApiAuthSettings
    policy: Policy
    bucket: str  # values too large for a job document are kept there
    max_body_bytes: int
    idempotency_retention: timedelta  # how long a key's answer is replayed
    idempotency_lease: timedelta  # how long a request holds its key before another may take over
    log_level: str
    telemetry: TelemetrySettings

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ApiSettings:
        env = Env(environ)
        project = project_id(env)
        max_body = env.get_int("RELAY_API_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1024)
        if max_body > _MAX_BODY_CAP:
            raise ConfigError(f"RELAY_API_MAX_BODY_BYTES must be at most {_MAX_BODY_CAP}")
        return cls(
            project=project,
            submit=SubmitSettings.from_env(environ),
            auth=ApiAuthSettings.from_env(env),
            policy=Policy(inline_value_bytes=inline_value_bytes(env)),
            bucket=bucket_name(env, project),
            max_body_bytes=max_body,
            idempotency_retention=timedelta(
                hours=env.get_int("RELAY_API_IDEMPOTENCY_HOURS", 24, minimum=1, maximum=24 * 30)
            ),
            idempotency_lease=timedelta(
                seconds=env.get_int("RELAY_API_IDEMPOTENCY_LEASE_SECONDS", 60, minimum=5, maximum=3600)
            ),
            log_level=env.get_str("RELAY_LOG_LEVEL", "INFO").upper(),
            telemetry=TelemetrySettings.from_env(environ, service=env.get_str("K_SERVICE", "api"), project=project),
        )


def _emails(env: Env, name: str) -> tuple[str, ...]:
    found = env.get_list(name)
    wrong = [entry for entry in found if not _EMAIL.match(entry)]
    if wrong:
        raise ConfigError(f"{name} holds e-mails (space- or comma-separated), got {', '.join(map(repr, wrong))}")
    return found
