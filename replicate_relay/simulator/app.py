"""The simulator's HTTP face: Replicate's /v1 API (predictions, trainings), output files under /files, and /_sim
controls for tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from replicate_relay.simulator.errors import ApiError, InvalidFields
from replicate_relay.simulator.files import WEIGHTS_NAME, content_type, file_bytes, weights_chunks
from replicate_relay.simulator.requests import parse_create, parse_training
from replicate_relay.simulator.settings import number
from replicate_relay.simulator.state import Simulator

MAX_BODY_BYTES = 1024 * 1024
MAX_WAIT_SECONDS = 60
_PREFER_WAIT = re.compile(r"\s*wait(?:\s*=\s*(\d{1,3}))?\s*")
# The handlers that create work: Replicate limits them apart (600 a minute, against 3,000 for the rest).
CREATES = frozenset({"create_prediction", "create_training"})

Handler = Callable[[Request], Awaitable[Response]]


def create_app(simulator: Simulator) -> Starlette:
    """The ASGI app; its lifespan starts the webhook client and cancels every task on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await simulator.start()
        try:
            yield
        finally:
            await simulator.stop()

    api = _authenticated
    routes = [
        Route("/v1/predictions", api(create_prediction), methods=["POST"]),
        Route("/v1/predictions", api(list_predictions), methods=["GET"]),
        Route("/v1/predictions/{id}", api(get_prediction), methods=["GET"]),
        Route("/v1/predictions/{id}/cancel", api(cancel_prediction), methods=["POST"]),
        Route("/v1/models/{owner}/{name}/predictions", api(create_prediction), methods=["POST"]),
        Route("/v1/deployments/{owner}/{name}/predictions", api(create_prediction), methods=["POST"]),
        Route("/v1/models/{owner}/{name}/versions/{version_id}/trainings", api(create_training), methods=["POST"]),
        Route("/v1/trainings/{id}", api(get_training), methods=["GET"]),
        Route("/v1/trainings/{id}/cancel", api(cancel_training), methods=["POST"]),
        Route("/v1/webhooks/default/secret", api(webhook_secret), methods=["GET"]),
        Route("/p/{id}", get_prediction, methods=["GET"]),  # the `web` URL: public, JSON here
        Route("/files/{id}/{name}", output_file, methods=["GET"]),
        Route("/_sim/health", health, methods=["GET"]),
        Route("/_sim/config", config, methods=["GET", "POST"]),
        Route("/_sim/reset", reset, methods=["POST"]),
        Route("/_sim/advance", advance, methods=["POST"]),
        Route("/_sim/predictions/{id}/deliveries", deliveries, methods=["GET"]),
        Route("/_sim/trainings/{id}/deliveries", deliveries, methods=["GET"]),
        Route("/_sim/stats", stats, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.simulator = simulator
    return app


def _sim(request: Request) -> Simulator:
    simulator: Simulator = request.app.state.simulator
    return simulator


# Replicate's API ------------------------------------------------------------------------------


async def create_prediction(request: Request) -> Response:
    """POST /v1/predictions, /v1/models/{owner}/{name}/predictions, /v1/deployments/{owner}/{name}/predictions;
    a `Cancel-After` header sets the prediction's deadline."""
    sim = _sim(request)
    params = request.path_params
    model = f"{params['owner']}/{params['name']}" if "owner" in params else None
    create = parse_create(await _json(request), model=model, cancel_after=request.headers.get("cancel-after"))
    run = sim.create(create, _base_url(request))
    wait = _prefer_wait(request.headers.get("prefer"))
    if wait:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.terminal.wait(), wait)
    return JSONResponse(sim.to_json(run.prediction), status_code=201)


async def get_prediction(request: Request) -> Response:
    sim = _sim(request)
    return JSONResponse(sim.to_json(sim.run(request.path_params["id"]).prediction))


async def cancel_prediction(request: Request) -> Response:
    """`canceled` at once, and the completed webhook follows; a final prediction is answered unchanged (200)."""
    sim = _sim(request)
    run = sim.run(request.path_params["id"])
    run.cancel()
    return JSONResponse(sim.to_json(run.prediction))


async def create_training(request: Request) -> Response:
    """POST /v1/models/{owner}/{name}/versions/{version_id}/trainings: 201 with the starting training."""
    sim = _sim(request)
    params = request.path_params
    model = f"{params['owner']}/{params['name']}"
    create = parse_training(await _json(request), model=model, version=params["version_id"])
    return JSONResponse(sim.to_json(sim.create(create, _base_url(request)).prediction), status_code=201)


async def get_training(request: Request) -> Response:
    sim = _sim(request)
    return JSONResponse(sim.to_json(sim.run(request.path_params["id"], "training").prediction))


async def cancel_training(request: Request) -> Response:
    """As a prediction's cancel: `canceled` at once; a final training is answered unchanged."""
    sim = _sim(request)
    run = sim.run(request.path_params["id"], "training")
    run.cancel()
    return JSONResponse(sim.to_json(run.prediction))


async def list_predictions(request: Request) -> Response:
    """Newest first, `page_size` (a /_sim/config switch) a page; `next` and `previous` are full URLs
    carrying the cursor, as the client expects. A prediction created meanwhile shifts the offsets by
    one, so a walk may see an entry twice but never misses one."""
    sim = _sim(request)
    cursor = request.query_params.get("cursor", "0")
    if not cursor.isdigit():
        raise ApiError(400, "cursor is not valid")
    start = int(cursor)
    size = sim.config.page_size
    newest_first = [run for run in reversed(sim.runs.values()) if run.prediction.request.kind == "prediction"]
    base = _base_url(request)
    return JSONResponse(
        {
            "next": f"{base}/v1/predictions?cursor={start + size}" if start + size < len(newest_first) else None,
            "previous": f"{base}/v1/predictions?cursor={max(start - size, 0)}" if start else None,
            "results": [sim.to_json(run.prediction) for run in newest_first[start : start + size]],
        }
    )


async def webhook_secret(request: Request) -> Response:
    return JSONResponse({"key": _sim(request).secrets[0]})


async def output_file(request: Request) -> Response:
    """GET /files/{id}/{name}: the bytes, until file_ttl_seconds after completion by the simulator clock.
    A training's weights are streamed, with their Content-Length."""
    sim = _sim(request)
    run = sim.runs.get(request.path_params["id"])
    name = request.path_params["name"]
    if run is None or name not in run.prediction.files:
        raise ApiError(404, "Not found.")
    prediction = run.prediction
    if prediction.expired(now=sim.clock.now(), ttl=sim.config.file_ttl_seconds):
        raise ApiError(404, "Not found: output files are removed file_ttl_seconds after completion.")
    if name == WEIGHTS_NAME:
        size = prediction.request.behaviour.weights_bytes
        return StreamingResponse(
            weights_chunks(prediction.id, size), media_type=content_type(name), headers={"content-length": str(size)}
        )
    body = file_bytes(prediction.id, name, prediction.request.behaviour.file_bytes)
    return Response(body, media_type=content_type(name))


# Controls for tests and the demo ----------------------------------------------------------------


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "predictions": len(_sim(request).runs)})


async def config(request: Request) -> Response:
    """GET the switches; POST a JSON object of some of them to change them at once."""
    sim = _sim(request)
    if request.method == "POST":
        changes = await _json(request)
        if not isinstance(changes, dict):
            raise ApiError(400, "the request body must be a JSON object")
        sim.configure(changes)
    return JSONResponse(sim.config.to_json())


async def reset(request: Request) -> Response:
    sim = _sim(request)
    sim.reset()
    return JSONResponse(sim.config.to_json())


async def advance(request: Request) -> Response:
    """POST {"seconds": n}: move the simulator clock forward (file expiry, data removal)."""
    sim = _sim(request)
    body = await _json(request)
    try:
        seconds = number(body.get("seconds") if isinstance(body, dict) else None, low=0.0, high=1e9)
    except ValueError as error:
        raise InvalidFields([("seconds", str(error))]) from None
    sim.clock.advance(seconds)
    return JSONResponse({"offset_seconds": sim.clock.offset, "now": sim.clock.now()})


async def deliveries(request: Request) -> Response:
    """Every webhook attempt of one prediction or training, and how its completed webhook ended."""
    sim = _sim(request)
    run = sim.run(request.path_params["id"], None)
    return JSONResponse(
        {
            "prediction_id": run.prediction.id,
            "status": run.prediction.status,
            "final": run.notifier.final,
            "in_flight": run.notifier.in_flight,
            "deliveries": [delivery.to_json() for delivery in run.notifier.deliveries],
        }
    )


async def stats(request: Request) -> Response:
    """The /v1 API calls received since start, by handler (`create_prediction`, `get_prediction`, …) and,
    for calls whose path names a prediction, by prediction. The public `web` URL (/p/{id}) is not counted."""
    return JSONResponse(_sim(request).stats())


# Helpers ----------------------------------------------------------------------------------------


def _authenticated(handler: Handler) -> Handler:
    """Any non-empty `Bearer` or `Token` credential is accepted; none is a 401, as on Replicate.
    While the `throttle_requests` switch counts down, requests in its `throttle_scope` (all, or the creates) are
    throttled as Replicate does, with `throttle_retry_after_seconds` as their Retry-After.
    Every call is counted first (GET /_sim/stats), refused ones too: each is a request Replicate serves."""

    async def guarded(request: Request) -> Response:
        _sim(request).count_call(handler.__name__, request.path_params.get("id"))
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "token") or not token.strip():
            raise ApiError(401, "You did not pass a valid authentication token", title="Unauthenticated")
        sim = _sim(request)
        config = sim.config
        if config.throttle_requests > 0 and (config.throttle_scope == "all" or handler.__name__ in CREATES):
            sim.configure({"throttle_requests": config.throttle_requests - 1})
            wait = config.throttle_retry_after_seconds
            raise ApiError(
                429, f"Request was throttled. Your rate limit resets in ~{wait}s.", headers={"Retry-After": str(wait)}
            )
        return await handler(request)

    return guarded


async def _json(request: Request) -> Any:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise ApiError(400, "the request body is not valid JSON") from None


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; taken in, they could never be written back out.
    raise ValueError(f"{name} is not JSON")


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _prefer_wait(header: str | None) -> float:
    """Seconds to hold a create request for `Prefer: wait[=n]` (the client's run() sends it); 0 without it."""
    match = _PREFER_WAIT.fullmatch(header or "")
    if match is None:
        return 0.0
    return float(min(int(match.group(1) or MAX_WAIT_SECONDS), MAX_WAIT_SECONDS))


async def _api_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)  # noqa: S101 - registered for ApiError only
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _http_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)  # noqa: S101 - registered for HTTPException only
    return JSONResponse({"detail": error.detail, "status": error.status_code}, status_code=error.status_code)
