"""The receiver never acknowledges what Pub/Sub has not stored."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from google.cloud import firestore

from replicate_relay.devstack.stack import LocalStack
from replicate_relay.testing import SignedWebhook, prediction_lifecycle
from tests.integration.conftest import unique_id, wait_for_job


@pytest.fixture
def pubsub_down(stack: LocalStack) -> Iterator[None]:
    stack.emulators["pubsub"].stop()
    try:
        yield
    finally:
        # The emulator keeps nothing across a restart: provision the topology again.
        stack.restart_emulator("pubsub")
        stack.provision()


def test_receiver_answers_503_while_pubsub_is_down_and_200_once_it_is_back(
    stack: LocalStack,
    http: httpx.Client,
    post: Callable[[SignedWebhook], httpx.Response],
    sign: Callable[..., SignedWebhook],
    db: firestore.Client,
    pubsub_down: None,
) -> None:
    prediction_id = unique_id()
    final = sign(prediction_lifecycle(prediction_id)[-1])

    response = post(final)
    assert response.status_code == 503
    assert response.json()["error"] == "publish_failed"
    assert http.get(stack.receiver_url + "/health").status_code == 200  # health never touches Pub/Sub

    # Replicate retries the final webhook with the same id; once Pub/Sub is back it lands.
    stack.restart_emulator("pubsub")
    stack.provision()
    assert post(final).status_code == 200
    assert wait_for_job(db, prediction_id, "succeeded").output_value
