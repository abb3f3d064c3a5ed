"""App push endpoints: the local stack's (relay dev --app-endpoint), checked as Terraform checks
them except that plain http is allowed to loopback, where local apps run; and docs/APP.md's
example of how an app verifies a push."""

from __future__ import annotations

import contextlib
import io
import re
import time
from pathlib import Path
from typing import Any

import google.auth.exceptions
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from replicate_relay.cli import _parser
from replicate_relay.config import ConfigError
from replicate_relay.jobevents import job_event
from replicate_relay.jobs import Job
from replicate_relay.topology import app_endpoint, app_filter, parse_app_endpoint
from tests.unit.test_push_auth import FakeGoogle, mint


@pytest.mark.parametrize(
    "url",
    [
        "https://orders.example.com/relay/job-events",
        "http://127.0.0.1:9000/events",
        "http://localhost:9000/",
        "http://[::1]:9000/events",
        "http://127.0.0.2:9000",
    ],
)
def test_https_anywhere_and_http_to_loopback_are_accepted(url: str) -> None:
    assert app_endpoint("orders-app", url).url == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://orders.example.com/relay", "not loopback"),
        ("http://10.0.0.5:9000/", "not loopback"),
        ("ftp://127.0.0.1/", "not an http"),
        ("127.0.0.1:9000", "not an http"),
        ("https://user:secret@orders.example.com/", "user info"),
        ("https://orders.example.com/#frag", "fragment"),
        ("http://127.0.0.1:99999/", "not a URL"),
    ],
)
def test_other_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        app_endpoint("orders-app", url)


@pytest.mark.parametrize("name", ["ab", "1orders", "orders app", "google-orders", "a/b"])
def test_names_follow_terraforms_rule(name: str) -> None:
    with pytest.raises(ConfigError, match="name"):
        app_endpoint(name, "https://orders.example.com/")


def test_name_equals_url_is_split_at_the_first_equals_sign() -> None:
    endpoint = parse_app_endpoint("orders-app=http://127.0.0.1:9000/events?kind=job")
    assert (endpoint.name, endpoint.url, endpoint.dead_letter) == (
        "orders-app",
        "http://127.0.0.1:9000/events?kind=job",
        "orders-app-dead-letter",
    )
    with pytest.raises(ConfigError, match="NAME=URL"):
        parse_app_endpoint("http://127.0.0.1:9000/")


def test_relay_dev_takes_app_endpoints_repeatedly_and_refuses_a_public_http_one() -> None:
    args = _parser().parse_args(
        ["dev", "--app-endpoint", "orders=http://127.0.0.1:9000/", "--app-endpoint", "mail=https://m.example.com/"]
    )
    assert [(e.name, e.url) for e in args.app_endpoint] == [
        ("orders", "http://127.0.0.1:9000/"),
        ("mail", "https://m.example.com/"),
    ]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit):
        _parser().parse_args(["dev", "--app-endpoint", "orders=http://orders.example.com/"])
    assert "not loopback" in stderr.getvalue()


def _app_md_python_verifier() -> dict[str, Any]:
    """docs/APP.md's Python example of verifying a push, run as written."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "APP.md").read_text(encoding="utf-8")
    [source] = [
        block for block in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL) if "def verify_push" in block
    ]
    namespace: dict[str, Any] = {}
    exec(compile(source, "docs/APP.md", "exec"), namespace)  # noqa: S102 - the repository's own documentation
    namespace["_request"] = FakeGoogle()  # Google's certificate endpoint, serving the test key's
    return namespace


def test_app_mds_python_verification_accepts_the_push_token_and_refuses_any_other() -> None:
    app = _app_md_python_verifier()
    verify = app["verify_push"]
    ours = {"aud": app["AUDIENCE"], "email": app["PUSHER"]}
    verify(f"Bearer {mint(**ours)}")
    refused: list[tuple[dict[str, Any], type[Exception]]] = [
        ({**ours, "email": "someone@evil.iam.gserviceaccount.com"}, PermissionError),
        ({**ours, "email_verified": False}, PermissionError),
        ({**ours, "aud": "https://other-app.example.com/relay/job-events"}, ValueError),
        ({**ours, "iss": "https://evil.example.com"}, google.auth.exceptions.GoogleAuthError),
        ({**ours, "exp": int(time.time()) - 600}, ValueError),
    ]
    for claims, error in refused:
        with pytest.raises(error):
            verify(f"Bearer {mint(**claims)}")
    with pytest.raises(ValueError, match="signature"):  # signed by a key that is not Google's
        verify(f"Bearer {mint(key=rsa.generate_private_key(public_exponent=65537, key_size=2048), **ours)}")
    for header in (None, "", "Basic dXNlcjpwYXNz"):
        with pytest.raises(PermissionError):
            verify(header)


# ---- apps kept apart: the `app` attribute and the subscription filter on it ----

ORDERS = "orders@relay-prod.iam.gserviceaccount.com"
APPS_TF = Path(__file__).resolve().parents[2] / "infra" / "terraform" / "apps.tf"


def test_a_job_event_carries_its_jobs_app_as_an_attribute_and_none_without_one() -> None:
    final = Job(job_id="j1", prediction_id="p1", state="succeeded")
    assert job_event(final.model_copy(update={"app": ORDERS}))[1]["app"] == ORDERS
    assert "app" not in job_event(final)[1]  # a CLI or webhook job: only unfiltered subscriptions get it


def test_the_local_filter_is_the_one_terraform_writes_for_app_subscription_apps() -> None:
    [template] = re.findall(r"filter\s*=.*\? \"(.*)\" : null", APPS_TF.read_text(encoding="utf-8"))
    terraform = template.replace('\\"', '"').replace("${var.app_subscription_apps[each.key]}", ORDERS)
    assert app_filter(ORDERS) == terraform == f'attributes.app = "{ORDERS}"'


@pytest.mark.parametrize("app", [f"serviceAccount:{ORDERS}", 'x"@y.com', "x@y.com\\", "no-at-sign", "a b@c.d"])
def test_an_app_that_is_not_a_plain_email_is_refused_before_it_reaches_a_filter(app: str) -> None:
    with pytest.raises(ConfigError, match="e-mail"):
        app_endpoint("orders-app", "https://o.example.com/", app=app)


def test_an_app_endpoint_may_name_its_app_and_so_gets_its_filter() -> None:
    endpoint = parse_app_endpoint(f"orders-app=http://127.0.0.1:9000/events@@{ORDERS}")
    assert (endpoint.url, endpoint.app, endpoint.filter) == ("http://127.0.0.1:9000/events", ORDERS, app_filter(ORDERS))
    assert parse_app_endpoint("orders-app=http://127.0.0.1:9000/").filter is None  # every event, as before
