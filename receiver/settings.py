"""The receiver's configuration, read once from the environment at start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from replicate_relay.bodies import DEFAULT_INLINE_BODY_BYTES
from replicate_relay.config import ConfigError, Env, Secret, bucket_name, project_id, topic_path
from replicate_relay.telemetry import TelemetrySettings
from replicate_relay.webhooks import DEFAULT_TOLERANCE_SECONDS, SigningKey, parse_secrets

# Pub/Sub takes messages of up to 10 MB; stay well under it, with room for attributes.
DEFAULT_MAX_BODY_BYTES = DEFAULT_INLINE_BODY_BYTES
# Larger bodies (a training's final webhook carries hours of logs) are stored in the bucket and
# published as a pointer (replicate_relay/bodies.py), up to this size. Read only once its headers
# have passed, one at a time per process, its signature computed as it arrives: with JSON parsing
# that is about 4 times the body in memory at the peak (128 MiB of the receiver's 512 MiB). Past
# it: 413, and the reconciler reads the final state from Replicate's API instead (ARCHITECTURE.md).
DEFAULT_MAX_STORED_BODY_BYTES = 32 * 1024 * 1024
# Requests one address may have in flight unverified (receiver/limiter.py). Replicate sends from a
# few egress addresses, so all of its traffic to an instance can come from one, and it retries only
# the final webhook: a 429 loses an intermediate one. A request stops counting once its signature
# checks out, and Replicate's bodies are mostly a few kB read in one piece, so its count stays near
# zero; 32 leaves a wide margin while keeping one address from more than 40% of an instance's 80
# requests (Cloud Run's concurrency) and from 128 MiB of 4 MiB bodies read at once.
DEFAULT_MAX_IN_FLIGHT_PER_CLIENT = 32
SECRETS_VARIABLE = "RELAY_WEBHOOK_SECRETS"
# The polling worker's name for the signing secret, accepted so its environment can be reused (docs/MIGRATION.md).
LEGACY_SECRET_VARIABLE = "REPLICATE_WEBHOOK_SECRET"  # noqa: S105 - a variable's name, not a secret


@dataclass(frozen=True)
class ReceiverSettings:
    project: str
    events_topic: str
    signing_keys: tuple[SigningKey, ...]
    tolerance_seconds: int
    max_body_bytes: int  # published in the message
    max_stored_body_bytes: int  # up to this, stored in the bucket and published as a pointer; 0: none
    bucket: str
    publish_deadline_seconds: float
    failure_burst: int
    failure_per_second: float
    failure_max_clients: int
    max_in_flight_per_client: int
    trusted_proxy_hops: int
    log_level: str
    telemetry: TelemetrySettings

    @property
    def topic_path(self) -> str:
        return topic_path(self.project, self.events_topic)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ReceiverSettings:
        env = Env(environ)
        keys = _signing_keys(env)
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
            max_stored_body_bytes=_max_stored_body(env, max_body),
            bucket=bucket_name(env, project),
            publish_deadline_seconds=env.get_float("RELAY_PUBLISH_DEADLINE_SECONDS", 5.0, minimum=0.1),
            failure_burst=env.get_int("RELAY_FAILURE_BURST", 20, minimum=1),
            failure_per_second=env.get_float("RELAY_FAILURE_PER_SECOND", 1.0, minimum=0.0),
            failure_max_clients=env.get_int("RELAY_FAILURE_MAX_CLIENTS", 10_000, minimum=1),
            max_in_flight_per_client=env.get_int(
                "RELAY_MAX_IN_FLIGHT_PER_CLIENT", DEFAULT_MAX_IN_FLIGHT_PER_CLIENT, minimum=1
            ),
            trusted_proxy_hops=env.get_int("RELAY_TRUSTED_PROXY_HOPS", 0),
            log_level=env.get_str("RELAY_LOG_LEVEL", "INFO").upper(),
            telemetry=TelemetrySettings.from_env(environ, service="receiver", project=project),
        )


def _max_stored_body(env: Env, max_body: int) -> int:
    """RELAY_MAX_STORED_BODY_BYTES: 0 turns storing off (a body past RELAY_MAX_BODY_BYTES is then 413)."""
    stored = env.get_int("RELAY_MAX_STORED_BODY_BYTES", DEFAULT_MAX_STORED_BODY_BYTES, minimum=0, maximum=256 * 1024**2)
    if stored and stored <= max_body:
        raise ConfigError(
            f"RELAY_MAX_STORED_BODY_BYTES ({stored}) must be 0 or more than RELAY_MAX_BODY_BYTES ({max_body})"
        )
    return stored


def _signing_keys(env: Env) -> tuple[SigningKey, ...]:
    """RELAY_WEBHOOK_SECRETS, or the old worker's REPLICATE_WEBHOOK_SECRET; both only if they agree."""
    found = {
        name: _parse_keys(name, secrets)
        for name in (SECRETS_VARIABLE, LEGACY_SECRET_VARIABLE)
        if (secrets := env.get_list(name))
    }
    if not found:
        raise ConfigError(f"{SECRETS_VARIABLE} (or {LEGACY_SECRET_VARIABLE}) is required but not set")
    if len(found) == 2 and set(found[SECRETS_VARIABLE]) != set(found[LEGACY_SECRET_VARIABLE]):
        # Which one is meant cannot be guessed, and a wrong guess rejects every webhook.
        raise ConfigError(
            f"{SECRETS_VARIABLE} and {LEGACY_SECRET_VARIABLE} are both set and hold different secrets: "
            f"keep one (put every secret to accept in {SECRETS_VARIABLE})"
        )
    return found.get(SECRETS_VARIABLE) or found[LEGACY_SECRET_VARIABLE]


def _parse_keys(name: str, secrets: tuple[str, ...]) -> tuple[SigningKey, ...]:
    try:
        return parse_secrets(Secret(value) for value in secrets)
    except ConfigError as error:
        raise ConfigError(f"{name}: {error}") from None
