"""`relay adopt`: jobs for predictions created without a webhook, brought up to date through replicate-events."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import ValidationError

from replicate_relay.config import ConfigError, Env, Secret, default_deadline
from replicate_relay.events import EventAttributes, PayloadError, Prediction, Source, parse_prediction
from replicate_relay.jobs import Job
from replicate_relay.jobstore import JobStore, utcnow
from replicate_relay.ops.render import iso, table
from replicate_relay.publisher import PublishError, TopicPublisher
from replicate_relay.replicate_api import DEFAULT_BASE_URL, ReplicateAPI, ReplicateAPIError

T = TypeVar("T")

SOURCE = Source.ADOPTED.value
# Replicate removes an API prediction's output files, input and logs an hour after it completes.
RETENTION = timedelta(hours=1)
# A fifth of Replicate's 3000 GETs a minute: the old worker (still polling during the switch) and the
# reconciler share the account's budget.
DEFAULT_REQUESTS_PER_SECOND = 10.0
# Waits after a call still throttled (429) or failing (5xx, network) once the client's own retries,
# which honour Retry-After, are spent: Replicate says its limit "resets in ~30s".
BACKOFF_SECONDS = (5.0, 15.0, 30.0, 60.0)


class Action(StrEnum):
    """What adopting does (or, with --dry-run, would do) to one listed prediction."""

    ADOPT = "adopt"  # still running: a job now, finished by the reconciler
    FINISHED = "finished"  # final at adoption: the job ends there, its outputs archived
    EXPIRED = "expired"  # succeeded over an hour ago, outputs gone: the job ends failed, output_expired
    KNOWN = "known"  # Relay has a job for it already: nothing done
    SKIPPED = "skipped"  # another model than --model
    ERROR = "error"  # could not be read or announced; a rerun tries again


ADOPTED_ACTIONS = frozenset({Action.ADOPT, Action.FINISHED, Action.EXPIRED})


@dataclass(frozen=True)
class Row:
    prediction_id: str
    model: str | None
    status: str
    created_at: datetime | None
    action: Action
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "prediction_id": self.prediction_id,
            "model": self.model,
            "status": self.status,
            "created_at": iso(self.created_at),
            "action": self.action.value,
            "note": self.note,
        }


@dataclass
class AdoptReport:
    since: datetime
    model: str | None
    dry_run: bool
    rows: list[Row] = field(default_factory=list)
    pages: int = 0
    stopped: str | None = None  # why listing stopped before the end, if it did

    def count(self, *actions: Action) -> int:
        counts = Counter(row.action for row in self.rows)
        return sum(counts[action] for action in actions)

    @property
    def summary(self) -> dict[str, int]:
        return {
            "adopted": self.count(*ADOPTED_ACTIONS),
            "running": self.count(Action.ADOPT),
            "finished": self.count(Action.FINISHED),
            "expired": self.count(Action.EXPIRED),
            "known": self.count(Action.KNOWN),
            "skipped": self.count(Action.SKIPPED),
            "errors": self.count(Action.ERROR),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": iso(self.since),
            "model": self.model,
            "dry_run": self.dry_run,
            "pages": self.pages,
            "summary": self.summary,
            "stopped": self.stopped,
            "predictions": [row.as_dict() for row in self.rows],
        }


def render(report: AdoptReport) -> str:
    """The table of listed predictions, then the summary."""
    lines = []
    if report.rows:
        rows = [[r.prediction_id, r.model, r.status, iso(r.created_at), r.action.value, r.note] for r in report.rows]
        lines += [table(["prediction", "model", "status", "created", "action", "note"], rows), ""]
    counts = report.summary
    verb = "would adopt" if report.dry_run else "adopted"
    lines.append(
        f"{verb} {counts['adopted']} (running {counts['running']}, finished {counts['finished']}, "
        f"expired {counts['expired']}); already known {counts['known']}; "
        f"skipped by the model filter {counts['skipped']}; errors {counts['errors']}"
    )
    scope = f" of {report.model}" if report.model else ""
    pages = "page" if report.pages == 1 else "pages"
    lines.append(f"{len(report.rows)} predictions{scope} created since {iso(report.since)}, {report.pages} {pages}")
    if report.dry_run:
        lines.append("dry run: nothing was written or published")
    if report.stopped:
        lines.append(f"stopped early: {report.stopped}; running it again is safe")
    return "\n".join(lines)


class _Pace:
    """At most `per_second` calls a second (one caller at a time)."""

    def __init__(self, per_second: float, sleep: Callable[[float], None]) -> None:
        self._interval = 1.0 / per_second
        self._next = time.monotonic()
        self._sleep = sleep

    def wait(self) -> None:
        now = time.monotonic()
        if self._next > now:
            self._sleep(self._next - now)
        self._next = max(now, self._next) + self._interval


@dataclass
class Adopter:
    """Lists the account's predictions and adopts those Relay does not know. Clients come from the caller."""

    store: JobStore
    replicate: ReplicateAPI
    events: TopicPublisher
    requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND
    clock: Callable[[], datetime] = utcnow
    progress: Callable[[str], None] = lambda _: None
    sleep: Callable[[float], None] = time.sleep
    backoff: tuple[float, ...] = BACKOFF_SECONDS
    # RELAY_DEFAULT_DEADLINE, counted from adoption (adopting never cancels a run at once): past it
    # the reconciler cancels a run still going, as for a job submitted without a deadline. None: none.
    deadline: timedelta | None = None

    def run(self, since: datetime, *, model: str | None = None, dry_run: bool = False) -> AdoptReport:
        """Walk the list newest first down to `since`; adopt (or, dry, only classify) each prediction.

        Safe to rerun and to interrupt: a prediction is adopted only if neither `predictions/{id}`
        nor `jobs/{id}` exists, in one transaction, and its event id is deterministic.
        """
        report = AdoptReport(since=since, model=model, dry_run=dry_run)
        pace = _Pace(self.requests_per_second, self.sleep)
        seen: set[str] = set()
        cursor: str | None = None
        while True:
            try:
                page = self._call(pace, functools.partial(self.replicate.list_predictions, cursor))
            except ReplicateAPIError as error:
                report.stopped = f"listing page {report.pages + 1} failed: {error}"
                return report
            report.pages += 1
            reached_since = False
            before = len(report.rows)
            for item in page.results:
                prediction = _listed(item)
                if prediction is None or prediction.id in seen:
                    continue
                if prediction.created_at is None or prediction.created_at < since:
                    reached_since = True  # newest first: everything after this is older still
                    continue
                seen.add(prediction.id)
                report.rows.append(self._one(prediction, model=model, dry_run=dry_run, pace=pace))
            self.progress(
                f"page {report.pages}: {len(page.results)} listed, {len(report.rows) - before} since "
                f"{iso(since)}; {report.count(*ADOPTED_ACTIONS)} {'to adopt' if dry_run else 'adopted'} so far"
            )
            if reached_since or page.next is None:
                return report
            cursor = page.next

    def _one(self, listed: Prediction, *, model: str | None, dry_run: bool, pace: _Pace) -> Row:
        if model is not None and listed.model != model:
            return _row(listed, Action.SKIPPED)
        if self.store.find_by_prediction(listed.id) is not None:
            return _row(listed, Action.KNOWN)
        return _row(listed, self._classify(listed)) if dry_run else self._adopt(listed, pace)

    def _adopt(self, listed: Prediction, pace: _Pace) -> Row:
        # The list may abridge a prediction; the event carries the whole body, as a webhook's does.
        try:
            body = self._call(pace, lambda: self.replicate.get_prediction(listed.id))
            prediction = parse_prediction(body)
        except (ReplicateAPIError, PayloadError) as error:
            return _row(listed, Action.ERROR, f"not read: {error}")
        job = Job(
            job_id=prediction.id,  # as for a webhook of a prediction nobody submitted
            prediction_id=prediction.id,
            source=SOURCE,
            model=prediction.model,
            version=prediction.version,
            input=prediction.input,
            created_at=prediction.created_at,
            deadline_at=self.clock() + self.deadline if self.deadline and not prediction.is_terminal else None,
        )
        if not self.store.adopt(job):
            return _row(prediction, Action.KNOWN, "a job appeared meanwhile")
        now = self.clock()
        attributes = EventAttributes.observed(prediction, Source.ADOPTED, now)
        try:
            self.events.publish(body, attributes.to_message())
        except PublishError as error:
            # The job exists with its prediction id: the reconciler reads and publishes it later.
            return _row(prediction, Action.ERROR, f"job made, event not published ({error}); the reconciler will")
        return _row(prediction, self._classify(prediction))

    def _classify(self, prediction: Prediction) -> Action:
        if not prediction.is_terminal:
            return Action.ADOPT
        completed = prediction.completed_at
        old = completed is not None and self.clock() - completed > RETENTION
        if prediction.status == "succeeded" and (prediction.data_removed or old):
            return Action.EXPIRED
        return Action.FINISHED

    def _call(self, pace: _Pace, call: Callable[[], T]) -> T:
        """One Replicate call, paced; throttling and outages that outlast the client's retries wait longer."""
        for wait in (*self.backoff, None):
            pace.wait()
            try:
                return call()
            except ReplicateAPIError as error:
                if not error.transient or wait is None:
                    raise
                self.progress(f"Replicate answered {error.status or 'nothing'}: waiting {wait:g} s ({error})")
                self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover


def _listed(item: dict[str, Any]) -> Prediction | None:
    try:
        return Prediction.model_validate(item)
    except ValidationError:
        return None  # not a prediction Relay could ever hold a job for


def _row(prediction: Prediction, action: Action, note: str = "") -> Row:
    return Row(prediction.id, prediction.model, prediction.status, prediction.created_at, action, note)


@dataclass(frozen=True)
class AdoptSettings:
    replicate_token: Secret
    replicate_base_url: str
    deadline: timedelta | None  # RELAY_DEFAULT_DEADLINE

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AdoptSettings:
        env = Env(environ)
        return cls(
            replicate_token=Secret(env.get_str("REPLICATE_API_TOKEN")),
            replicate_base_url=env.get_str("RELAY_REPLICATE_BASE_URL", DEFAULT_BASE_URL),
            deadline=default_deadline(env),
        )


def run_adopt(
    *,
    since: str,
    model: str | None,
    dry_run: bool,
    as_json: bool,
    requests_per_second: float,
    timeout: float,
    environ: Mapping[str, str] = os.environ,
) -> int:
    """`relay adopt`: 0 when everything listed was handled, 1 when something was not."""
    # Imported here: the operator context pulls in Google's clients, which only a real run needs.
    from replicate_relay.ops import context  # noqa: PLC0415
    from replicate_relay.ops.jobs_view import parse_since  # noqa: PLC0415
    from replicate_relay.ops.render import to_json  # noqa: PLC0415

    settings = AdoptSettings.from_env(environ)
    ops = context.OpsSettings.from_env(environ, timeout=timeout)
    if model is not None and (model.count("/") != 1 or ":" in model):
        raise ConfigError(f"--model takes OWNER/NAME, as Replicate lists it, got {model!r}")
    start = parse_since(since, utcnow())
    client = context.publisher_client(ops)
    adopter = Adopter(
        store=JobStore(context.firestore_client(ops)),
        replicate=ReplicateAPI.connect(settings.replicate_token.value, base_url=settings.replicate_base_url),
        events=TopicPublisher(
            client.topic_path(ops.project, ops.events_topic), deadline_seconds=timeout, client=client
        ),
        requests_per_second=requests_per_second,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
        deadline=settings.deadline,
    )
    try:
        with ops.firestore_errors():
            report = adopter.run(start, model=model, dry_run=dry_run)
    finally:
        adopter.replicate.close()
    print(to_json(report.as_dict()) if as_json else render(report))
    return 1 if report.stopped or report.count(Action.ERROR) else 0
