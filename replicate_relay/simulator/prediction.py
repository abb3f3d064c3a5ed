"""One simulated prediction's (or training's) state and its JSON form, exactly the fields Replicate's API returns."""

from __future__ import annotations

import copy
import hashlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from replicate_relay.simulator.requests import CreateRequest

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
# Replicate's ids: 26 characters of lower-case base32.
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def new_id(rng: random.Random) -> str:
    return "".join(rng.choice(_ID_ALPHABET) for _ in range(26))


def iso(moment: float) -> str:
    """ISO 8601 in UTC with a Z, as Replicate writes timestamps."""
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Prediction:
    """Mutable state of one prediction; `to_json` is what the API and every webhook body show."""

    id: str
    request: CreateRequest
    base_url: str  # http://host:port of the simulator, without a trailing slash
    created_at: float  # simulator clock
    status: str = "starting"
    output: Any = None
    error: str | None = None
    logs: str = ""
    started_at: float | None = None
    completed_at: float | None = None
    files: list[str] = field(default_factory=list)  # names under /files/{id}/ produced so far

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def expired(self, *, now: float, ttl: float) -> bool:
        """Past data retention: files answer 404, input, output and logs are gone."""
        return self.completed_at is not None and now >= self.completed_at + ttl

    def file_url(self, name: str) -> str:
        return f"{self.base_url}/files/{self.id}/{name}"

    @property
    def trained_version(self) -> str:
        """A training's new version, "destination:<64 hex>", the same for the same training id."""
        return f"{self.request.destination}:{hashlib.sha256(f'{self.id}/version'.encode()).hexdigest()}"

    def to_json(self, *, now: float, ttl: float) -> dict[str, Any]:
        """The API's and every webhook's body. A training's has no `data_removed` and no `web` URL, and its URLs
        are under /v1/trainings, as Replicate's reference shows for GET /v1/trainings/{id}."""
        removed = self.expired(now=now, ttl=ttl)
        metrics: dict[str, Any] = {}
        if self.completed_at is not None and self.started_at is not None:
            metrics["predict_time"] = round(self.completed_at - self.started_at, 6)
        if self.request.kind == "training":
            api = f"{self.base_url}/v1/trainings/{self.id}"
            urls = {"get": api, "cancel": f"{api}/cancel"}
        else:
            api = f"{self.base_url}/v1/predictions/{self.id}"
            urls = {"get": api, "cancel": f"{api}/cancel", "web": f"{self.base_url}/p/{self.id}"}
        body: dict[str, Any] = {
            "id": self.id,
            "model": self.request.model,
            "version": self.request.version,
            "input": {} if removed else copy.deepcopy(self.request.input),
            "output": None if removed else copy.deepcopy(self.output),
            "error": self.error,
            "logs": "" if removed else self.logs,
            "status": self.status,
            "created_at": iso(self.created_at),
            "started_at": None if self.started_at is None else iso(self.started_at),
            "completed_at": None if self.completed_at is None else iso(self.completed_at),
            "data_removed": removed,
            "metrics": metrics,
            "urls": urls,
        }
        if self.request.kind == "training":
            del body["data_removed"]
        return body
