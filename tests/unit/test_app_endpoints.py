"""App push endpoints for the local stack (relay dev --app-endpoint): checked as Terraform checks
them, except that plain http is allowed to loopback, where the local apps run."""

from __future__ import annotations

import contextlib
import io

import pytest

from relay.cli import _parser
from relay.config import ConfigError
from relay.topology import app_endpoint, parse_app_endpoint


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
