"""The handlers' configuration, read once from the environment at start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from handlers.reconcile import ReconcileSettings
from replicate_relay.archive import DEFAULT_WEIGHTS_MAX_BYTES
from replicate_relay.config import (
    ConfigError,
    Env,
    Secret,
    bucket_name,
    inline_value_bytes,
    job_events_topic,
    project_id,
    token_check_mode,
    topic_path,
)
from replicate_relay.downloads import DownloadPolicy
from replicate_relay.jobs import Policy
from replicate_relay.replicate_api import DEFAULT_BASE_URL
from replicate_relay.telemetry import TelemetrySettings

_GCS_CHUNK_UNIT = 256 * 1024  # resumable upload chunks must be multiples of 256 KiB
# The service name each function target reports its telemetry under, unless K_SERVICE or
# OTEL_SERVICE_NAME says otherwise.
_SERVICES = {"job_status": "job-status", "archive_outputs": "archive-outputs", "reconcile": "reconciler"}
# The targets Pub/Sub pushes to. The reconciler is not one: Cloud Scheduler calls it, and it checks
# Scheduler's token (ReconcilerSettings.caller).
_PUSH_TARGETS = frozenset({"job_status", "archive_outputs"})


@dataclass(frozen=True)
class PushAuthSettings:
    """How a request proves its caller (handlers/auth.py): Pub/Sub's token on a push handler,
    Cloud Scheduler's on the reconciler."""

    mode: Literal["oidc", "off"]
    service_account: str | None  # the e-mail the caller's token must carry; set whenever mode is oidc
    audience: str | None  # None: `https://<Host header>`, the service's own Cloud Run URL

    @classmethod
    def from_env(cls, env: Env) -> PushAuthSettings:
        return cls._read(
            env,
            account="RELAY_PUSH_SERVICE_ACCOUNT",
            audience="RELAY_PUSH_AUDIENCE",
            off_is_for="the local Pub/Sub emulator",
            checks="Pub/Sub's OIDC token is",
            caller="the service account Pub/Sub signs push requests as",
        )

    @classmethod
    def for_reconciler(cls, env: Env) -> PushAuthSettings:
        """Cloud Scheduler's token on the reconciler. The same switch, RELAY_PUSH_AUTH, turns it off:
        the local stack's scheduler posts without a token, as its Pub/Sub emulator pushes."""
        return cls._read(
            env,
            account="RELAY_RECONCILE_INVOKER",
            audience="RELAY_RECONCILE_AUDIENCE",
            off_is_for="the local stack (its scheduler sends no token)",
            checks="Cloud Scheduler's OIDC token is",
            caller="the service account Cloud Scheduler calls the reconciler as (relay-scheduler)",
        )

    @classmethod
    def _read(
        cls, env: Env, *, account: str, audience: str, off_is_for: str, checks: str, caller: str
    ) -> PushAuthSettings:
        mode = token_check_mode(env, "RELAY_PUSH_AUTH", off_is_for=off_is_for, checks=checks)
        if mode == "off":
            return cls(mode="off", service_account=None, audience=None)
        service_account = env.get_optional(account)
        if service_account is None:
            raise ConfigError(f"{account} is required when RELAY_PUSH_AUTH=oidc (the default): the e-mail of {caller}")
        if "@" not in service_account:
            raise ConfigError(f"{account} must be a service account e-mail, got {service_account!r}")
        return cls(mode="oidc", service_account=service_account, audience=env.get_optional(audience))


@dataclass(frozen=True)
class ReconcilerSettings:
    replicate_token: Secret
    replicate_base_url: str
    run: ReconcileSettings
    caller: PushAuthSettings  # Cloud Scheduler's OIDC token, checked on each call

    @classmethod
    def from_env(cls, env: Env) -> ReconcilerSettings:
        return cls(
            replicate_token=Secret(env.get_str("REPLICATE_API_TOKEN")),
            replicate_base_url=env.get_str("RELAY_REPLICATE_BASE_URL", DEFAULT_BASE_URL),
            run=ReconcileSettings(
                quiet_after=timedelta(seconds=env.get_float("RELAY_RECONCILE_QUIET_SECONDS", 600.0, minimum=1.0)),
                submitted_after=timedelta(
                    seconds=env.get_float("RELAY_RECONCILE_SUBMITTED_SECONDS", 300.0, minimum=1.0)
                ),
                adopted_after=timedelta(seconds=env.get_float("RELAY_RECONCILE_ADOPTED_SECONDS", 60.0, minimum=1.0)),
                max_jobs=env.get_int("RELAY_RECONCILE_MAX_JOBS", 500, minimum=1, maximum=10_000),
                concurrency=env.get_int("RELAY_RECONCILE_CONCURRENCY", 4, minimum=1, maximum=64),
                requests_per_second=env.get_float("RELAY_RECONCILE_REQUESTS_PER_SECOND", 5.0, minimum=0.1),
                cancel_tries=env.get_int("RELAY_RECONCILE_CANCEL_TRIES", 3, minimum=1, maximum=20),
            ),
            caller=PushAuthSettings.for_reconciler(env),
        )


@dataclass(frozen=True)
class HandlerSettings:
    project: str
    policy: Policy
    event_retention: timedelta
    bucket: str
    job_events_topic: str
    publish_deadline_seconds: float
    downloads: DownloadPolicy
    upload_chunk_bytes: int
    weights_max_bytes: int
    events_topic: str
    reconciler: ReconcilerSettings | None  # read only where the reconcile target runs
    push: PushAuthSettings | None  # read only where a push target (job_status, archive_outputs) runs
    log_level: str
    telemetry: TelemetrySettings

    def topic_path(self, topic: str) -> str:
        return topic_path(self.project, topic)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> HandlerSettings:
        env = Env(environ)
        project = project_id(env)
        target = env.get_optional("FUNCTION_TARGET") or ""
        chunk = env.get_int("RELAY_UPLOAD_CHUNK_BYTES", 8 * 1024 * 1024, minimum=_GCS_CHUNK_UNIT)
        if chunk % _GCS_CHUNK_UNIT:
            raise ConfigError("RELAY_UPLOAD_CHUNK_BYTES must be a multiple of 262144 (256 KiB)")
        return cls(
            project=project,
            policy=Policy(
                coalesce_window=timedelta(seconds=env.get_float("RELAY_COALESCE_SECONDS", 1.0)),
                logs_tail_chars=env.get_int("RELAY_LOGS_TAIL_CHARS", 4000),
                inline_value_bytes=inline_value_bytes(env),
            ),
            event_retention=timedelta(days=env.get_int("RELAY_EVENT_RETENTION_DAYS", 30, minimum=1, maximum=3650)),
            bucket=bucket_name(env, project),
            job_events_topic=job_events_topic(env),
            publish_deadline_seconds=env.get_float("RELAY_PUBLISH_DEADLINE_SECONDS", 10.0, minimum=0.1),
            downloads=DownloadPolicy(
                allowed_hosts=env.get_list("RELAY_DOWNLOAD_ALLOWED_HOSTS", ("replicate.delivery",)),
                local_hosts=env.get_list("RELAY_DOWNLOAD_LOCAL_HOSTS"),
                max_bytes=env.get_int("RELAY_DOWNLOAD_MAX_BYTES", 4 * 1024**3, minimum=1),
                max_data_uri_bytes=env.get_int("RELAY_DATA_URI_MAX_BYTES", 8 * 1024 * 1024, minimum=1),
                max_redirects=env.get_int("RELAY_DOWNLOAD_MAX_REDIRECTS", 3),
                connect_timeout=env.get_float("RELAY_DOWNLOAD_CONNECT_TIMEOUT_SECONDS", 10.0, minimum=0.1),
                read_timeout=env.get_float("RELAY_DOWNLOAD_READ_TIMEOUT_SECONDS", 60.0, minimum=0.1),
            ),
            upload_chunk_bytes=chunk,
            weights_max_bytes=env.get_int("RELAY_WEIGHTS_MAX_BYTES", DEFAULT_WEIGHTS_MAX_BYTES, minimum=1),
            events_topic=env.get_str("RELAY_EVENTS_TOPIC", "replicate-events"),
            reconciler=ReconcilerSettings.from_env(env) if target == "reconcile" else None,
            push=PushAuthSettings.from_env(env) if target in _PUSH_TARGETS else None,
            log_level=env.get_str("RELAY_LOG_LEVEL", "INFO").upper(),
            telemetry=TelemetrySettings.from_env(
                environ, service=env.get_str("K_SERVICE", _SERVICES.get(target, "handlers")), project=project
            ),
        )
