"""The receiver's configuration, read once from the environment at start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from relay.config import ConfigError, Env, Secret, project_id
from relay.telemetry import TelemetrySettings
from relay.webhooks import DEFAULT_TOLERANCE_SECONDS, SigningKey, parse_secrets

# Pub/Sub takes messages of up to 10 MB; stay well under it, with room for attributes.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ReceiverSettings:
    project: str
    events_topic: str
    signing_keys: tuple[SigningKey, ...]
    tolerance_seconds: int
    max_body_bytes: int
    publish_deadline_seconds: float
    failure_burst: int
    failure_per_second: float
    failure_max_clients: int
    trusted_proxy_hops: int
    log_level: str
    telemetry: TelemetrySettings

    @property
    def topic_path(self) -> str:
        return f"projects/{self.project}/topics/{self.events_topic}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ReceiverSettings:
        env = Env(environ)
        secrets = env.get_list("RELAY_WEBHOOK_SECRETS")
        if not secrets:
            raise ConfigError("RELAY_WEBHOOK_SECRETS is required but not set")
        try:
            keys = parse_secrets(Secret(value) for value in secrets)
        except ConfigError as error:
            raise ConfigError(f"RELAY_WEBHOOK_SECRETS: {error}") from None
        max_body = env.get_int("RELAY_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1024)
        if max_body > 9_000_000:
            raise ConfigError("RELAY_MAX_BODY_BYTES must be at most 9000000 (Pub/Sub's limit is 10 MB)")
        project = project_id(env)
        return cls(
            project=project,
            events_topic=env.get_str("RELAY_EVENTS_TOPIC", "replicate-events"),
            signing_keys=keys,
            tolerance_seconds=env.get_int("RELAY_WEBHOOK_TOLERANCE_SECONDS", DEFAULT_TOLERANCE_SECONDS, minimum=1),
            max_body_bytes=max_body,
            publish_deadline_seconds=env.get_float("RELAY_PUBLISH_DEADLINE_SECONDS", 5.0, minimum=0.1),
            failure_burst=env.get_int("RELAY_FAILURE_BURST", 20, minimum=1),
            failure_per_second=env.get_float("RELAY_FAILURE_PER_SECOND", 1.0, minimum=0.0),
            failure_max_clients=env.get_int("RELAY_FAILURE_MAX_CLIENTS", 10_000, minimum=1),
            trusted_proxy_hops=env.get_int("RELAY_TRUSTED_PROXY_HOPS", 0),
            log_level=env.get_str("RELAY_LOG_LEVEL", "INFO").upper(),
            telemetry=TelemetrySettings.from_env(environ, service="receiver", project=project),
        )
