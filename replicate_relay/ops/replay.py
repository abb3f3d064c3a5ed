"""Replaying dead-lettered messages onto the events topic, acknowledging each only once republished."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core import exceptions as google_exceptions

from replicate_relay.events import Source
from replicate_relay.ops.context import OpsSettings, rpc_options
from replicate_relay.ops.errors import OpsError
from replicate_relay.ops.render import table
from replicate_relay.publisher import PublishError, TopicPublisher
from replicate_relay.topology import Topology

# Pub/Sub adds these when it dead-letters a message; they describe that delivery, not the event,
# and Pub/Sub writes them afresh if the replayed message is dead-lettered again.
DEAD_LETTER_PREFIX = "CloudPubSubDeadLetter"
_BATCH = 50  # held leases are released or acknowledged well within the 60 s ack deadline
_EMPTY_PULL_WAIT = 3.0  # seconds the service may hold an empty pull open
_SHOWN = ("prediction_id", "status", "webhook_id", "source")


def replay_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    """The attributes to republish: the original ones (webhook_id kept, so handlers deduplicate),
    Pub/Sub's dead-letter bookkeeping dropped, source=replay."""
    kept = {key: value for key, value in attributes.items() if not key.startswith(DEAD_LETTER_PREFIX)}
    return {**kept, "source": Source.REPLAY.value}


def describe(message_id: str, attributes: Mapping[str, str]) -> dict[str, str]:
    """What an operator needs to judge one dead-lettered message, without its data."""
    shown = {"message_id": message_id, **{key: attributes.get(key, "-") for key in _SHOWN}}
    shown.update({key: value for key, value in sorted(attributes.items()) if key.startswith(DEAD_LETTER_PREFIX)})
    return shown


@dataclass
class ReplayReport:
    subscription: str
    topic: str
    dry_run: bool
    pulled: int = 0
    republished: int = 0
    acknowledged: int = 0
    failed: int = 0
    messages: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dead_letter_subscription(topology: Topology, name: str) -> str:
    """Check that `name` is one of the topology's dead-letter subscriptions; OpsError names them if not."""
    names = [subscription.dead_letter.subscription for subscription in topology.subscriptions]
    if name not in names:
        raise OpsError(f"{name!r} is not a dead-letter subscription; choose one of {', '.join(names)}")
    return name


def replay(
    subscriber: pubsub_v1.SubscriberClient,
    publisher_client: pubsub_v1.PublisherClient,
    settings: OpsSettings,
    subscription: str,
    *,
    topic: str,
    limit: int,
    dry_run: bool,
) -> ReplayReport:
    """Pull up to `limit` messages from `subscription` and republish each to the publisher's topic.

    A message is acknowledged only after Pub/Sub confirmed its republished copy; one that failed,
    and every message still held when interrupted, is handed back at once (ack deadline 0). So an
    interrupted run loses nothing, and a rerun replays at most what was republished but not yet
    acknowledged, which the handlers absorb by webhook_id. A dry run hands every message back.
    """
    path = subscriber.subscription_path(settings.project, subscription)
    topic_path = publisher_client.topic_path(settings.project, topic)
    publisher = TopicPublisher(topic_path, deadline_seconds=settings.timeout, client=publisher_client)
    report = ReplayReport(subscription=subscription, topic=topic, dry_run=dry_run)
    with settings.pubsub_errors():
        _require(subscriber, publisher_client, path, topic_path, settings)
        _Replayer(subscriber, publisher, path, settings, report).run(limit)
    return report


@dataclass
class _Replayer:
    subscriber: pubsub_v1.SubscriberClient
    publisher: TopicPublisher
    path: str
    settings: OpsSettings
    report: ReplayReport
    held: list[str] = field(default_factory=list)  # ack ids pulled, neither acknowledged nor handed back

    def run(self, limit: int) -> None:
        report = self.report
        try:
            while report.pulled < limit:
                batch = min(_BATCH, limit - report.pulled)
                received = pull(self.subscriber, self.path, self.settings, max_messages=batch)
                if not received:
                    return
                self.held.extend(message.ack_id for message in received)
                report.pulled += len(received)
                for message in received:
                    report.messages.append(describe(message.message.message_id, message.message.attributes))
                    if not report.dry_run and not self._republish(message):
                        return  # Pub/Sub refuses the topic: the rest would fail alike; they go back
        finally:
            release(self.subscriber, self.path, self.held, self.settings)

    def _republish(self, message: Any) -> bool:
        """Republish, then acknowledge; False if the publish failed (the message is handed back)."""
        report, message_id = self.report, message.message.message_id
        try:
            self.publisher.publish(message.message.data, replay_attributes(message.message.attributes))
        except PublishError as error:
            report.failed += 1
            report.errors.append(f"{message_id}: {_one_line(error)}")
            return False
        report.republished += 1
        self.held.remove(message.ack_id)
        try:
            self.subscriber.acknowledge(
                request={"subscription": self.path, "ack_ids": [message.ack_id]}, **self.settings.rpc()
            )
        except google_exceptions.GoogleAPIError as error:
            # Republished but still dead-lettered: a rerun republishes it again, and the handlers
            # absorb the duplicate by its webhook_id.
            report.failed += 1
            report.errors.append(f"{message_id}: republished but not acknowledged: {_one_line(error)}")
            return True
        report.acknowledged += 1
        return True


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:300]


def _require(
    subscriber: pubsub_v1.SubscriberClient,
    publisher_client: pubsub_v1.PublisherClient,
    path: str,
    topic_path: str,
    settings: OpsSettings,
) -> None:
    """Both ends must exist before anything is pulled, so a typo leaves nothing half-done."""
    try:
        subscriber.get_subscription(request={"subscription": path}, **settings.rpc())
    except google_exceptions.NotFound:
        raise OpsError(f"subscription {path} does not exist: is the topology provisioned in this project?") from None
    try:
        publisher_client.get_topic(request={"topic": topic_path}, **settings.rpc())
    except google_exceptions.NotFound:
        raise OpsError(f"topic {topic_path} does not exist") from None


def pull(subscriber: pubsub_v1.SubscriberClient, path: str, settings: OpsSettings, *, max_messages: int) -> list[Any]:
    """One synchronous pull; an empty list when nothing is waiting."""
    request: dict[str, Any] = {"subscription": path, "max_messages": max_messages}
    try:
        if not settings.on_emulators:
            # The service may hold an empty pull open until the deadline: a few seconds will do.
            return list(
                subscriber.pull(
                    request=request, **rpc_options(min(settings.timeout, _EMPTY_PULL_WAIT))
                ).received_messages
            )
        # So does the emulator, but it answers this deprecated flag at once with whatever is
        # waiting, every time (the service may answer empty though messages wait, hence "deprecated").
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            response = subscriber.pull(request={**request, "return_immediately": True}, **settings.rpc())
    except google_exceptions.DeadlineExceeded:
        return []
    return list(response.received_messages)


def release(subscriber: pubsub_v1.SubscriberClient, path: str, ack_ids: list[str], settings: OpsSettings) -> None:
    """Hand messages back to the subscription at once (ack deadline 0)."""
    if not ack_ids:
        return
    # If this fails, each message comes back when its ack deadline passes: later, not lost.
    with contextlib.suppress(google_exceptions.GoogleAPIError):
        subscriber.modify_ack_deadline(
            request={"subscription": path, "ack_ids": list(ack_ids), "ack_deadline_seconds": 0}, **settings.rpc()
        )
    ack_ids.clear()


_COLUMNS = {
    "message_id": "message",
    "prediction_id": "prediction",
    "status": "status",
    "webhook_id": "webhook_id",
    "source": "source",
    f"{DEAD_LETTER_PREFIX}SourceDeliveryCount": "deliveries",
    f"{DEAD_LETTER_PREFIX}SourceSubscription": "dead-lettered by",
}


def render_replay(report: ReplayReport) -> str:
    if not report.dry_run:
        lines = [
            f"Replayed {report.subscription} → {report.topic}: pulled {report.pulled}, republished "
            f"{report.republished}, acknowledged {report.acknowledged}, failed {report.failed}"
        ]
        return "\n".join(lines + [f"  error: {error}" for error in report.errors])
    lines = [
        f"Dry run: {report.pulled} message(s) in {report.subscription} would be republished to {report.topic} "
        "(source=replay); none acknowledged, all handed back."
    ]
    if report.messages:
        rows = [[shown.get(key) for key in _COLUMNS] for shown in report.messages]
        lines += ["", table(list(_COLUMNS.values()), rows)]
        lines.append(f"(deliveries = {DEAD_LETTER_PREFIX}SourceDeliveryCount; --json shows every attribute)")
    return "\n".join(lines)
