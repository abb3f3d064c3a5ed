"""The receiver with Pub/Sub taken out: webhook_load.py's and receiver_cpu.py's "no Pub/Sub" rows.

functions-framework --source bench/receiver_no_pubsub.py --target receive --asgi

The same `receive` as receiver/main.py, over the same settings and telemetry, except that each
webhook is "published" by `InstantPublisher`: it records the publish span and metric the real
publisher records and answers at once, without a gRPC call and without the emulator. What is left
is what verifying, checking, tracing and answering a webhook costs; no publisher, however fast,
can take the receiver beyond this row.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response

from receiver import main
from receiver.intake import Intake
from replicate_relay import telemetry
from replicate_relay.serve import PerProcess


class InstantPublisher:
    """Answers every publish at once, inside the publish span and metric of the real one."""

    def __init__(self, topic_path: str) -> None:
        self.topic_path = topic_path
        self._ids = itertools.count(1)

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> str:
        with telemetry.publish_span(self.topic_path, attributes, len(data)) as publish:
            message_id = str(next(self._ids))
            publish.sent(message_id)
            return message_id


def _make_intake() -> Intake:
    intake = Intake(main.SETTINGS, InstantPublisher(main.SETTINGS.topic_path))
    main.tune_gc()
    return intake


main._INTAKE = PerProcess(_make_intake)  # the receiver's own intake, with the instant publisher


async def receive(request: Request) -> Response:
    return await main.receive(request)
