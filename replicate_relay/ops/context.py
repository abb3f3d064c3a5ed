"""What every operator command needs: settings from the environment and short-deadline clients."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core import retry as retries
from google.cloud import firestore
from google.cloud.pubsub_v1.types import BatchSettings, PublisherOptions

from replicate_relay.config import Env, bucket_name, project_id
from replicate_relay.ops.errors import google_errors
from replicate_relay.values import ValueStore

DEFAULT_TIMEOUT = 10.0
PUBSUB = ("Pub/Sub", "PUBSUB_EMULATOR_HOST")
FIRESTORE = ("Firestore", "FIRESTORE_EMULATOR_HOST")


@dataclass(frozen=True)
class OpsSettings:
    project: str
    events_topic: str
    quiet: timedelta  # an open job not written for this long is stuck (the reconciler's threshold)
    timeout: float  # per Google API call, retries included: an unreachable emulator fails fast
    bucket: str  # where values too large for a job document are kept

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, timeout: float = DEFAULT_TIMEOUT) -> OpsSettings:
        env = Env(environ)
        return cls(
            project=project_id(env),
            events_topic=env.get_str("RELAY_EVENTS_TOPIC", "replicate-events"),
            quiet=timedelta(seconds=env.get_int("RELAY_RECONCILE_QUIET_SECONDS", 600, minimum=1)),
            timeout=timeout,
            bucket=bucket_name(env, project_id(env)),
        )

    @property
    def on_emulators(self) -> bool:
        return bool(os.environ.get("PUBSUB_EMULATOR_HOST", "").strip())

    def rpc(self) -> dict[str, Any]:
        """`retry` and `timeout` keyword arguments for one Google API call, bounded by `timeout`."""
        return rpc_options(self.timeout)

    def pubsub_errors(self) -> AbstractContextManager[None]:
        return google_errors(*PUBSUB, timeout=self.timeout)

    def firestore_errors(self) -> AbstractContextManager[None]:
        return google_errors(*FIRESTORE, timeout=self.timeout)


def rpc_options(timeout: float) -> dict[str, Any]:
    retry = retries.Retry(
        predicate=retries.if_transient_error, initial=0.1, maximum=1.0, multiplier=2.0, timeout=timeout
    )
    return {"retry": retry, "timeout": timeout}


def subscriber_client(settings: OpsSettings) -> pubsub_v1.SubscriberClient:
    with settings.pubsub_errors():
        return pubsub_v1.SubscriberClient()


def publisher_client(settings: OpsSettings) -> pubsub_v1.PublisherClient:
    """A publisher whose retries stop at the settings' timeout (the library's default is 60 s)."""
    retry = retries.Retry(initial=0.05, maximum=1.0, multiplier=2.0, timeout=settings.timeout)
    with settings.pubsub_errors():
        return pubsub_v1.PublisherClient(
            batch_settings=BatchSettings(max_latency=0.005),
            publisher_options=PublisherOptions(retry=retry, timeout=settings.timeout),
        )


def storage_bucket(settings: OpsSettings) -> Any:
    """The archive bucket (a google.cloud.storage Bucket), for the commands that read or write it."""
    import google.cloud.storage as storage  # noqa: PLC0415 - only the commands that use the bucket need it

    return storage.Client(project=settings.project).bucket(settings.bucket)


def value_store(settings: OpsSettings) -> ValueStore:
    """The bucket's values too large for a job document, read back for `relay jobs show`."""
    return ValueStore(storage_bucket(settings))


def firestore_client(settings: OpsSettings) -> firestore.Client:
    with settings.firestore_errors():
        return firestore.Client(project=settings.project)
