"""The image's entry point: functions-framework's app and server, with the gunicorn settings Cloud Run needs.

`python -m functions_framework` offers no way to pass gunicorn settings, and three of its defaults
are wrong for a Cloud Run container that runs as a user without a home, on a read-only root:

- gunicorn's control socket goes to `$HOME/.gunicorn/`, which that user cannot create (each start
  would log `[ERROR] Control server error`). Relay does not use `gunicornc`, so the socket is off.
- each worker's heartbeat file goes to the temporary directory; `/dev/shm` is memory on Cloud
  Run and in any container, so no writable `/tmp` is needed.
- after SIGTERM, workers get `graceful_timeout` (30 s by default) to finish in-flight requests and
  flush their telemetry, but Cloud Run sends SIGKILL 10 s after SIGTERM. 8 s leaves the arbiter
  time to exit before that.
- uvicorn's worker (the receiver's), once its graceful shutdown is done, raises the SIGTERM it
  caught again with the default action, so the process would die of it before any exit handler
  ran, losing the receiver's last spans and metrics at each scale-down. `UvicornWorker` below
  makes that second SIGTERM a normal exit.

Everything else is functions-framework's, read from the same variables as its own command line:
FUNCTION_TARGET, FUNCTION_SOURCE, FUNCTION_SIGNATURE_TYPE, FUNCTION_USE_ASGI, HOST, PORT.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import flask
import uvicorn_worker

from replicate_relay.config import ConfigError, Env, load_or_exit

T = TypeVar("T")


class BoundedBody:
    """A request body read in pieces and refused past `limit` bytes as soon as that shows: by its
    declared length before anything is read, then while reading (a chunked body declares none).
    `too_large(size)` is the error to raise, `size` the declared length or None.

    The pieces go into one growing buffer whose bytes `joined()` hands out without copying them
    (BytesIO shares its buffer when nothing else holds it): a body is in memory once, not twice."""

    def __init__(self, limit: int, too_large: Callable[[int | None], Exception], *, declared: int | None) -> None:
        if declared is not None and declared > limit:
            raise too_large(declared)
        self._limit, self._too_large = limit, too_large
        self._buffer = io.BytesIO()
        self._size = 0

    def add(self, piece: bytes) -> None:
        self._size += len(piece)
        if self._size > self._limit:
            raise self._too_large(None)
        self._buffer.write(piece)

    def joined(self) -> bytes:
        return self._buffer.getvalue()


class PerProcess(Generic[T]):
    """What a serving process makes on first use and then shares between its threads: its Google
    clients, whose gRPC channels must not be opened before gunicorn forks the worker. A failure is
    raised again on the next use rather than remembered."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._value: T | None = None

    def get(self) -> T:
        with self._lock:
            if self._value is None:
                self._value = self._make()
            return self._value


HEALTH_PATH = (
    "/health"  # every service answers GET here with 200 once it serves (Cloud Run reserves paths ending in "z")
)
GRACEFUL_SECONDS = 8  # Cloud Run kills a container 10 s after SIGTERM
WORKER_TMP_DIR = "/dev/shm"  # noqa: S108 - memory-backed in every container; the root may be read-only


@dataclass(frozen=True)
class ServeSettings:
    """Which function to serve, and where."""

    target: str
    source: str
    signature_type: str = "http"
    asgi: bool = False
    host: str = "0.0.0.0"  # noqa: S104 - Cloud Run routes to the container's port on every interface
    port: int = 8080

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServeSettings:
        env = Env(environ)
        asgi = (env.get_optional("FUNCTION_USE_ASGI") or "false").lower()
        if asgi not in {"true", "false"}:
            raise ConfigError(f"FUNCTION_USE_ASGI must be true or false, got {asgi!r}")
        return cls(
            target=env.get_str("FUNCTION_TARGET"),
            source=env.get_str("FUNCTION_SOURCE"),
            signature_type=env.get_str("FUNCTION_SIGNATURE_TYPE", "http"),
            asgi=asgi == "true",
            host=env.get_str("HOST", cls.host),
            port=env.get_int("PORT", cls.port, minimum=1),
        )


def flask_health(request: flask.Request) -> flask.Response | None:
    """200 for `GET /health` (the startup probe's path), None for every other request."""
    if request.path != HEALTH_PATH:
        return None
    if request.method not in ("GET", "HEAD"):
        return flask.Response("only GET and HEAD\n", status=405, headers={"Allow": "GET, HEAD"}, mimetype="text/plain")
    return flask.Response("ok\n", mimetype="text/plain")


def flask_headers(request: flask.Request) -> dict[str, str]:
    """The request's headers with lower-case names, as the trace propagators look them up: Werkzeug
    title-cases them (`Traceparent`), and the W3C propagator finds only `traceparent`."""
    return {name.lower(): value for name, value in request.headers.items()}


class UvicornWorker(uvicorn_worker.UvicornWorker):  # type: ignore[misc]
    """uvicorn's gunicorn worker, whose exit after SIGTERM or SIGINT runs the exit handlers."""

    def init_signals(self) -> None:
        super().init_signals()
        # uvicorn installs its own handlers while it serves and puts these back afterwards; then it
        # raises the signal it caught once more, which now ends the process as sys.exit(0) does.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _exit_normally)


def _exit_normally(signum: int, frame: object) -> None:
    sys.exit(0)


def gunicorn_options(*, asgi: bool, worker_tmp_dir: str | None = WORKER_TMP_DIR) -> dict[str, Any]:
    """The settings added to functions-framework's own (see the module docstring for each)."""
    options: dict[str, Any] = {"control_socket_disable": True, "graceful_timeout": GRACEFUL_SECONDS}
    if asgi:
        options["worker_class"] = (
            "replicate_relay.serve.UvicornWorker"  # by name: `python -m` runs this file as __main__
        )
    if worker_tmp_dir is not None and os.path.isdir(worker_tmp_dir):
        options["worker_tmp_dir"] = worker_tmp_dir
    return options


def main(environ: Mapping[str, str] = os.environ) -> None:
    """Build the function's app as functions-framework does and serve it under gunicorn."""
    import functions_framework  # noqa: PLC0415 - only the serving process needs it
    from functions_framework._http import create_server  # noqa: PLC0415

    settings = load_or_exit(lambda: ServeSettings.from_env(environ), "serve")
    if settings.asgi:
        from functions_framework.aio import create_asgi_app  # noqa: PLC0415

        app: Any = create_asgi_app(settings.target, settings.source, settings.signature_type)  # type: ignore[no-untyped-call]
    else:
        app = functions_framework.create_app(settings.target, settings.source, settings.signature_type)  # type: ignore[no-untyped-call]
    server = create_server(app, False, **gunicorn_options(asgi=settings.asgi))  # type: ignore[no-untyped-call]
    server.run(settings.host, settings.port)


if __name__ == "__main__":
    main()
