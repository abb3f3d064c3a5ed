"""The local stand-in for a Pub/Sub subscription filter, which the emulator ignores (docs/EMULATORS.md).

In Google Cloud an app's subscription on job-events carries `attributes.app = "<e-mail>"`
(infra/terraform/apps.tf), and Pub/Sub acknowledges a message that does not match without ever
delivering it. The emulator delivers every message to every subscription, so the local stack
points an app's push subscription here instead: a message whose `app` attribute is that app's is
forwarded to the app's URL and answered with the app's status (so retries and dead-lettering
still follow the app's answers); any other is answered 204 and never reaches the app, as Pub/Sub
would drop it. The subscription still records the filter, so what the local stack provisions
reads as what Terraform makes.

It is tooling: never deployed. It evaluates the one form of filter Relay writes
(replicate_relay.topology.app_filter), no other.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

# The emulator waits for the push answer; the app's own handling must fit in the ack deadline.
_FORWARD_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Route:
    """An app subscription's filter (its app's e-mail) and the app's URL."""

    app: str
    url: str


class FilterGate:
    """One loopback HTTP server; `/{subscription}` is the push endpoint of that app subscription."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._routes: dict[str, Route] = {}
        # (subscription, job_id attribute, forwarded): what became of each push, for tests to wait on.
        self.decisions: list[tuple[str, str | None, bool]] = []
        self._lock = threading.Lock()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, answer = gate.handle(self.path.strip("/"), body, self.headers.get("Content-Type"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return  # the app logs what it receives

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self.base_url = f"http://{host}:{self._server.server_address[1]}"
        self._client = httpx.Client(timeout=_FORWARD_TIMEOUT_SECONDS)
        self._thread = threading.Thread(target=self._server.serve_forever, name="filter-gate", daemon=True)
        self._thread.start()

    def route(self, subscription: str, *, app: str, url: str) -> str:
        """Forward `subscription`'s pushes of `app`'s messages to `url`; returns its push endpoint here."""
        with self._lock:
            self._routes[subscription] = Route(app=app, url=url)
        return f"{self.base_url}/{subscription}"

    def handle(self, subscription: str, body: bytes, content_type: str | None) -> tuple[int, bytes]:
        """The answer to one push: the app's, or 204 for a message the filter drops."""
        with self._lock:
            route = self._routes.get(subscription)
        if route is None:
            return 404, b"no such app subscription\n"
        try:
            attributes = json.loads(body)["message"].get("attributes") or {}
        except (ValueError, KeyError, TypeError, AttributeError):
            return 400, b"not a Pub/Sub push envelope\n"
        forward = attributes.get("app") == route.app
        with self._lock:
            self.decisions.append((subscription, attributes.get("job_id"), forward))
        if not forward:
            return 204, b""
        try:
            forwarded = self._client.post(
                route.url, content=body, headers={"Content-Type": content_type or "application/json"}
            )
        except httpx.HTTPError:
            return 502, b"the app did not answer\n"  # a failed delivery: the emulator retries
        return forwarded.status_code, forwarded.content

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._client.close()
