"""A TCP proxy on loopback that can make a backend fail: the Cloud Storage faults of the suite.

fake-gcs-server cannot be told to fail, and killing it loses every object (memory backend), so
the handlers reach it through this proxy, whose mode decides what a connection gets:

- ``pass``: bytes go both ways untouched;
- ``unavailable``: each request is answered ``503 Service Unavailable`` and the connection closed;
- ``hang``: the connection is accepted and never answered until the mode changes, then closed
  (a client sees a timeout or a reset, never a reply).

Changing the mode also cuts every connection in flight, as a failing front end would: pooled
keep-alive connections would otherwise carry on past the fault.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator
from typing import Literal

Mode = Literal["pass", "unavailable", "hang"]

_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 64\r\n"
    b"Connection: close\r\n\r\n" + b'{"error": {"code": 503, "message": "injected by the fault proxy"}}'[:64]
)


class FaultProxy:
    def __init__(self, backend_host: str, backend_port: int) -> None:
        self._backend = (backend_host, backend_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._mode: Mode = "pass"
        self._generation = 0  # bumped on every mode change: older connections end
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.counts: dict[Mode, int] = {"pass": 0, "unavailable": 0, "hang": 0}
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)

    @property
    def backend_port(self) -> int:
        return self._backend[1]

    def retarget(self, port: int) -> None:
        """Forward new connections to another backend port (a new stack's fake-gcs-server)."""
        with self._lock:
            self._backend = (self._backend[0], port)
            self._generation += 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.set_mode("pass")
        self._listener.close()
        self._thread.join(timeout=5)

    def set_mode(self, mode: Mode) -> None:
        with self._lock:
            self._mode = mode
            self._generation += 1

    @contextlib.contextmanager
    def failing(self, mode: Mode) -> Iterator[None]:
        self.set_mode(mode)
        try:
            yield
        finally:
            self.set_mode("pass")

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                mode, generation, backend = self._mode, self._generation, self._backend
                self.counts[mode] += 1
            threading.Thread(target=self._serve, args=(client, mode, generation, backend), daemon=True).start()

    def _current(self, generation: int) -> bool:
        with self._lock:
            return generation == self._generation and not self._stopping.is_set()

    def _serve(self, client: socket.socket, mode: Mode, generation: int, backend_address: tuple[str, int]) -> None:
        with client:
            if mode == "unavailable":
                with contextlib.suppress(OSError):
                    client.settimeout(5)
                    client.recv(65536)  # the request line and headers; the answer does not depend on them
                    client.sendall(_UNAVAILABLE)
                return
            if mode == "hang":
                while self._current(generation):
                    self._stopping.wait(0.1)
                return
            try:
                backend = socket.create_connection(backend_address, timeout=5)
            except OSError:
                return
            with backend:
                self._pipe(client, backend, generation)

    def _pipe(self, client: socket.socket, backend: socket.socket, generation: int) -> None:
        sockets = [client, backend]
        while self._current(generation):
            readable, _, _ = select.select(sockets, [], [], 0.1)
            for source in readable:
                try:
                    data = source.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                target = backend if source is client else client
                try:
                    target.sendall(data)
                except OSError:
                    return
        # The mode changed: cut the connection hard (RST), as a failing front end would.
        with contextlib.suppress(OSError):
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
