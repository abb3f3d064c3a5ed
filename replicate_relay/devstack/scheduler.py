"""Cloud Scheduler's part in the local stack: POST the reconciler on a timer."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.request


def call_reconciler(url: str, timeout: float = 120.0) -> dict[str, object]:
    request = urllib.request.Request(url, data=b"{}", method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        summary: dict[str, object] = json.loads(response.read())
        return summary


class Scheduler:
    """Cloud Scheduler's part in the local stack: POST the reconciler every `every` seconds."""

    def __init__(self, url: str, *, every: float) -> None:
        self._url = url
        self._every = every
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconcile-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.wait(self._every):
            # A failed call is in the reconciler's own log; keep scheduling, as Cloud Scheduler does.
            with contextlib.suppress(OSError):
                call_reconciler(self._url)
