"""All of the simulator's state: predictions and trainings, their runs and delivery logs, the switches, the clock."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpx

from replicate_relay.simulator.delivery import Notifier, Sender, encode
from replicate_relay.simulator.engine import Run, TaskSet
from replicate_relay.simulator.errors import ApiError
from replicate_relay.simulator.prediction import Prediction, new_id
from replicate_relay.simulator.requests import CreateRequest, Kind
from replicate_relay.simulator.settings import Clock, SimConfig
from replicate_relay.webhooks import parse_secret


class Simulator:
    """All state: predictions and trainings (one id space, as their ids look alike), their runs and delivery logs,
    the switches and the clock. Loop-confined."""

    def __init__(self, *, secrets: Sequence[str], config: SimConfig | None = None, clock: Clock | None = None) -> None:
        if not secrets:
            raise ValueError("the simulator needs at least one webhook secret")
        self.secrets = tuple(secrets)
        self.keys = tuple(parse_secret(secret) for secret in secrets)  # raises ConfigError on a bad secret
        self.initial_config = config or SimConfig()
        self.config = self.initial_config
        self.clock = clock or Clock()
        self.runs: dict[str, Run] = {}  # in creation order
        # API calls received (throttled and refused ones too), so a test can count what a client cost.
        self.calls: Counter[str] = Counter()
        self.calls_by_prediction: dict[str, Counter[str]] = {}
        self.tasks = TaskSet()
        self._ids = random.Random(self.config.seed)  # noqa: S311 - simulated ids, not secrets
        self._sender: Sender | None = None
        self._client: httpx.AsyncClient | None = None

    def configure(self, changes: dict[str, Any]) -> None:
        self.config = self.config.updated(changes)
        if "seed" in changes:
            self._ids.seed(self.config.seed)

    def reset(self) -> None:
        """Start-up switches and no clock offset again; predictions and call counts are kept."""
        self.config = self.initial_config
        self._ids.seed(self.config.seed)
        self.clock.offset = 0.0

    async def start(self) -> None:
        # trust_env=False: a proxy from the environment must never sit between us and a loopback receiver.
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        self._sender = Sender(self._client, self.keys, self.clock, lambda: self.config)

    async def stop(self) -> None:
        await self.tasks.close()
        if self._client is not None:
            await self._client.aclose()

    def count_call(self, call: str, prediction_id: str | None) -> None:
        """One API call received; `prediction_id` when its path names one (get, cancel)."""
        self.calls[call] += 1
        if prediction_id is not None:
            self.calls_by_prediction.setdefault(prediction_id, Counter())[call] += 1

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "calls_by_prediction": {key: dict(counts) for key, counts in self.calls_by_prediction.items()},
        }

    def create(self, request: CreateRequest, base_url: str) -> Run:
        if self._sender is None:
            raise RuntimeError("the simulator was not started")
        prediction_id = new_id(self._ids)
        while prediction_id in self.runs:
            prediction_id = new_id(self._ids)
        prediction = Prediction(id=prediction_id, request=request, base_url=base_url, created_at=self.clock.now())
        rng = random.Random(f"{self.config.seed}:{prediction_id}")  # noqa: S311 - chaos rolls, not secrets
        notifier = Notifier(
            prediction_id=prediction_id,
            webhook=request.webhook,
            webhook_completed=request.webhook_completed,
            events=request.events,
            drop_final=request.behaviour.drop_final,
            snapshot=lambda: (encode(self.to_json(prediction)), prediction.status),
            sender=self._sender,
            config=lambda: self.config,
            clock=self.clock,
            rng=rng,
            spawn=self.tasks.spawn,
        )
        run = Run(prediction, notifier, self.clock)
        self.runs[prediction_id] = run
        self.tasks.spawn(run.run())
        return run

    def run(self, prediction_id: str, kind: Kind | None = "prediction") -> Run:
        """The run of that id, 404 if there is none of that kind (None: either kind)."""
        run = self.runs.get(prediction_id)
        if run is None or kind not in (None, run.prediction.request.kind):
            raise ApiError(404, "Not found.")
        return run

    def to_json(self, prediction: Prediction) -> dict[str, Any]:
        return prediction.to_json(now=self.clock.now(), ttl=self.config.file_ttl_seconds)
