"""A local HTTP server standing in for replicate.delivery: scripted answers, every request counted."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    chunk_delay: float = 0.0  # seconds between 64 KiB chunks of the body: a slow download


class FileServer:
    """Serves `answers[path]`, a list consumed one per request (the last one repeats)."""

    def __init__(self) -> None:
        self.answers: dict[str, list[Answer]] = {}
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer = server._next(self.path)
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if not answer.chunk_delay:
                    self.wfile.write(answer.body)
                    return
                for start in range(0, len(answer.body), 65536):
                    try:
                        self.wfile.write(answer.body[start : start + 65536])
                    except OSError:  # the client went away (killed, in the fault suite)
                        return
                    time.sleep(answer.chunk_delay)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def serve(self, path: str, *answers: Answer) -> str:
        with self._lock:
            self.answers[path] = list(answers)
        return self.url(path)

    def _next(self, path: str) -> Answer:
        with self._lock:
            self.requests[path] += 1
            queue = self.answers.get(path)
            if not queue:
                return Answer(404, b"not found")
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def running() -> Iterator[FileServer]:
    server = FileServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
