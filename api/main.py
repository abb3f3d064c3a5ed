"""functions-framework entry point (`--target api`): routes the request, maps errors to problem details.

Flask (functions-framework's default mode) rather than ASGI like the receiver: each request's work
is blocking calls (Firestore transactions, Replicate's HTTP API through the synchronous Submitter
and JobStore) that gunicorn's threads serve well; ASGI would only push them onto a thread pool.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import flask
import functions_framework
import google.cloud.storage as storage
from google.cloud import firestore
from opentelemetry.trace import SpanKind

from api import errors
from api.auth import DEV_CALLER_HEADER, ApiAuthenticator, Caller
from api.core import JOBS_PATH, TRAININGS_PATH, Answer, JobsApi
from api.idempotency import IdempotencyStore
from api.settings import ApiSettings
from replicate_relay import logs, telemetry, telemetry_setup
from replicate_relay.config import load_or_exit
from replicate_relay.errors import TRANSIENT_ERRORS
from replicate_relay.jobstore import JobStore
from replicate_relay.serve import BoundedBody, PerProcess, flask_headers, flask_health
from replicate_relay.submit import Submitter
from replicate_relay.values import ValueStore

log = logging.getLogger("relay.api")

SETTINGS = load_or_exit(lambda: ApiSettings.from_env(os.environ), "api")
logs.configure(SETTINGS.telemetry.service, level=SETTINGS.log_level, project=SETTINGS.project)
AUTH = ApiAuthenticator(SETTINGS.auth)
if SETTINGS.auth.mode == "oidc" and not SETTINGS.auth.invokers:
    # Not a start-up error: Terraform's default api_invokers is empty, and a service that cannot
    # start would fail the first `terraform apply`. It answers every request 403 until one is listed.
    log.warning("RELAY_API_INVOKERS is empty: every app's request will be refused (403); list them in api_invokers")

OPENAPI_PATH = "/v1/openapi.json"
_JOB_PATH = re.compile(r"^/v1/jobs/(?P<job_id>[^/]+)/?$")
_CANCEL_PATH = re.compile(r"^/v1/jobs/(?P<job_id>[^/]+)/cancel/?$")
_READ_CHUNK = 64 * 1024


def _make_api() -> JobsApi:
    client = firestore.Client(project=SETTINGS.project)
    bucket = storage.Client(project=SETTINGS.project).bucket(SETTINGS.bucket)
    store = JobStore(client, policy=SETTINGS.policy, values=ValueStore(bucket))
    return JobsApi(
        store=store,
        # No job-events publisher: the API's account has no Pub/Sub role. A submission
        # Replicate refuses is answered at once; the reconciler announces its job.
        submitter=Submitter.configured(store, SETTINGS.submit, job_events=None),
        idempotency=IdempotencyStore(
            client, retention=SETTINGS.idempotency_retention, lease=SETTINGS.idempotency_lease
        ),
        firestore=client,
    )


_JOBS_API = PerProcess(_make_api)


def api(request: flask.Request) -> flask.Response:
    """Every request of the API service: /health, then /v1/… behind the ID-token check."""
    health = flask_health(request)
    if health is not None:
        return health
    telemetry_setup.setup(SETTINGS.telemetry, instrument=("firestore", "httpx"))
    started = time.perf_counter()
    route = _route_name(request.path)
    with telemetry.tracer().start_as_current_span(
        f"{request.method} {route}",
        context=telemetry.extract_http(flask_headers(request)),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route},
    ) as span:
        caller: Caller | None = None
        try:
            caller = AUTH.authenticate(
                request.headers.get("Authorization"),
                host=request.host,
                dev_caller=request.headers.get(DEV_CALLER_HEADER),
            )
            response = _answer(_dispatch(request, caller))
        except errors.ApiError as error:
            response = problem_response(error, request.path)
        except TRANSIENT_ERRORS as error:
            log.warning("unavailable: %s", error)
            response = problem_response(errors.Unavailable(f"try again shortly: {type(error).__name__}"), request.path)
        except Exception:
            log.exception("request failed unexpectedly")
            response = problem_response(errors.InternalError("the API failed unexpectedly"), request.path)
        status = response.status_code
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            telemetry.mark_error(span, str(status))
        level = logging.WARNING if status >= 400 else logging.INFO
        log.log(
            level,
            "%s %s → %d",
            request.method,
            route,
            status,
            extra=logs.fields(
                http_status=status,
                route=route,
                caller=caller.app if caller else None,
                problem=response.headers.get("X-Relay-Problem"),
                latency_ms=round((time.perf_counter() - started) * 1000, 2),
            ),
        )
    if telemetry.flush_each_request():
        telemetry.flush()
    return response


def _unrouted(error: Exception) -> flask.Response:
    """functions-framework's own 404s, for the paths its route does not match (one holding a
    newline, say) or that it keeps for itself (/robots.txt, /favicon.ico): the API's problem too,
    never Flask's HTML page."""
    path = flask.request.path
    return problem_response(errors.NotFound(f"no such resource: {path[:200]}"), path)


# Registered on the app functions-framework is creating (a no-op when this module is imported alone).
functions_framework.errorhandler(404)(_unrouted)


def _dispatch(request: flask.Request, caller: Caller) -> Answer:
    path, method = request.path, request.method
    if path in (JOBS_PATH, JOBS_PATH + "/"):
        if method == "POST":
            return _JOBS_API.get().create(**_create_arguments(request), caller=caller)
        if method in ("GET", "HEAD"):
            return _JOBS_API.get().list(request.args, caller=caller)
        raise errors.MethodNotAllowed(f"{method} is not accepted here", headers={"Allow": "GET, HEAD, POST"})
    if path in (TRAININGS_PATH, TRAININGS_PATH + "/"):
        if method == "POST":
            return _JOBS_API.get().create_training(**_create_arguments(request), caller=caller)
        raise errors.MethodNotAllowed(f"{method} is not accepted here", headers={"Allow": "POST"})
    found = _JOB_PATH.match(path)
    if found:
        if method in ("GET", "HEAD"):
            return _JOBS_API.get().get(found["job_id"], caller=caller)
        raise errors.MethodNotAllowed(f"{method} is not accepted here", headers={"Allow": "GET, HEAD"})
    found = _CANCEL_PATH.match(path)
    if found:
        if method == "POST":
            # No body is read: a cancel carries none, and whatever is sent changes nothing.
            return _JOBS_API.get().cancel(found["job_id"], caller=caller)
        raise errors.MethodNotAllowed(f"{method} is not accepted here", headers={"Allow": "POST"})
    if path == OPENAPI_PATH and method in ("GET", "HEAD"):
        from api.openapi import document  # noqa: PLC0415 - only this route needs the generator

        return Answer(200, document())
    raise errors.NotFound(f"no such resource: {path[:200]}")


def _create_arguments(request: flask.Request) -> dict[str, Any]:
    """What a create reads of the request: the body (bounded), its Content-Type and Idempotency-Key."""
    return {
        "body": read_body(request, SETTINGS.max_body_bytes),
        "content_type": request.headers.get("Content-Type"),
        "idempotency_key": request.headers.get("Idempotency-Key"),
    }


def read_body(request: flask.Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes: by Content-Length before reading, and while
    reading (a chunked body has none)."""

    def too_large(size: int | None) -> errors.PayloadTooLarge:
        if size is None:
            return errors.PayloadTooLarge(f"the body is larger than {limit} bytes")
        return errors.PayloadTooLarge(f"the body is {size} bytes; at most {limit} are accepted")

    body = BoundedBody(limit, too_large, declared=request.content_length)
    while chunk := request.stream.read(_READ_CHUNK):
        body.add(chunk)
    return body.joined()


def _answer(answer: Answer) -> flask.Response:
    media_type = errors.PROBLEM_MEDIA_TYPE if answer.status >= 400 else "application/json"
    response = flask.Response(_json(answer.body), status=answer.status, mimetype=media_type)
    response.headers.update(dict(answer.headers))
    if answer.status >= 400:
        response.headers["X-Relay-Problem"] = str(answer.body.get("type", ""))
    return response


def problem_response(error: errors.ApiError, instance: str) -> flask.Response:
    """The one place an ApiError becomes an HTTP answer: RFC 9457 problem details."""
    response = flask.Response(
        _json(error.problem(instance[:500])), status=error.status, mimetype=errors.PROBLEM_MEDIA_TYPE
    )
    response.headers.update(error.headers)
    response.headers["X-Relay-Problem"] = error.type  # for the log line
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="relay-api"'
    return response


def _json(body: Mapping[str, Any]) -> bytes:
    """The body as UTF-8 JSON. A string holding a lone surrogate (a value that came as JSON's
    `\\ud800` escape, which json.loads lets through) cannot be encoded as UTF-8: such a body is
    written with every non-ASCII character escaped instead, which is the same JSON."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(body, separators=(",", ":")) + "\n").encode("ascii")


def _route_name(path: str) -> str:
    """The route template, for span names and logs (never the job id: unbounded cardinality)."""
    if path.rstrip("/") in (JOBS_PATH, TRAININGS_PATH):
        return path.rstrip("/")
    if _JOB_PATH.match(path):
        return JOBS_PATH + "/{job_id}"
    if _CANCEL_PATH.match(path):
        return JOBS_PATH + "/{job_id}/cancel"
    return path if path == OPENAPI_PATH else "(unknown)"
