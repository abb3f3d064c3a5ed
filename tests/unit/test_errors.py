"""replicate_relay/errors.py: one tree of every error, its reason codes and statuses, the one transient set."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import google.auth.exceptions
import pytest
import requests
from google.api_core import exceptions as google_exceptions

import api
import handlers
import receiver
import replicate_relay
from api import errors as api_errors
from handlers import archive_outputs, job_status
from handlers import errors as handler_errors
from receiver import errors as receiver_errors
from replicate_relay import (
    archive,
    client,
    config,
    downloads,
    errors,
    events,
    oidc,
    publisher,
    replicate_api,
    submit,
    values,
    webhooks,
)
from replicate_relay.errors import RelayError
from replicate_relay.events import EventAttributes, Prediction, PredictionEvent, Source
from replicate_relay.jobs import Job
from replicate_relay.ops import errors as ops_errors
from tests.unit.test_api import ENV, serve, token

JOB = Job(job_id="j1", prediction_id="p1", source="submit", state="failed", error="CUDA OOM", error_code="model_error")

# Modules an import would start a service from (they read their settings at import): not walked.
SERVICE_ENTRY_POINTS = {"receiver.main", "handlers.main", "api.main", "replicate_relay.__main__"}
# Tooling with errors of its own, never raised by Relay's services nor caught by an app.
TOOLING = ("replicate_relay.simulator", "replicate_relay.devstack", "replicate_relay.traceview")
# Raised and caught inside one function, never crossing a module: a ValueError is what they are.
LOCAL = {"api.listing.InvalidCursor"}


def modules() -> Iterator[ModuleType]:
    for package in (replicate_relay, receiver, handlers, api):
        yield package
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name not in SERVICE_ENTRY_POINTS and not info.name.startswith(TOOLING):
                yield importlib.import_module(info.name)


def defined_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined (not merely imported) in the walked modules, by qualified name."""
    found: dict[str, type[BaseException]] = {}
    for module in modules():
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = value
    return found


def tree() -> list[type[RelayError]]:
    return [value for value in vars(errors).values() if inspect.isclass(value) and issubclass(value, RelayError)]


# ---- one tree in one module ----


def test_every_error_is_defined_in_errors_py_and_derives_from_relay_error() -> None:
    elsewhere = {
        name: kind
        for name, kind in defined_exceptions().items()
        if name != "replicate_relay.errors." + kind.__name__
        and not kind.__name__.startswith("_")
        and name not in LOCAL
        and not issubclass(kind, api_errors.ApiError)  # the API's problem types: errors.py says why they stay
    }
    assert elsewhere == {}
    in_errors_py = [
        value for value in vars(errors).values() if inspect.isclass(value) and value.__module__ == errors.__name__
    ]
    assert in_errors_py == tree()  # every class there is an error, and derives from RelayError


def test_the_api_problem_types_are_a_branch_of_the_tree() -> None:
    assert issubclass(api_errors.ApiError, RelayError)
    for kind in api_errors.ALL_PROBLEMS:
        problem = kind("detail")
        assert (problem.reason, problem.message, str(problem)) == (kind.slug, "detail", "detail")


def test_the_docstring_draws_every_class_of_the_tree() -> None:
    drawn = errors.__doc__ or ""
    assert drawn.splitlines()[2].startswith("RelayError ")  # the root
    missing = [kind.__name__ for kind in tree()[1:] if f"── {kind.__name__} " not in drawn]
    assert missing == []
    assert drawn.count("── ") == len(tree())  # and ApiError, drawn where it lives


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (config, ["ConfigError"]),
        (ops_errors, ["OpsError"]),
        (webhooks, ["VerificationError"]),
        (events, ["PayloadError"]),
        (oidc, ["CertsUnavailable", "TokenRejected"]),
        (publisher, ["PublishError"]),
        (replicate_api, ["ReplicateAPIError"]),
        (
            downloads,
            ["DownloadError", "DownloadRefused", "DownloadGone", "DownloadUnavailable", "DownloadFailed"],
        ),
        (archive, ["ArchiveConflict"]),
        (values, ["Unstorable"]),
        (submit, ["SubmitFailed"]),
        (client, ["JobFailed", "JobWaitTimeout", "JobGone", "ClientClosed"]),
        (receiver_errors, receiver_errors.__all__),
        (handler_errors, handler_errors.__all__),
    ],
    ids=lambda value: value.__name__ if isinstance(value, ModuleType) else "",
)
def test_each_error_is_still_importable_from_where_it_was(module: ModuleType, names: list[str]) -> None:
    assert all(getattr(module, name) is getattr(errors, name) for name in names)


def test_what_an_app_catches_keeps_its_standard_base_too() -> None:
    assert issubclass(errors.JobGone, LookupError)
    assert issubclass(errors.JobNotFound, LookupError)
    assert issubclass(errors.JobWaitTimeout, TimeoutError)
    assert issubclass(errors.ClientClosed, RuntimeError)
    assert issubclass(errors.OpsError, errors.ConfigError)
    timeout = errors.JobWaitTimeout("j1", 2.5, JOB)
    assert (str(timeout), timeout.last_state) == ("job j1 has not ended after 2.5 s (last seen: failed)", "failed")


# ---- reason codes and statuses ----


@pytest.mark.parametrize(
    ("error", "reason", "message"),
    [
        (errors.ConfigError("RELAY_PROJECT is required"), "invalid_config", "RELAY_PROJECT is required"),
        (errors.OpsError("no Google credentials"), "operator_error", "no Google credentials"),
        (errors.VerificationError("signature_mismatch", "no match", malformed=False), "signature_mismatch", "no match"),
        (errors.PayloadError("missing_id", "body has no id"), "missing_id", "body has no id"),
        (errors.TokenRejected("wrong_audience", "not for us", status=403), "wrong_audience", "not for us"),
        (errors.CertsUnavailable("HTTP 500"), "certs_unavailable", "HTTP 500"),
        (errors.PublishError("deadline"), "publish_failed", "deadline"),
        (errors.ReplicateAPIError("no such model", status=404), "replicate_refused", "no such model"),
        (errors.ReplicateAPIError("overloaded", status=503), "replicate_unavailable", "overloaded"),
        (errors.ReplicateAPIError("rate limited", status=429), "replicate_unavailable", "rate limited"),
        (errors.ReplicateAPIError("unreachable", status=None), "replicate_unavailable", "unreachable"),
        (errors.DownloadGone("output_expired", "gone", url="https://x/a"), "output_expired", "gone"),
        (errors.DownloadFailed("timeout", "slow", url="https://x/a"), "timeout", "slow"),
        (errors.ArchiveConflict("another object"), "archive_conflict", "another object"),
        (errors.Unstorable("too large"), "unstorable", "too large"),
        (errors.SubmitFailed(JOB, "Replicate said 422"), "submit_failed", "Replicate said 422"),
        (errors.JobFailed(JOB), "job_failed", "job j1 failed (model_error): CUDA OOM"),
        (errors.JobGone("deleted"), "job_gone", "deleted"),
        (errors.JobNotFound("no job j9"), "job_not_found", "no job j9"),
        (errors.JobAlreadyFinal(JOB), "job_final", "job j1 is final (failed): there is nothing to cancel"),
        (
            errors.JobWaitTimeout("j1", 1, None),
            "wait_timeout",
            "job j1 has not ended after 1 s (last seen: no such job yet)",
        ),
        (errors.ClientClosed("closed"), "client_closed", "closed"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "",
)
def test_each_error_carries_a_stable_reason_and_its_message(error: RelayError, reason: str, message: str) -> None:
    assert (error.reason, error.message, str(error)) == (reason, message, message)


def test_replicate_api_error_says_whether_trying_later_can_help() -> None:
    assert [errors.ReplicateAPIError("", status=s).transient for s in (None, 400, 404, 422, 429, 500, 503)] == [
        True,
        False,
        False,
        False,
        True,
        True,
        True,
    ]


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (errors.BadRequest, 400),
        (errors.Unauthorized, 401),
        (errors.MethodNotAllowed, 405),
        (errors.PayloadTooLarge, 413),
        (errors.UnsupportedMediaType, 415),
        (errors.TooManyFailures, 429),
        (errors.PublishUnavailable, 503),
        (errors.HandlerError, 500),
        (errors.TransientError, 503),
        (errors.PermanentError, 200),
        (errors.Unauthenticated, 401),
    ],
)
def test_each_answer_of_a_service_carries_its_status(kind: Any, status: int) -> None:
    error = kind("some_reason", "a sentence")
    assert (error.status, error.reason, error.message, str(error)) == (
        status,
        "some_reason",
        "a sentence",
        "a sentence",
    )


def test_a_push_token_for_another_audience_is_a_403_and_a_receiver_refusal_may_be_a_verification() -> None:
    assert errors.Unauthenticated("wrong_audience", "not for us", status=403).status == 403
    assert errors.TokenRejected("missing_token", "no token").status == 401
    assert errors.Unauthorized("signature_mismatch", "no match", verification=True).verification
    assert not errors.BadRequest("body_too_large", "large").verification


# ---- the one set of transient errors, used by the push handlers and the API ----

TRANSIENT = [
    google_exceptions.ServiceUnavailable("Firestore is away"),
    google_exceptions.Aborted("contention"),
    requests.ConnectionError("reset"),
    google.auth.exceptions.TransportError("metadata server"),
    ConnectionError("refused"),
    TimeoutError("timed out"),
]


def test_the_transient_set_is_the_one_every_service_uses() -> None:
    expected = (
        google_exceptions.GoogleAPIError,
        requests.RequestException,
        google.auth.exceptions.TransportError,
        ConnectionError,
        TimeoutError,
    )
    assert expected == errors.TRANSIENT_ERRORS
    assert handler_errors.TRANSIENT_ERRORS is errors.TRANSIENT_ERRORS
    assert archive_outputs.TRANSIENT_ERRORS is errors.TRANSIENT_ERRORS


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda error: type(error).__name__)
def test_a_transient_error_is_retried_by_the_handlers(error: Exception) -> None:
    class Unavailable:
        def apply(self, event: PredictionEvent) -> None:
            raise error

    prediction = Prediction.model_validate({"id": "p1", "status": "processing"})
    event = PredictionEvent(EventAttributes("p1", "processing", "msg_1", 1, Source.WEBHOOK), prediction)
    with pytest.raises(errors.TransientError) as raised:
        job_status.apply(Unavailable(), event)  # type: ignore[arg-type]
    assert (raised.value.status, raised.value.reason) == (503, "firestore_unavailable")


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda error: type(error).__name__)
def test_a_transient_error_is_a_503_unavailable_problem_from_the_api(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    served = serve(monkeypatch, ENV)
    assert served.module.TRANSIENT_ERRORS is errors.TRANSIENT_ERRORS

    def unavailable(job_id: str) -> None:
        raise error

    monkeypatch.setattr(served.module._JOBS_API.get().store, "load", unavailable)
    response = served.client.get("/v1/jobs/j1", headers=token())
    assert response.status_code == 503
    assert response.get_json(force=True)["type"] == api_errors.problem_type("unavailable")
