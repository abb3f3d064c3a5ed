"""The topology in infra/topology.yaml: loading it, and provisioning it idempotently."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import google.cloud.pubsub_v1 as pubsub_v1
import google.cloud.storage as storage
import yaml
from google.api_core import exceptions as google_exceptions
from google.protobuf import duration_pb2, field_mask_pb2
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relay.config import ConfigError

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "infra" / "topology.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Strict):
    minimum_backoff_seconds: int = Field(ge=0, le=600)
    maximum_backoff_seconds: int = Field(ge=0, le=600)


class DeadLetter(_Strict):
    topic: str
    subscription: str
    max_delivery_attempts: int = Field(ge=5, le=100)  # Pub/Sub's own bounds


class Subscription(_Strict):
    name: str = Field(min_length=3)
    topic: str
    push_handler: str
    ack_deadline_seconds: int = Field(ge=10, le=600)
    retry_policy: RetryPolicy
    dead_letter: DeadLetter
    filter: str | None = None


class Bucket(_Strict):
    name_suffix: str

    def name(self, project: str) -> str:
        return f"{project}-{self.name_suffix}"


class Topology(_Strict):
    topics: list[str]
    subscriptions: list[Subscription]
    bucket: Bucket

    @property
    def push_handlers(self) -> list[str]:
        return [subscription.push_handler for subscription in self.subscriptions]


def load(path: Path = DEFAULT_PATH) -> Topology:
    """Read and check the topology file; ConfigError names what is wrong."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Topology.model_validate(document)
    except OSError as error:
        raise ConfigError(f"cannot read topology {path}: {error.strerror}") from None
    except (yaml.YAMLError, ValidationError) as error:
        raise ConfigError(f"topology {path} is invalid: {error}") from None


def provision(
    topology: Topology,
    project: str,
    *,
    push_endpoints: Mapping[str, str],
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    storage_client: storage.Client,
) -> list[str]:
    """Create what is missing and point push subscriptions at `push_endpoints` (handler → URL).

    Safe to run again: existing resources are kept, and push endpoints updated. Returns one
    line per resource for the caller to print.
    """
    done: list[str] = []
    dead_letter_topics = [subscription.dead_letter.topic for subscription in topology.subscriptions]
    for topic in [*topology.topics, *dead_letter_topics]:
        done.append(_ensure_topic(publisher, publisher.topic_path(project, topic)))
    for subscription in topology.subscriptions:
        dead_letter = subscription.dead_letter
        done.append(
            _ensure_subscription(
                subscriber,
                {
                    "name": subscriber.subscription_path(project, dead_letter.subscription),
                    "topic": publisher.topic_path(project, dead_letter.topic),
                    "ack_deadline_seconds": 60,
                },
            )
        )
        endpoint = push_endpoints.get(subscription.push_handler)
        if endpoint is None:
            done.append(f"skipped subscription {subscription.name}: no endpoint for {subscription.push_handler}")
            continue
        request = {
            "name": subscriber.subscription_path(project, subscription.name),
            "topic": publisher.topic_path(project, subscription.topic),
            "push_config": {"push_endpoint": endpoint},
            "ack_deadline_seconds": subscription.ack_deadline_seconds,
            "retry_policy": {
                "minimum_backoff": duration_pb2.Duration(seconds=subscription.retry_policy.minimum_backoff_seconds),
                "maximum_backoff": duration_pb2.Duration(seconds=subscription.retry_policy.maximum_backoff_seconds),
            },
            "dead_letter_policy": {
                "dead_letter_topic": publisher.topic_path(project, dead_letter.topic),
                "max_delivery_attempts": dead_letter.max_delivery_attempts,
            },
        }
        if subscription.filter:
            request["filter"] = subscription.filter
        done.append(_ensure_subscription(subscriber, request, push_endpoint=endpoint))
    done.append(_ensure_bucket(storage_client, topology.bucket.name(project)))
    return done


def _ensure_topic(publisher: pubsub_v1.PublisherClient, path: str) -> str:
    try:
        publisher.create_topic(request={"name": path})
        return f"created topic {path}"
    except google_exceptions.AlreadyExists:
        return f"kept topic {path}"


def _ensure_subscription(
    subscriber: pubsub_v1.SubscriberClient, request: dict[str, object], *, push_endpoint: str | None = None
) -> str:
    path = str(request["name"])
    try:
        subscriber.create_subscription(request=request)
        return f"created subscription {path}" + (f" → {push_endpoint}" if push_endpoint else "")
    except google_exceptions.AlreadyExists:
        if push_endpoint is None:
            return f"kept subscription {path}"
    subscriber.update_subscription(
        request={
            "subscription": {"name": path, "push_config": {"push_endpoint": push_endpoint}},
            "update_mask": field_mask_pb2.FieldMask(paths=["push_config"]),
        }
    )
    return f"kept subscription {path}, push endpoint now {push_endpoint}"


def _ensure_bucket(storage_client: storage.Client, name: str) -> str:
    try:
        storage_client.create_bucket(name)
        return f"created bucket gs://{name}"
    except google_exceptions.Conflict:
        return f"kept bucket gs://{name}"
