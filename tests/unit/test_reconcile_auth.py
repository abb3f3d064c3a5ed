"""The reconciler accepts only Cloud Scheduler's OIDC token for its own URL, checked in code as the
push handlers check Pub/Sub's (Cloud Run's IAM checks it first in production).

Tokens are minted with a local RSA key (tests/unit/test_push_auth.py); the one fake is Google's
certificate endpoint. The reconcile run itself is replaced by a recorder: what is tested is whether
a call reaches it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import flask
import google.auth.exceptions
import pytest

from handlers.auth import GoogleCerts, scheduler_authenticator
from handlers.errors import Unauthenticated
from handlers.settings import HandlerSettings, PushAuthSettings
from replicate_relay.config import ConfigError
from tests.unit.test_push_auth import OTHER_KEY, SERVICE_ACCOUNT, FakeGoogle, FromNow, load_function, mint

PROJECT = "unit-test-project"
SCHEDULER = f"relay-scheduler@{PROJECT}.iam.gserviceaccount.com"
URL = "https://reconciler-abcdefghij-uc.a.run.app"  # Scheduler's target and its token's audience
HOST = URL.removeprefix("https://")
CLOUD_RUN = {"K_REVISION": "reconciler-00001-abc", "K_CONFIGURATION": "reconciler"}
ENV = {
    "RELAY_PROJECT": PROJECT,
    "FUNCTION_TARGET": "reconcile",
    "REPLICATE_API_TOKEN": "r8_unit",
    "RELAY_RECONCILE_INVOKER": SCHEDULER,
}


def scheduler_token(**changes: Any) -> str:
    """A token as Cloud Scheduler sends it to the reconciler (scheduler.tf's oidc_token)."""
    return mint(**{"aud": URL, "email": SCHEDULER, **changes})


@dataclass
class Runs:
    """Stands in for the reconcile run: counts the calls that got past authentication."""

    calls: int = 0

    def __call__(self, span: Any, started: float) -> flask.Response:
        self.calls += 1
        return flask.make_response(({"checked": 0}, 200))


def serve_reconciler(
    monkeypatch: pytest.MonkeyPatch, environ: Mapping[str, str], endpoint: FakeGoogle
) -> tuple[flask.testing.FlaskClient, ModuleType, Runs]:
    app, module = load_function(
        monkeypatch,
        "handlers/main.py",
        "reconcile",
        environ,
        unset=("RELAY_PUSH_AUTH", "RELAY_RECONCILE_AUDIENCE", "RELAY_PUSH_SERVICE_ACCOUNT"),
    )
    settings = module.SETTINGS.reconciler
    assert settings is not None
    monkeypatch.setattr(module, "RECONCILE_AUTH", scheduler_authenticator(settings.caller, certs=GoogleCerts(endpoint)))
    runs = Runs()
    monkeypatch.setattr(module, "_reconcile", runs)
    return app.test_client(), module, runs


@pytest.fixture
def endpoint() -> FakeGoogle:
    return FakeGoogle()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, endpoint: FakeGoogle) -> tuple[flask.testing.FlaskClient, ModuleType, Runs]:
    return serve_reconciler(monkeypatch, ENV, endpoint)


def post(client: flask.testing.FlaskClient, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.post("/", data=b"{}", headers=headers, base_url=URL)


# --- served as deployed --------------------------------------------------------------------------


def test_schedulers_token_for_the_reconcilers_own_url_runs_it(
    served: tuple[flask.testing.FlaskClient, ModuleType, Runs],
) -> None:
    client, module, runs = served
    assert module.SETTINGS.reconciler.caller == PushAuthSettings(mode="oidc", service_account=SCHEDULER, audience=None)

    response = post(client, scheduler_token())

    assert (response.status_code, runs.calls) == (200, 1)


@pytest.mark.parametrize(
    ("token", "reason", "status"),
    [
        pytest.param(None, "missing_token", 401, id="no-token"),
        pytest.param(scheduler_token(key=OTHER_KEY), "invalid_token", 401, id="forged"),
        pytest.param(scheduler_token(exp=FromNow(-120)), "invalid_token", 401, id="expired"),
        pytest.param(scheduler_token(aud="https://job-status-xyz-uc.a.run.app"), "wrong_audience", 403, id="aud"),
        pytest.param(scheduler_token(email="someone@evil.example"), "wrong_sender", 403, id="email"),
        # Pub/Sub's push token is valid Google-signed OIDC, for another caller: not Scheduler's.
        pytest.param(scheduler_token(email=SERVICE_ACCOUNT), "wrong_sender", 403, id="push-account"),
        pytest.param(scheduler_token(email_verified=False), "wrong_sender", 403, id="unverified"),
    ],
)
def test_any_other_call_is_refused_with_a_log_line_and_never_runs(
    served: tuple[flask.testing.FlaskClient, ModuleType, Runs],
    caplog: pytest.LogCaptureFixture,
    token: str | None,
    reason: str,
    status: int,
) -> None:
    client, _, runs = served

    response = post(client, token)

    assert (response.status_code, response.get_json()["error"], runs.calls) == (status, reason, 0)
    [record] = [record for record in caplog.records if record.name == "relay.handlers"]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("reconcile call refused: ")
    assert record.fields == {"handler": "reconciler", "outcome": "refused", "reason": reason, "status": status}  # type: ignore[attr-defined]
    if token is not None:
        signature = token.split(".")[2]
        for shown in (caplog.text, repr(record.__dict__), response.get_data(as_text=True)):
            assert signature not in shown


def test_certificates_that_cannot_be_fetched_are_a_503_and_no_run(
    served: tuple[flask.testing.FlaskClient, ModuleType, Runs], endpoint: FakeGoogle
) -> None:
    client, _, runs = served
    endpoint.failure = google.auth.exceptions.TransportError("no route to host")

    response = post(client, scheduler_token())

    assert (response.status_code, response.get_json()["error"], runs.calls) == (503, "reconcile_auth_unavailable", 0)


def test_with_token_checks_off_the_local_stacks_scheduler_gets_through_without_a_token(
    monkeypatch: pytest.MonkeyPatch, endpoint: FakeGoogle
) -> None:
    environ = {key: value for key, value in ENV.items() if key != "RELAY_RECONCILE_INVOKER"}
    client, _, runs = serve_reconciler(monkeypatch, {**environ, "RELAY_PUSH_AUTH": "off"}, endpoint)

    response = post(client, None)

    assert (response.status_code, runs.calls, endpoint.fetches) == (200, 1, [])


def test_a_get_is_refused_before_any_token_is_looked_at(
    served: tuple[flask.testing.FlaskClient, ModuleType, Runs], endpoint: FakeGoogle
) -> None:
    client, _, runs = served

    response = client.get("/", base_url=URL)

    assert (response.status_code, runs.calls, endpoint.fetches) == (405, 0, [])


# --- settings ------------------------------------------------------------------------------------


def settings_error(environ: Mapping[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        HandlerSettings.from_env(environ)
    return caught.value


def test_the_schedulers_account_is_required_when_tokens_are_checked() -> None:
    environ = {key: value for key, value in ENV.items() if key != "RELAY_RECONCILE_INVOKER"}

    message = str(settings_error({**environ, **CLOUD_RUN}))

    assert "RELAY_RECONCILE_INVOKER is required" in message
    assert "must be a service account e-mail" in str(settings_error({**ENV, "RELAY_RECONCILE_INVOKER": "scheduler"}))


def test_token_checks_can_never_be_switched_off_on_cloud_run() -> None:
    message = str(settings_error({**ENV, **CLOUD_RUN, "RELAY_PUSH_AUTH": "off"}))

    assert "RELAY_PUSH_AUTH=off" in message
    assert "Cloud Scheduler's OIDC token" in message


def test_the_audience_can_be_pinned_and_push_settings_are_not_the_reconcilers() -> None:
    pinned = HandlerSettings.from_env({**ENV, "RELAY_RECONCILE_AUDIENCE": URL}).reconciler
    assert pinned is not None
    assert pinned.caller == PushAuthSettings(mode="oidc", service_account=SCHEDULER, audience=URL)
    # The push account and audience do not stand in for the scheduler's.
    environ = {key: value for key, value in ENV.items() if key != "RELAY_RECONCILE_INVOKER"}
    assert "RELAY_RECONCILE_INVOKER" in str(
        settings_error({**environ, "RELAY_PUSH_SERVICE_ACCOUNT": SERVICE_ACCOUNT, "RELAY_PUSH_AUDIENCE": URL})
    )


def test_a_pinned_audience_refuses_a_token_for_the_host_it_came_in_on(endpoint: FakeGoogle) -> None:
    settings = PushAuthSettings(mode="oidc", service_account=SCHEDULER, audience="https://reconciler.example")
    authenticator = scheduler_authenticator(settings, certs=GoogleCerts(endpoint))

    authenticator.authenticate(f"Bearer {scheduler_token(aud='https://reconciler.example')}", host=HOST)
    with pytest.raises(Unauthenticated) as caught:
        authenticator.authenticate(f"Bearer {scheduler_token()}", host=HOST)
    assert (caught.value.reason, caught.value.status) == ("wrong_audience", 403)
