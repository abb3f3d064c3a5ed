"""The handlers' configuration, read once from the environment at start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from relay.config import Env, project_id
from relay.jobs import Policy


@dataclass(frozen=True)
class HandlerSettings:
    project: str
    policy: Policy
    event_retention: timedelta
    log_level: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> HandlerSettings:
        env = Env(environ)
        return cls(
            project=project_id(env),
            policy=Policy(
                coalesce_window=timedelta(seconds=env.get_float("RELAY_COALESCE_SECONDS", 1.0)),
                logs_tail_chars=env.get_int("RELAY_LOGS_TAIL_CHARS", 4000),
                input_value_max_chars=env.get_int("RELAY_INPUT_VALUE_MAX_CHARS", 1000, minimum=16),
                output_value_max_bytes=env.get_int("RELAY_OUTPUT_VALUE_MAX_BYTES", 16 * 1024),
            ),
            event_retention=timedelta(days=env.get_int("RELAY_EVENT_RETENTION_DAYS", 30, minimum=1)),
            log_level=env.get_str("RELAY_LOG_LEVEL", "INFO").upper(),
        )
