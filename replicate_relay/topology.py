"""The topology in infra/topology.yaml: loading it, and provisioning it idempotently."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import google.cloud.pubsub_v1 as pubsub_v1
import google.cloud.storage as storage
import yaml
from google.api_core import exceptions as google_exceptions
from google.protobuf import duration_pb2, field_mask_pb2
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from replicate_relay.config import ConfigError

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

    @property
    def job_events_topic(self) -> str:
        """The topic no push handler reads (job-events): found as infra/terraform/main.tf finds it."""
        read = {subscription.topic for subscription in self.subscriptions}
        [topic] = [topic for topic in self.topics if topic not in read]
        return topic


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


# What infra/terraform/apps.tf gives every app subscription on job-events, pulled or pushed
# (tests/unit/test_infra.py keeps the two equal), so a local app sees production's redeliveries.
APP_MINIMUM_BACKOFF_SECONDS = 10
APP_MAXIMUM_BACKOFF_SECONDS = 600
APP_MAX_DELIVERY_ATTEMPTS = 10  # var.app_subscription_max_delivery_attempts' default
APP_ACK_DEADLINE_SECONDS = 60
# var.app_event_endpoints' name rule: Pub/Sub's, leaving room for "-dead-letter".
_APP_NAME = re.compile(r"[a-zA-Z][-a-zA-Z0-9_.~+%]{2,241}")
# var.app_subscription_apps' value rule: an e-mail, with nothing that could end the filter's string.
_APP_EMAIL = re.compile(r'[^"\\\s@:]+@[^"\\\s@:]+')


def app_filter(app: str) -> str:
    """The filter of an app's subscription on job-events: only the jobs that `app` submitted
    (the `app` attribute, replicate_relay/jobevents.py). infra/terraform/apps.tf writes the same."""
    if not _APP_EMAIL.fullmatch(app):
        raise ConfigError(f"app {app!r}: an e-mail, as the API sees the caller (no serviceAccount: prefix)")
    return f'attributes.app = "{app}"'


@dataclass(frozen=True)
class AppEndpoint:
    """An app's URL that job-events are pushed to, through a subscription called `name`; with `app`,
    only the events of that app's jobs (the subscription's filter, `app_filter`)."""

    name: str
    url: str
    app: str | None = None

    @property
    def filter(self) -> str | None:
        return app_filter(self.app) if self.app else None

    @property
    def dead_letter(self) -> str:
        """The dead-letter topic and pull subscription, named as Terraform names them."""
        return f"{self.name}-dead-letter"


def app_endpoint(name: str, url: str, *, app: str | None = None) -> AppEndpoint:
    """Check an app push endpoint as Terraform's variable does, except that plain http is allowed
    to a loopback host: the local stack's apps run on this machine and the emulator sends no token
    to protect. ConfigError says what is wrong."""
    if not _APP_NAME.fullmatch(name) or name.lower().startswith("goog"):
        raise ConfigError(
            f"app endpoint name {name!r}: start with a letter, use 3 to 242 of letters, digits and"
            " - _ . ~ + %, and do not start with goog"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as error:
        raise ConfigError(f"app endpoint {name}: {url!r} is not a URL: {error}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"app endpoint {name}: {url!r} is not an http(s)://host/... URL")
    if parts.username is not None or parts.fragment or "#" in url:
        raise ConfigError(f"app endpoint {name}: {url!r} has user info or a #fragment; neither is allowed")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigError(f"app endpoint {name}: {url!r} is plain http to a host that is not loopback; use https")
    if app is not None:
        app_filter(app)  # refuses what is not an e-mail
    return AppEndpoint(name=name, url=url, app=app)


def parse_app_endpoint(text: str) -> AppEndpoint:
    """`NAME=URL`, or `NAME=URL@@APP` for the subscription of one app (its e-mail), as
    `relay dev --app-endpoint` takes it."""
    name, separator, rest = text.partition("=")
    if not separator:
        raise ConfigError(f"app endpoint {text!r} is not NAME=URL")
    url, _, app = rest.partition("@@")
    return app_endpoint(name.strip(), url.strip(), app=app.strip() or None)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def provision_app_endpoint(
    topology: Topology,
    project: str,
    endpoint: AppEndpoint,
    *,
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    minimum_backoff_seconds: int = APP_MINIMUM_BACKOFF_SECONDS,
    maximum_backoff_seconds: int = APP_MAXIMUM_BACKOFF_SECONDS,
    max_delivery_attempts: int = APP_MAX_DELIVERY_ATTEMPTS,
    push_to: str | None = None,
) -> list[str]:
    """A push subscription on job-events to `endpoint.url`, as Terraform makes one for an entry of
    app_event_endpoints, less the OIDC token (the emulator signs none): the retry backoff, the
    filter of `endpoint.app` (app_subscription_apps) and a dead-letter topic with its pull
    subscription. `push_to` replaces the URL pushed to (the local stack's filter stand-in,
    replicate_relay.devstack.filtergate, since the emulator applies no filter). Safe to run again;
    the endpoint is updated. Returns one line per resource."""
    dead_letter_topic = publisher.topic_path(project, endpoint.dead_letter)
    done = [_ensure_topic(publisher, dead_letter_topic)]
    done.append(
        _ensure_subscription(
            subscriber,
            {
                "name": subscriber.subscription_path(project, endpoint.dead_letter),
                "topic": dead_letter_topic,
                "ack_deadline_seconds": APP_ACK_DEADLINE_SECONDS,
            },
        )
    )
    push_endpoint = push_to or endpoint.url
    request: dict[str, object] = {
        "name": subscriber.subscription_path(project, endpoint.name),
        "topic": publisher.topic_path(project, topology.job_events_topic),
        "push_config": {"push_endpoint": push_endpoint},
        "ack_deadline_seconds": APP_ACK_DEADLINE_SECONDS,
        "retry_policy": {
            "minimum_backoff": duration_pb2.Duration(seconds=minimum_backoff_seconds),
            "maximum_backoff": duration_pb2.Duration(seconds=maximum_backoff_seconds),
        },
        "dead_letter_policy": {"dead_letter_topic": dead_letter_topic, "max_delivery_attempts": max_delivery_attempts},
    }
    if endpoint.filter:
        request["filter"] = endpoint.filter
    done.append(_ensure_subscription(subscriber, request, push_endpoint=push_endpoint))
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
