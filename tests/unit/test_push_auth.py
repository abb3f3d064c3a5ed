"""handlers.auth: the push handlers accept only the OIDC token Pub/Sub signs for them.

Tokens are minted here with a local RSA key; the one fake is Google's certificate endpoint (a
google.auth transport serving that key's certificate), injected into GoogleCerts.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import flask
import functions_framework
import google.auth.exceptions
import google.auth.transport
import google.auth.transport.requests
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from handlers.auth import CERTS_TIMEOUT_SECONDS, GOOGLE_CERTS_URL, GoogleCerts, PushAuthenticator
from handlers.errors import HandlerError, TransientError, Unauthenticated
from handlers.settings import HandlerSettings, PushAuthSettings
from replicate_relay import logs, telemetry_setup
from replicate_relay.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_ACCOUNT = "relay-push@unit-test-project.iam.gserviceaccount.com"
SCHEDULER = "relay-scheduler@unit-test-project.iam.gserviceaccount.com"
AUDIENCE = "https://job-status-abcdefghij-uc.a.run.app"
KEY_ID = "unit-key-1"
OIDC = PushAuthSettings(mode="oidc", service_account=SERVICE_ACCOUNT, audience=AUDIENCE)
FROM_HOST = PushAuthSettings(mode="oidc", service_account=SERVICE_ACCOUNT, audience=None)


def _private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _certificate_pem(key: rsa.RSAPrivateKey) -> str:
    """A self-signed X.509 certificate, the form Google publishes its keys in."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unit-test-google")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


@functools.cache  # loading an RSA key is slow
def _signer(key: rsa.RSAPrivateKey, key_id: str) -> crypt.Signer:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return crypt.RSASigner.from_string(pem, key_id=key_id)


GOOGLE_KEY = _private_key()
OTHER_KEY = _private_key()
CERTS = {KEY_ID: _certificate_pem(GOOGLE_KEY)}


@dataclass(frozen=True)
class FromNow:
    """A time claim relative to the moment the token is minted (parameters are made at collection,
    which may be long before the test runs)."""

    seconds: int


def mint(*, key: rsa.RSAPrivateKey = GOOGLE_KEY, key_id: str = KEY_ID, **changes: Any) -> str:
    """A token as Pub/Sub sends it for this service; a claim changed to ... is left out."""
    now = int(time.time())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "azp": "113774264463038321964",
        "sub": "113774264463038321964",
        "email": SERVICE_ACCOUNT,
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
        **changes,
    }
    claims = {
        name: now + value.seconds if isinstance(value, FromNow) else value
        for name, value in claims.items()
        if value is not ...
    }
    return jwt.encode(_signer(key, key_id), claims).decode("ascii")


class FakeResponse(google.auth.transport.Response):
    def __init__(self, status: int, headers: Mapping[str, str], data: bytes) -> None:
        self._status, self._headers, self._data = status, headers, data

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    @property
    def data(self) -> bytes:
        return self._data


class FakeGoogle(google.auth.transport.Request):
    """Google's certificate endpoint: serves `certs`, or fails as told; records each fetch."""

    def __init__(self, certs: Mapping[str, str] = CERTS, *, cache_control: str = "public, max-age=3600") -> None:
        self.certs = dict(certs)
        self.headers = {"Cache-Control": cache_control, "Content-Type": "application/json"}
        self.failure: Exception | FakeResponse | None = None
        self.fetches: list[dict[str, Any]] = []

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> FakeResponse:
        self.fetches.append({"url": url, "method": method, "timeout": timeout})
        if isinstance(self.failure, Exception):
            raise self.failure
        if self.failure is not None:
            return self.failure
        return FakeResponse(200, self.headers, json.dumps(self.certs).encode())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def endpoint() -> FakeGoogle:
    return FakeGoogle()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def authenticator(
    endpoint: FakeGoogle, settings: PushAuthSettings = OIDC, clock: Clock | None = None
) -> PushAuthenticator:
    return PushAuthenticator(settings, certs=GoogleCerts(endpoint, clock=clock or Clock()))


def refusal(
    endpoint: FakeGoogle, authorization: str | None, *, settings: PushAuthSettings = OIDC, host: str | None = None
) -> HandlerError:
    with pytest.raises(HandlerError) as caught:
        authenticator(endpoint, settings).authenticate(authorization, host=host)
    return caught.value


# --- accepted ----------------------------------------------------------------------------------


def test_a_token_pubsub_signed_for_this_service_is_accepted(endpoint: FakeGoogle) -> None:
    authenticator(endpoint).authenticate(f"Bearer {mint()}", host="anything.example")


@pytest.mark.parametrize("issuer", ["https://accounts.google.com", "accounts.google.com"])
def test_both_spellings_of_googles_issuer_are_accepted(endpoint: FakeGoogle, issuer: str) -> None:
    authenticator(endpoint).authenticate(f"Bearer {mint(iss=issuer)}", host=None)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(endpoint: FakeGoogle, scheme: str) -> None:
    authenticator(endpoint).authenticate(f"{scheme} {mint()}", host=None)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"exp": FromNow(-30)}, id="expired-30s-ago"),
        pytest.param({"iat": FromNow(30)}, id="issued-30s-ahead"),
    ],
)
def test_clocks_may_disagree_by_up_to_a_minute(endpoint: FakeGoogle, changes: dict[str, Any]) -> None:
    authenticator(endpoint).authenticate(f"Bearer {mint(**changes)}", host=None)


def test_without_a_configured_audience_the_host_header_names_it(endpoint: FakeGoogle) -> None:
    token = mint(aud="https://archive-outputs-abcdefghij-uc.a.run.app")

    authenticator(endpoint, FROM_HOST).authenticate(f"Bearer {token}", host="archive-outputs-abcdefghij-uc.a.run.app")


def test_a_configured_audience_wins_over_the_host_header(endpoint: FakeGoogle) -> None:
    authenticator(endpoint).authenticate(f"Bearer {mint(aud=AUDIENCE)}", host="other-service.a.run.app")


def test_the_service_account_email_is_compared_case_insensitively(endpoint: FakeGoogle) -> None:
    authenticator(endpoint).authenticate(f"Bearer {mint(email=SERVICE_ACCOUNT.upper())}", host=None)


def test_switched_off_every_request_passes_without_a_fetch(endpoint: FakeGoogle) -> None:
    off = PushAuthSettings(mode="off", service_account=None, audience=None)

    authenticator(endpoint, off).authenticate(None, host=None)
    authenticator(endpoint, off).authenticate("Bearer garbage", host=None)

    assert endpoint.fetches == []


# --- refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason", "status"),
    [
        pytest.param({"exp": FromNow(-120)}, "invalid_token", 401, id="expired"),
        pytest.param({"iat": FromNow(600), "exp": FromNow(4200)}, "invalid_token", 401, id="early"),
        pytest.param({"exp": ...}, "invalid_token", 401, id="no-exp"),
        pytest.param({"iss": "https://evil.example"}, "wrong_issuer", 401, id="issuer"),
        pytest.param({"iss": ...}, "wrong_issuer", 401, id="no-issuer"),
        pytest.param({"aud": "https://archive-outputs-abcdefghij-uc.a.run.app"}, "wrong_audience", 403, id="aud"),
        pytest.param({"aud": ...}, "wrong_audience", 403, id="no-aud"),
        pytest.param({"email": "someone@evil.example"}, "wrong_sender", 403, id="email"),
        pytest.param({"email": ...}, "wrong_sender", 403, id="no-email"),
        pytest.param({"email_verified": False}, "wrong_sender", 403, id="unverified"),
        pytest.param({"email_verified": ...}, "wrong_sender", 403, id="verified-missing"),
    ],
)
def test_a_token_with_one_claim_wrong_is_refused_with_its_reason(
    endpoint: FakeGoogle, changes: dict[str, Any], reason: str, status: int
) -> None:
    token = mint(**changes)

    error = refusal(endpoint, f"Bearer {token}")

    assert isinstance(error, Unauthenticated)
    assert (error.reason, error.status) == (reason, status)
    assert token not in error.message


def test_a_token_signed_with_another_key_under_googles_key_id_is_refused(endpoint: FakeGoogle) -> None:
    error = refusal(endpoint, f"Bearer {mint(key=OTHER_KEY)}")

    assert (error.reason, error.status) == ("invalid_token", 401)


def test_a_token_naming_a_key_google_does_not_publish_is_refused(endpoint: FakeGoogle) -> None:
    error = refusal(endpoint, f"Bearer {mint(key=OTHER_KEY, key_id='made-up')}")

    assert (error.reason, error.status) == ("invalid_token", 401)


def test_an_unsigned_token_is_refused(endpoint: FakeGoogle) -> None:
    header, payload, _ = mint().split(".")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()

    assert refusal(endpoint, f"Bearer {none_header}.{payload}.").reason == "invalid_token"
    assert refusal(endpoint, f"Bearer {header}.{payload}.").reason == "invalid_token"


def test_without_a_configured_audience_a_token_for_another_host_is_refused(endpoint: FakeGoogle) -> None:
    error = refusal(endpoint, f"Bearer {mint(aud=AUDIENCE)}", settings=FROM_HOST, host="archive-outputs.a.run.app")

    assert (error.reason, error.status) == ("wrong_audience", 403)
    assert "https://archive-outputs.a.run.app" in error.message


def test_without_a_configured_audience_or_a_host_header_every_token_is_refused(endpoint: FakeGoogle) -> None:
    assert refusal(endpoint, f"Bearer {mint()}", settings=FROM_HOST, host=None).reason == "wrong_audience"


@pytest.mark.parametrize("authorization", [None, "", "   "])
def test_no_token_is_refused_as_missing(endpoint: FakeGoogle, authorization: str | None) -> None:
    error = refusal(endpoint, authorization)

    assert (error.reason, error.status) == ("missing_token", 401)
    assert endpoint.fetches == []


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Bearer", id="scheme-only"),
        pytest.param("Bearer    ", id="scheme-and-spaces"),
        pytest.param("Basic dXNlcjpwYXNz", id="basic"),
        pytest.param(f"Token {mint()}", id="other-scheme"),
        pytest.param(mint(), id="no-scheme"),
        pytest.param(f"Bearer {mint()} extra", id="two-tokens"),
        pytest.param("Bearer not-a-jwt", id="one-segment"),
        pytest.param("Bearer a.b.c.d", id="four-segments"),
        pytest.param("Bearer !!!.@@@.###", id="not-base64"),
        pytest.param("Bearer " + base64.urlsafe_b64encode(b"[1]").decode() + ".e30.c2ln", id="header-not-object"),
        pytest.param("Bearer " + "a" * 20_000 + ".b.c", id="huge"),
    ],
)
def test_a_header_that_is_no_bearer_jwt_is_refused_as_malformed(endpoint: FakeGoogle, authorization: str) -> None:
    error = refusal(endpoint, authorization)

    assert (error.reason, error.status) == ("malformed_token", 401)
    assert endpoint.fetches == []  # nothing fetched for garbage


# --- Google's certificates -----------------------------------------------------------------------


def test_certificates_are_fetched_once_with_a_timeout_and_kept_for_their_max_age(
    endpoint: FakeGoogle, clock: Clock
) -> None:
    checker = authenticator(endpoint, clock=clock)
    for _ in range(5):
        checker.authenticate(f"Bearer {mint()}", host=None)

    assert endpoint.fetches == [{"url": GOOGLE_CERTS_URL, "method": "GET", "timeout": CERTS_TIMEOUT_SECONDS}]

    clock.now += 3599
    checker.authenticate(f"Bearer {mint()}", host=None)
    assert len(endpoint.fetches) == 1
    clock.now += 1
    checker.authenticate(f"Bearer {mint()}", host=None)
    assert len(endpoint.fetches) == 2


def test_the_age_a_cache_added_shortens_how_long_certificates_are_kept(endpoint: FakeGoogle, clock: Clock) -> None:
    endpoint.headers["Age"] = "3000"
    checker = authenticator(endpoint, clock=clock)
    checker.authenticate(f"Bearer {mint()}", host=None)

    clock.now += 600
    checker.authenticate(f"Bearer {mint()}", host=None)

    assert len(endpoint.fetches) == 2


def test_a_new_key_id_refetches_the_certificates_at_most_every_30_seconds(endpoint: FakeGoogle, clock: Clock) -> None:
    checker = authenticator(endpoint, clock=clock)
    checker.authenticate(f"Bearer {mint()}", host=None)
    rotated = _private_key()
    endpoint.certs["unit-key-2"] = _certificate_pem(rotated)

    clock.now += 10
    with pytest.raises(Unauthenticated):  # refetched only 10 s ago: a made-up key id cannot force fetches
        checker.authenticate(f"Bearer {mint(key=rotated, key_id='unit-key-2')}", host=None)
    assert len(endpoint.fetches) == 1

    clock.now += 20
    checker.authenticate(f"Bearer {mint(key=rotated, key_id='unit-key-2')}", host=None)
    assert len(endpoint.fetches) == 2


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(google.auth.exceptions.TransportError("connection timed out"), id="network"),
        pytest.param(FakeResponse(503, {}, b"unavailable"), id="http-503"),
        pytest.param(FakeResponse(200, {}, b"<html>"), id="not-json"),
        pytest.param(FakeResponse(200, {}, b"[]"), id="not-an-object"),
        pytest.param(FakeResponse(200, {}, b"{}"), id="no-certificates"),
    ],
)
def test_certificates_that_cannot_be_fetched_are_a_transient_503_not_a_refusal(
    endpoint: FakeGoogle, failure: Exception | FakeResponse
) -> None:
    endpoint.failure = failure

    error = refusal(endpoint, f"Bearer {mint()}")

    assert isinstance(error, TransientError)
    assert (error.reason, error.status) == ("push_auth_unavailable", 503)


def test_after_a_failed_fetch_requests_wait_5_seconds_before_the_next_fetch(endpoint: FakeGoogle, clock: Clock) -> None:
    checker = authenticator(endpoint, clock=clock)
    endpoint.failure = google.auth.exceptions.TransportError("connection refused")
    for _ in range(3):
        with pytest.raises(TransientError):
            checker.authenticate(f"Bearer {mint()}", host=None)
    assert len(endpoint.fetches) == 1

    endpoint.failure = None
    clock.now += 5
    checker.authenticate(f"Bearer {mint()}", host=None)
    assert len(endpoint.fetches) == 2


def test_the_default_transport_is_googles_requests_transport() -> None:
    checker = PushAuthenticator(OIDC)

    assert isinstance(checker._certs._request, google.auth.transport.requests.Request)


# --- settings ----------------------------------------------------------------------------------

PUSH_ENV = {"RELAY_PROJECT": "unit-test-project", "FUNCTION_TARGET": "job_status"}
CLOUD_RUN = {"K_SERVICE": "job-status", "K_REVISION": "job-status-00001-abc", "K_CONFIGURATION": "job-status"}


def settings_error(**env: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        HandlerSettings.from_env({**PUSH_ENV, **env})
    return caught.value


@pytest.mark.parametrize("target", ["job_status", "archive_outputs"])
def test_push_targets_verify_tokens_by_default(target: str) -> None:
    settings = HandlerSettings.from_env(
        {**PUSH_ENV, "FUNCTION_TARGET": target, "RELAY_PUSH_SERVICE_ACCOUNT": SERVICE_ACCOUNT}
    )

    assert settings.push == PushAuthSettings(mode="oidc", service_account=SERVICE_ACCOUNT, audience=None)


def test_the_audience_can_be_pinned() -> None:
    settings = HandlerSettings.from_env(
        {**PUSH_ENV, "RELAY_PUSH_SERVICE_ACCOUNT": SERVICE_ACCOUNT, "RELAY_PUSH_AUDIENCE": AUDIENCE}
    )

    assert settings.push is not None
    assert settings.push.audience == AUDIENCE


def test_the_push_service_account_is_required_when_tokens_are_verified() -> None:
    assert "RELAY_PUSH_SERVICE_ACCOUNT is required" in str(settings_error())
    assert "RELAY_PUSH_SERVICE_ACCOUNT is required" in str(settings_error(RELAY_PUSH_AUTH="oidc", **CLOUD_RUN))


def test_the_push_service_account_must_be_an_email() -> None:
    assert "RELAY_PUSH_SERVICE_ACCOUNT" in str(settings_error(RELAY_PUSH_SERVICE_ACCOUNT="relay-push"))


def test_an_unknown_push_auth_mode_is_refused_naming_the_variable() -> None:
    assert "RELAY_PUSH_AUTH" in str(settings_error(RELAY_PUSH_AUTH="none", RELAY_PUSH_SERVICE_ACCOUNT=SERVICE_ACCOUNT))


def test_verification_switched_off_needs_no_service_account_off_cloud_run() -> None:
    settings = HandlerSettings.from_env({**PUSH_ENV, "RELAY_PUSH_AUTH": "off", "K_SERVICE": "job-status"})

    assert settings.push == PushAuthSettings(mode="off", service_account=None, audience=None)


def test_verification_can_never_be_switched_off_on_cloud_run() -> None:
    message = str(settings_error(RELAY_PUSH_AUTH="off", RELAY_PUSH_SERVICE_ACCOUNT=SERVICE_ACCOUNT, **CLOUD_RUN))

    assert "RELAY_PUSH_AUTH" in message
    assert "never on Cloud Run" in message


def test_the_reconciler_needs_no_push_settings_and_ignores_them() -> None:
    env = {
        **PUSH_ENV,
        "FUNCTION_TARGET": "reconcile",
        "REPLICATE_API_TOKEN": "r8_unit",
        "RELAY_RECONCILE_INVOKER": SCHEDULER,
        **CLOUD_RUN,
    }

    assert HandlerSettings.from_env(env).push is None
    # Off Cloud Run the switch may be off; it then turns off the reconciler's check of Scheduler's
    # token (tests/unit/test_reconcile_auth.py), and still reads no push settings.
    local = {key: value for key, value in env.items() if key not in CLOUD_RUN}
    assert HandlerSettings.from_env({**local, "RELAY_PUSH_AUTH": "off"}).push is None


def test_without_a_function_target_no_push_settings_are_read() -> None:
    assert HandlerSettings.from_env({"RELAY_PROJECT": "unit-test-project"}).push is None


# --- wired into handlers/main.py ----------------------------------------------------------------


FUNCTIONS_FRAMEWORK_ENV = ("FUNCTION_TARGET", "FUNCTION_NAME", "FUNCTION_SIGNATURE_TYPE", "FUNCTION_TRIGGER_TYPE")


def load_function(
    monkeypatch: pytest.MonkeyPatch, source: str, target: str, environ: Mapping[str, str], *, unset: Sequence[str] = ()
) -> tuple[flask.Flask, ModuleType]:
    """`target` as functions-framework serves it, `source` (a file of the repository) imported under
    `environ`, with the variables in `unset` absent."""
    # functions-framework sets the FUNCTION_* variables itself: deleted first, they are undone after the test.
    for name in (*FUNCTIONS_FRAMEWORK_ENV, *unset, "K_REVISION", "K_CONFIGURATION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    # The module configures process-wide logging and telemetry; neither belongs in a unit test run.
    monkeypatch.setattr(logs, "configure", lambda *args, **kwargs: None)
    monkeypatch.setattr(telemetry_setup, "setup", lambda *args, **kwargs: None)
    # functions-framework appends the file's folder to sys.path and registers it as a top-level
    # module; both are undone after the test.
    module_name = Path(source).stem
    monkeypatch.setattr(sys, "path", [*sys.path])
    monkeypatch.setitem(sys.modules, module_name, None)
    app = functions_framework.create_app(target=target, source=str(REPO_ROOT / source))
    return app, sys.modules[module_name]


def serve_job_status(monkeypatch: pytest.MonkeyPatch, environ: Mapping[str, str]) -> tuple[flask.Flask, ModuleType]:
    """The job_status target as functions-framework serves it, handlers/main.py imported under `environ`."""
    return load_function(
        monkeypatch, "handlers/main.py", "job_status", environ, unset=("RELAY_PUSH_AUTH", "RELAY_PUSH_AUDIENCE")
    )


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, endpoint: FakeGoogle) -> flask.testing.FlaskClient:
    """The job_status target as deployed (no audience pinned), its certificates from `endpoint`."""
    environ = {"RELAY_PROJECT": "unit-test-project", "FUNCTION_TARGET": "job_status"}
    app, module = serve_job_status(monkeypatch, {**environ, "RELAY_PUSH_SERVICE_ACCOUNT": SERVICE_ACCOUNT})
    assert module.SETTINGS.push == FROM_HOST
    monkeypatch.setattr(module, "PUSH_AUTH", PushAuthenticator(module.SETTINGS.push, certs=GoogleCerts(endpoint)))
    return app.test_client()


ENVELOPE = json.dumps(
    {
        "message": {
            "data": base64.b64encode(b'{"id": "p1", "status": "succeeded"}').decode(),
            "attributes": {"prediction_id": "p1", "status": "succeeded", "webhook_id": "msg_1", "source": "webhook"},
            "messageId": "1",
        },
        "subscription": "projects/unit-test-project/subscriptions/job-status",
    }
)


def test_the_push_handler_refuses_a_request_without_a_token_before_reading_it(
    client: flask.testing.FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    # A well-formed envelope: were it processed, the handler would try to reach Firestore.
    response = client.post("/", data=ENVELOPE, content_type="application/json")

    assert response.status_code == 401
    assert response.get_json()["error"] == "missing_token"
    [record] = [record for record in caplog.records if record.name == "relay.handlers"]
    assert record.levelno == logging.WARNING
    assert record.fields["reason"] == "missing_token"  # type: ignore[attr-defined]


def test_the_push_handler_lets_pubsubs_token_for_its_own_url_through(
    client: flask.testing.FlaskClient,
) -> None:
    token = mint(aud="https://job-status.example.run.app")

    # A body that is no envelope: answered by the envelope check, which comes after authentication.
    response = client.post(
        "/", data=b"{}", headers={"Authorization": f"Bearer {token}"}, base_url="https://job-status.example.run.app"
    )

    assert response.get_json()["error"] == "bad_envelope"
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("token", "reason", "status"),
    [
        pytest.param(mint(aud="https://job-status.example.run.app"), "wrong_audience", 403, id="other-host"),
        pytest.param(mint(aud="https://localhost", key=OTHER_KEY), "invalid_token", 401, id="other-key"),
        pytest.param(mint(aud="https://localhost", email="x@evil.example"), "wrong_sender", 403, id="sender"),
        pytest.param(mint(aud="https://localhost") + ".extra", "malformed_token", 401, id="four-segments"),
    ],
)
def test_a_refused_token_never_reaches_the_log_line_or_the_answer(
    client: flask.testing.FlaskClient,
    caplog: pytest.LogCaptureFixture,
    token: str,
    reason: str,
    status: int,
) -> None:
    response = client.post("/", data=ENVELOPE, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == status
    [record] = [record for record in caplog.records if record.name == "relay.handlers"]
    assert record.fields["reason"] == reason  # type: ignore[attr-defined]
    signature = token.split(".")[2]
    for shown in (caplog.text, repr(record.__dict__), record.getMessage(), response.get_data(as_text=True)):
        assert token not in shown
        assert signature not in shown
