"""Two apps on one Relay, on the local stack: neither reads, lists or cancels the other's jobs, an
Idempotency-Key is each app's own, and each app's push subscription gets its own jobs' events only.

The API runs with auth off here (the local stack only), so each request names its app with the
X-Relay-Dev-Caller header, as an ID token's e-mail would in Google Cloud. The Pub/Sub emulator
applies no subscription filter (docs/EMULATORS.md): the app subscriptions record the filter
Terraform writes, and the local stack pushes through its filter stand-in
(replicate_relay.devstack.filtergate). What this shows on the emulator is that Relay publishes the
`app` attribute each filter needs, and that a subscription so filtered gives each app its own.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.cloud import pubsub_v1

from replicate_relay.devstack.stack import LocalStack
from replicate_relay.topology import app_filter
from tests.integration.conftest import wait_for
from tests.integration.test_api import MODEL, QUICK, conforms, predictions_created
from tests.integration.test_app_push import AppEndpoint

CALLER = "X-Relay-Dev-Caller"


def _email(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}@local-project.iam.gserviceaccount.com"


@pytest.fixture
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        yield client


@pytest.fixture
def apps() -> tuple[str, str]:
    """Two apps new to this test, so their listings hold only what it submits."""
    return _email("orders"), _email("mail")


def submit(api: httpx.Client, app: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return api.post("/v1/jobs", json=body, headers={CALLER: app, **headers})


def listed(api: httpx.Client, app: str) -> list[str]:
    response = api.get("/v1/jobs", params={"limit": 100}, headers={CALLER: app})
    return [job["job_id"] for job in conforms(response, "/v1/jobs")["jobs"]]


def test_neither_app_reads_lists_or_cancels_the_others_jobs(api: httpx.Client, apps: tuple[str, str]) -> None:
    orders, mail = apps
    body = {"model": MODEL, "input": {"prompt": "hi", **QUICK}}
    mine = conforms(submit(api, orders, body), "/v1/jobs")
    theirs = conforms(submit(api, mail, body), "/v1/jobs")
    assert (mine["app"], theirs["app"]) == (orders, mail)

    own = api.get(f"/v1/jobs/{mine['job_id']}", headers={CALLER: orders})
    assert conforms(own, "/v1/jobs/{job_id}")["app"] == orders
    for job_id, stranger in [(mine["job_id"], mail), (theirs["job_id"], orders)]:
        read = api.get(f"/v1/jobs/{job_id}", headers={CALLER: stranger})
        assert read.status_code == 404, read.text
        assert conforms(read, "/v1/jobs/{job_id}")["type"] == "urn:replicate-relay:problem:not-found"
        canceled = api.post(f"/v1/jobs/{job_id}/cancel", headers={CALLER: stranger})
        assert canceled.status_code == 404, canceled.text
    assert listed(api, orders) == [mine["job_id"]]
    assert listed(api, mail) == [theirs["job_id"]]
    # The local stack's anonymous caller (no header) reads every app's job, as the API did before.
    assert api.get(f"/v1/jobs/{mine['job_id']}").status_code == 200


def test_an_idempotency_key_reused_by_the_other_app_creates_a_new_job(
    api: httpx.Client, apps: tuple[str, str], simulator: httpx.Client
) -> None:
    orders, mail = apps
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    body = {"model": MODEL, "input": {"prompt": "same body", **QUICK}}
    before = predictions_created(simulator)
    first = submit(api, orders, body, **key)
    replayed = submit(api, orders, body, **key)
    other = submit(api, mail, body, **key)
    assert (first.status_code, replayed.status_code, other.status_code) == (201, 201, 201), other.text
    assert replayed.headers.get("idempotency-replayed") == "true"
    assert "idempotency-replayed" not in other.headers
    assert first.json()["job_id"] == replayed.json()["job_id"] != other.json()["job_id"]
    assert (first.json()["app"], other.json()["app"]) == (orders, mail)
    assert predictions_created(simulator) - before == 2


@pytest.fixture
def endpoints(stack: LocalStack, apps: tuple[str, str]) -> Iterator[dict[str, tuple[AppEndpoint, str]]]:
    """Each app's push endpoint, registered with its app: by app e-mail, the endpoint and its
    subscription's name. Subscriptions and dead letters are deleted afterwards."""
    made: dict[str, tuple[AppEndpoint, str]] = {}
    try:
        for app in apps:
            endpoint = AppEndpoint()
            name = f"apps-apart-{uuid.uuid4().hex[:8]}"
            made[app] = (endpoint, name)
            stack.add_app_endpoint(name, endpoint.url, app=app)
        yield made
    finally:
        for endpoint, name in made.values():
            stack.remove_app_endpoint(name)
            endpoint.close()


def test_each_apps_push_receives_only_its_own_jobs_events(
    stack: LocalStack, api: httpx.Client, apps: tuple[str, str], endpoints: dict[str, tuple[AppEndpoint, str]]
) -> None:
    # Each subscription records its app's filter, as Terraform's app_subscription_apps makes it.
    subscriber = pubsub_v1.SubscriberClient()
    try:
        for app, (_, name) in endpoints.items():
            path = subscriber.subscription_path(stack.config.project, name)
            assert subscriber.get_subscription(request={"subscription": path}).filter == app_filter(app)
    finally:
        subscriber.close()

    body = {"model": MODEL, "input": {"prompt": "hi", **QUICK}}
    jobs = {app: conforms(submit(api, app, body), "/v1/jobs")["job_id"] for app in apps}
    gate = stack.filter_gate
    assert gate is not None

    def decided() -> list[tuple[str, str | None, bool]] | None:
        # Every app subscription has had both jobs' events pushed to it: forwarded or dropped.
        wanted = {(name, job_id) for _, name in endpoints.values() for job_id in jobs.values()}
        seen = [decision for decision in gate.decisions if decision[:2] in wanted]
        return seen if {decision[:2] for decision in seen} >= wanted else None

    wait_for(decided, what="both jobs' events pushed to both app subscriptions")
    for app, (endpoint, _) in endpoints.items():
        received = [json.loads(base64.b64decode(d.envelope["message"]["data"])) for d in endpoint.deliveries]
        assert {event["job_id"] for event in received} & set(jobs.values()) == {jobs[app]}, (app, received)
        [own] = [d for d in endpoint.deliveries if d.envelope["message"]["attributes"]["job_id"] == jobs[app]]
        assert own.envelope["message"]["attributes"]["app"] == app  # set by Relay when it published
