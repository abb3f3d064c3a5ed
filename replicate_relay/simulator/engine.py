"""A prediction's or training's lifecycle: a pure plan of timed steps, applied by one asyncio task that tells the
notifier, until the finish, a cancel, or the `Cancel-After` deadline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from replicate_relay.simulator.delivery import Notifier
from replicate_relay.simulator.files import WEIGHTS_NAME, file_name
from replicate_relay.simulator.prediction import Prediction
from replicate_relay.simulator.requests import Behaviour, Kind
from replicate_relay.simulator.settings import Clock

log = logging.getLogger("relay.simulator")

StepKind = Literal["processing", "log", "file", "token", "text", "finish"]
_WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog")
_QUEUE_SECONDS = 0.1  # time spent `starting`, at most this and at most a tenth of the run


@dataclass(frozen=True)
class Step:
    """One thing that happens `at` seconds after the prediction was created."""

    at: float
    kind: StepKind
    value: str = ""


def plan(behaviour: Behaviour, kind: Kind = "prediction") -> list[Step]:
    """Every step of a run, in time order: processing, log lines and outputs spread evenly, then the finish.
    A training's only output, its new version and weights, comes with the finish."""
    duration = behaviour.duration
    if behaviour.outcome == "aborted":  # the deadline passed before it ever ran
        return [Step(duration, "finish")]
    queue = min(_QUEUE_SECONDS, duration / 10) if behaviour.start_delay is None else behaviour.start_delay
    span = duration - queue

    def spread(count: int) -> list[float]:
        return [queue + span * (index + 1) / (count + 1) for index in range(count)]

    steps = [Step(queue, "processing")]
    steps += [
        Step(at, "log", progress_line(index + 1, behaviour.logs)) for index, at in enumerate(spread(behaviour.logs))
    ]
    if behaviour.outcome == "succeeded" and kind == "prediction":
        steps += _output_steps(behaviour, spread)
    steps.append(Step(duration, "finish"))
    return sorted(steps, key=lambda step: step.at)  # stable: a tie keeps the order above


def _output_steps(behaviour: Behaviour, spread: Callable[[int], list[float]]) -> list[Step]:
    if behaviour.files:
        names = [file_name(index, behaviour.output_format) for index in range(behaviour.files)]
        if not behaviour.output_list:
            return [Step(spread(1)[0], "file", names[0])]
        return [Step(at, "file", name) for at, name in zip(spread(len(names)), names, strict=True)]
    tokens = [("" if index == 0 else " ") + _WORDS[index % len(_WORDS)] for index in range(behaviour.tokens)]
    if not behaviour.output_list:
        return [Step(spread(1)[0], "text", "".join(tokens))]
    return [Step(at, "token", token) for at, token in zip(spread(len(tokens)), tokens, strict=True)]


def progress_line(current: int, total: int) -> str:
    """A tqdm-style line, which the official client's `Prediction.progress` parses."""
    percent = current * 100 // total
    bar = "#" * (percent // 10)
    return f"{percent:3d}%|{bar:<10}| {current}/{total}"


def apply(prediction: Prediction, step: Step, now: float) -> Literal["output", "logs"] | None:
    """Change `prediction` by one step; returns the webhook event the change makes, if any."""
    behaviour = prediction.request.behaviour
    if step.kind == "processing":
        prediction.status = "processing"
        prediction.started_at = now
        return None
    if step.kind == "log":
        prediction.logs += step.value + "\n"
        return "logs"
    if step.kind == "file":
        prediction.files.append(step.value)
        url = prediction.file_url(step.value)
        prediction.output = [*(prediction.output or []), url] if behaviour.output_list else url
        return "output"
    if step.kind == "token":
        prediction.output = [*(prediction.output or []), step.value]
        return "output"
    if step.kind == "text":
        prediction.output = step.value
        return "output"
    prediction.status = behaviour.outcome
    prediction.completed_at = now
    if behaviour.outcome == "failed":
        prediction.error = behaviour.error
        prediction.output = None
    elif behaviour.outcome == "succeeded" and prediction.request.kind == "training":
        prediction.files.append(WEIGHTS_NAME)
        prediction.output = {"version": prediction.trained_version, "weights": prediction.file_url(WEIGHTS_NAME)}
    elif behaviour.outcome == "succeeded" and prediction.output is None:
        prediction.output = [] if behaviour.output_list else ""
    return None


class Run:
    """The one task that drives a prediction, from `starting` to its completed webhook."""

    def __init__(self, prediction: Prediction, notifier: Notifier, clock: Clock) -> None:
        self.prediction = prediction
        self.notifier = notifier
        self.steps = plan(prediction.request.behaviour, prediction.request.kind)
        self._clock = clock
        self._cancel_requested = asyncio.Event()
        self.terminal = asyncio.Event()

    async def run(self) -> None:
        """Apply the plan step by step until the finish, a cancel or the deadline; then hand the completed event over.

        A step due exactly at the deadline still happens: a run that finishes at its deadline succeeds."""
        loop = asyncio.get_running_loop()
        begin = loop.time()
        deadline = self.prediction.request.cancel_after
        self.notifier.started()
        for step in self.steps:
            at = step.at if deadline is None else min(step.at, deadline)
            remaining = begin + at - loop.time()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._cancel_requested.wait(), remaining)
            if self._cancel_requested.is_set():
                break
            if at < step.at:
                self._expire()
                break
            event = apply(self.prediction, step, self._clock.now())
            if event is not None:
                self.notifier.changed(event)
        self.terminal.set()
        self.notifier.completed()

    def cancel(self) -> None:
        """Cancel through the API: `canceled` at once (the answer shows it), the run then sends completed."""
        prediction = self.prediction
        if prediction.terminal:
            return
        prediction.status = "canceled"
        prediction.completed_at = self._clock.now()
        self._cancel_requested.set()
        self.terminal.set()

    def _expire(self) -> None:
        """The `Cancel-After` deadline passed: `aborted` if the run never started, else `canceled`."""
        prediction = self.prediction
        prediction.status = "aborted" if prediction.started_at is None else "canceled"
        prediction.completed_at = self._clock.now()


class TaskSet:
    """Holds every background task (asyncio keeps only weak references); cancels them all at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("simulator task %s failed", task.get_name(), exc_info=error)

    async def close(self) -> None:
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
