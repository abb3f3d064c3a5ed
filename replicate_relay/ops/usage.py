"""GPU seconds and cost estimates for an operator: the price table, and usage by model or deployment.

Replicate reports how long each prediction ran (`metrics.predict_time`) but not what it cost: its
API names neither the hardware a prediction ran on nor a price (replicate-python issues 24 and
243). A cost is therefore shown only where the operator configured prices (`RELAY_PRICE_TABLE`),
and always as an estimate: predict time × the configured USD per second.

`RELAY_PRICE_TABLE` is a JSON object, given inline or as the path of a file holding it:

    {"models": {"black-forest-labs/flux-schnell": 0.000725}, "deployments": {"acme/sdxl": 0.0014}}

A job made through a deployment is priced by its deployment's entry, any other by its model's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from replicate_relay.config import ConfigError, Env
from replicate_relay.jobs import Job
from replicate_relay.usage import predict_time

PRICE_TABLE_VARIABLE: Final = "RELAY_PRICE_TABLE"
SECTIONS: Final = ("models", "deployments")
USAGE_WINDOW: Final = timedelta(hours=24)
_OWNER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class PriceTable:
    """USD per second of predict time, by model and by deployment (`owner/name`)."""

    models: Mapping[str, float]
    deployments: Mapping[str, float]
    source: str  # "RELAY_PRICE_TABLE" or the file it names: where the figures come from

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PriceTable | None:
        """The table RELAY_PRICE_TABLE configures, None when it is unset; ConfigError naming the
        bad entry when it is malformed."""
        raw = Env(environ).get_optional(PRICE_TABLE_VARIABLE)
        if raw is None:
            return None
        if raw.startswith("{"):
            return cls.parse(raw, source=PRICE_TABLE_VARIABLE)
        path = Path(raw).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise ConfigError(
                f"{PRICE_TABLE_VARIABLE} is neither a JSON object nor a readable file: {raw}: {reason}"
            ) from None
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(cls, text: str, *, source: str) -> PriceTable:
        where = PRICE_TABLE_VARIABLE if source == PRICE_TABLE_VARIABLE else f"{PRICE_TABLE_VARIABLE} ({source})"
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{where} is not JSON: {error}") from None
        if not isinstance(document, dict):
            raise ConfigError(f'{where} must be a JSON object with "models" and/or "deployments"')
        unknown = sorted(set(document) - set(SECTIONS))
        if unknown:
            raise ConfigError(f'{where} has {unknown[0]!r}; its keys are "models" and "deployments"')
        sections = {section: _prices(where, section, document.get(section, {})) for section in SECTIONS}
        if not any(sections.values()):
            raise ConfigError(f"{where} prices no model and no deployment; unset it to show no estimates")
        return cls(models=sections["models"], deployments=sections["deployments"], source=source)

    def price(self, job: Job) -> float | None:
        """USD per second of the job's predict time: its deployment's, else its model's; None if unpriced."""
        if job.deployment is not None:
            return self.deployments.get(job.deployment)
        return self.models.get(job.model) if job.model is not None else None

    def estimate(self, job: Job) -> float | None:
        """predict time × price, in USD; None when the job has no predict time or no price."""
        seconds, price = predict_time(job), self.price(job)
        return seconds * price if seconds is not None and price is not None else None


def _prices(where: str, section: str, entries: Any) -> dict[str, float]:
    if not isinstance(entries, dict):
        raise ConfigError(f'{where}: "{section}" must be an object of "owner/name": USD per second')
    prices: dict[str, float] = {}
    for name, value in entries.items():
        if not _OWNER_NAME.fullmatch(name):
            raise ConfigError(f'{where}: {section} entry {name!r} is not "owner/name"')
        valid = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        if not valid:
            raise ConfigError(f"{where}: {section}[{name!r}] must be USD per second, a number ≥ 0, got {value!r}")
        prices[name] = float(value)
    return prices


# Text -----------------------------------------------------------------------------------------


def seconds_cell(seconds: float | None) -> str | None:
    """'3.21' (seconds, two decimals), None (shown '-') when unknown."""
    return f"{seconds:,.2f}" if seconds is not None else None


def usd(amount: float) -> str:
    """'$12.34', or '$0.002175' for amounts under a dollar (six decimals, trailing zeros dropped)."""
    if amount >= 1:
        return f"${amount:,.2f}"
    text = f"{amount:.6f}".rstrip("0").rstrip(".")
    return f"${text}" if text not in {"0", ""} else "$0"


def estimate_cell(prices: PriceTable, job: Job) -> str:
    """A job's estimate for a table: '$0.0022', or '-' (no predict time) or 'no price'."""
    if predict_time(job) is None:
        return "-"
    amount = prices.estimate(job)
    return usd(amount) if amount is not None else "no price"


# Usage by model or deployment -----------------------------------------------------------------


@dataclass(frozen=True)
class UsageRow:
    """The final jobs of one deployment (or, made without one, of one model) and kind in the window."""

    target: str  # "deployment owner/name" or "model owner/name"
    kind: str
    jobs: int
    predict_seconds: float  # summed over the jobs Replicate reported a predict_time for
    estimate_usd: float | None  # None: no price table, or none of these jobs priced
    unpriced_jobs: int  # jobs with a predict_time but no price (left out of the estimate)


@dataclass(frozen=True)
class UsageSummary:
    rows: list[UsageRow]  # most GPU seconds first
    window: timedelta
    priced: bool  # a price table is configured
    complete: bool  # the jobs read include every job that ended in the window
    reaches_back: timedelta | None  # when incomplete: how far back the jobs read reach

    @property
    def predict_seconds(self) -> float:
        return sum(row.predict_seconds for row in self.rows)

    @property
    def estimate_usd(self) -> float | None:
        estimates = [row.estimate_usd for row in self.rows if row.estimate_usd is not None]
        return sum(estimates) if estimates else None


def usage_target(job: Job) -> str:
    if job.deployment:
        return f"deployment {job.deployment}"
    return f"model {job.model or 'unknown'}"


def summarize_usage(
    jobs: list[Job],
    *,
    now: datetime,
    prices: PriceTable | None,
    limit: int,
    window: timedelta = USAGE_WINDOW,
) -> UsageSummary:
    """GPU seconds of the final jobs that ended in `window` before `now`, by deployment or model and kind.

    `jobs` are the most recently written jobs, newest first, read with `limit`: fewer than `limit`
    is every job there is; otherwise they hold every job that ended in the window only if the oldest
    was written before the window began (a job's final write comes after Replicate completed it)."""
    start = now - window
    groups: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        ended = job.completed_at or job.updated_at
        if job.is_terminal and ended is not None and start <= ended <= now:
            groups.setdefault((usage_target(job), job.kind), []).append(job)
    rows = [_row(target, kind, members, prices) for (target, kind), members in groups.items()]
    rows.sort(key=lambda row: (-row.predict_seconds, row.target, row.kind))
    oldest = min((job.updated_at for job in jobs if job.updated_at is not None), default=None)
    complete = len(jobs) < limit or (oldest is not None and oldest < start)
    reaches_back = None if complete or oldest is None else now - oldest
    return UsageSummary(rows, window, prices is not None, complete, reaches_back)


def _row(target: str, kind: str, jobs: list[Job], prices: PriceTable | None) -> UsageRow:
    timed = [(job, seconds) for job in jobs if (seconds := predict_time(job)) is not None]
    estimates = [prices.estimate(job) for job, _ in timed] if prices is not None else []
    priced = [amount for amount in estimates if amount is not None]
    return UsageRow(
        target=target,
        kind=kind,
        jobs=len(jobs),
        predict_seconds=sum(seconds for _, seconds in timed),
        estimate_usd=sum(priced) if priced else None,
        unpriced_jobs=len(estimates) - len(priced),
    )
