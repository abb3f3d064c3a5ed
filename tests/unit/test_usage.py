"""Usage: predict time from Replicate's metrics, the GPU-seconds counter counted once per final job,
the price table, and GPU seconds by model or deployment."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from replicate_relay import announcements, telemetry, usage
from replicate_relay.config import ConfigError
from replicate_relay.errors import PublishError
from replicate_relay.jobs import Job, JobState
from replicate_relay.ops.usage import PRICE_TABLE_VARIABLE, PriceTable, summarize_usage, usd

NOW = datetime(2026, 11, 29, 15, 0, tzinfo=UTC)
FLUX = "black-forest-labs/flux-schnell"


def job(job_id: str = "j1", *, predict: object = 3.5, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "job_id": job_id,
        "state": JobState.SUCCEEDED,
        "model": FLUX,
        "announcer": "job-status",
        "metrics": {"predict_time": predict, "total_time": 5.25},
        "completed_at": NOW - timedelta(minutes=5),
        "updated_at": NOW - timedelta(minutes=5) + timedelta(seconds=1),
    }
    values.update(fields)
    return Job.model_validate(values)


# predict_time and total_time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"predict_time": 3.5}, 3.5),
        ({"predict_time": 2}, 2.0),
        ({"predict_time": 0}, 0.0),
        ({"predict_time": "3.5"}, None),
        ({"predict_time": True}, None),
        ({"predict_time": -1.0}, None),
        ({"predict_time": float("nan")}, None),
        ({"total_time": 9.0}, None),
        (None, None),
    ],
)
def test_predict_time_is_a_number_replicate_sent_or_none(
    metrics: dict[str, Any] | None, expected: float | None
) -> None:
    assert usage.predict_time(job(metrics=metrics)) == expected


def test_total_time_is_read_beside_predict_time() -> None:
    assert (usage.predict_time(job()), usage.total_time(job())) == (3.5, 5.25)


# The counter -----------------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], list[tuple[float, dict[str, Any]]]]]:
    """The process's instruments on a real SDK provider; returns (value, attributes) of each
    relay.job.predict_time series recorded so far."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(telemetry, "METRICS", telemetry.Metrics(provider.get_meter(telemetry.SCOPE)))

    def points() -> list[tuple[float, dict[str, Any]]]:
        data = reader.get_metrics_data()
        found: list[tuple[float, dict[str, Any]]] = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "relay.job.predict_time":
                        found += [
                            (p.value, dict(p.attributes or {}))
                            for p in metric.data.data_points
                            if isinstance(p, NumberDataPoint)
                        ]
        return found

    yield points
    provider.shutdown()


class Store:
    """Stands in for JobStore where announcements use it: jobs in a dict, claims read and written at once."""

    def __init__(self, *jobs: Job) -> None:
        self.jobs = {job.job_id: job for job in jobs}
        self.clock = NOW

    def now(self) -> datetime:
        return self.clock

    def update_if(
        self, operation: str, job_id: str, decide: Callable[[Job | None, datetime], dict[str, Any] | None]
    ) -> Job | None:
        current = self.jobs.get(job_id)
        fields = decide(current, self.clock)
        if fields is None or current is None:
            return None
        self.jobs[job_id] = current.model_copy(update=fields)
        return current

    def update_fields(self, job_id: str, fields: dict[str, Any]) -> None:
        self.jobs[job_id] = self.jobs[job_id].model_copy(update=fields)


class Publisher:
    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.published: list[Mapping[str, str]] = []

    def publish(self, data: bytes, attributes: Mapping[str, str]) -> str:
        if self.fail:
            raise PublishError("Pub/Sub did not acknowledge within 5 s")
        self.published.append(attributes)
        return str(len(self.published))


def announce(store: Store, publisher: Publisher, final: Job, *, claimed: bool) -> bool:
    return announcements.announce_owed(store, publisher, final, "job-status", claimed=claimed)  # type: ignore[arg-type]


def test_a_final_job_adds_its_predict_time_once_with_model_deployment_kind_and_state(counted: Any) -> None:
    final = job(deployment="acme/flux-prod", kind="training")
    store, publisher = Store(final), Publisher()

    assert announce(store, publisher, final, claimed=True)
    # A redelivery of the same event, and the reconciler, find it announced: nothing more is added.
    assert not announce(store, publisher, store.jobs["j1"], claimed=False)
    assert not announcements.announce_once(store, publisher, store.jobs["j1"])  # type: ignore[arg-type]

    assert len(publisher.published) == 1
    assert counted() == [
        (3.5, {"model": FLUX, "deployment": "acme/flux-prod", "kind": "training", "state": "succeeded"})
    ]


def test_a_failed_publish_counts_nothing_and_the_retry_counts_once(counted: Any) -> None:
    final = job(state=JobState.CANCELED, deployment=None)
    store = Store(final)

    with pytest.raises(PublishError):
        announce(store, Publisher(fail=True), final, claimed=True)
    assert counted() == []
    store.clock = NOW + announcements.LEASE  # the failed claim lapses; a redelivery announces
    assert announce(store, Publisher(), store.jobs["j1"], claimed=False)

    assert counted() == [(3.5, {"model": FLUX, "deployment": "none", "kind": "prediction", "state": "canceled"})]


def test_jobs_without_a_predict_time_or_open_add_nothing(counted: Any) -> None:
    usage.count_final(job(metrics=None, state=JobState.ABORTED))
    usage.count_final(job(state=JobState.PROCESSING))
    usage.count_final(job("j2", predict=1.25, model=None))
    usage.count_final(job("j3", predict=2.0, model=None))

    assert counted() == [(3.25, {"model": "unknown", "deployment": "none", "kind": "prediction", "state": "succeeded"})]


# The price table -------------------------------------------------------------------------------

TABLE = {"models": {FLUX: 0.000725, "acme/tiny": 0}, "deployments": {"acme/flux-prod": 0.0014}}


def test_unset_there_is_no_price_table() -> None:
    assert PriceTable.from_env({}) is None
    assert PriceTable.from_env({PRICE_TABLE_VARIABLE: "  "}) is None


def test_the_table_is_inline_json_or_a_file_holding_it(tmp_path: Path) -> None:
    inline = PriceTable.from_env({PRICE_TABLE_VARIABLE: json.dumps(TABLE)})
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(TABLE))
    from_file = PriceTable.from_env({PRICE_TABLE_VARIABLE: str(path)})

    assert inline is not None
    assert from_file is not None
    assert (inline.source, from_file.source) == (PRICE_TABLE_VARIABLE, str(path))
    assert inline.models == from_file.models == {FLUX: 0.000725, "acme/tiny": 0.0}
    assert inline.deployments == from_file.deployments == {"acme/flux-prod": 0.0014}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "RELAY_PRICE_TABLE is not JSON"),
        ("/nonexistent/prices.json", "neither a JSON object nor a readable file: /nonexistent/prices.json"),
        ('{"model": {}}', 'RELAY_PRICE_TABLE has \'model\'; its keys are "models" and "deployments"'),
        ('{"models": [1]}', '"models" must be an object'),
        ('{"models": {"flux": 0.1}}', "models entry 'flux' is not \"owner/name\""),
        ('{"deployments": {"a/b/c": 0.1}}', "deployments entry 'a/b/c' is not \"owner/name\""),
        ('{"models": {"a/b": "0.1"}}', "models['a/b'] must be USD per second, a number ≥ 0, got '0.1'"),
        ('{"models": {"a/b": -0.1}}', "models['a/b'] must be USD per second, a number ≥ 0, got -0.1"),
        ('{"models": {"a/b": true}}', "models['a/b'] must be USD per second"),
        ('{"models": {"a/b": NaN}}', "models['a/b'] must be USD per second"),
        ('{"models": {}}', "prices no model and no deployment"),
    ],
)
def test_a_malformed_table_stops_with_a_sentence_naming_the_entry(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        PriceTable.from_env({PRICE_TABLE_VARIABLE: value})
    assert message in str(raised.value)
    assert str(raised.value).startswith(PRICE_TABLE_VARIABLE)


def test_a_file_names_itself_in_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text('{"models": {"x": 1}}')
    with pytest.raises(ConfigError, match=rf"RELAY_PRICE_TABLE \({path}\): models entry 'x'"):
        PriceTable.from_env({PRICE_TABLE_VARIABLE: str(path)})


def test_a_deployment_job_is_priced_by_its_deployment_any_other_by_its_model() -> None:
    table = PriceTable.parse(json.dumps(TABLE), source="t")

    assert table.estimate(job(predict=10)) == pytest.approx(0.00725)
    assert table.estimate(job(predict=10, deployment="acme/flux-prod")) == pytest.approx(0.014)
    assert table.estimate(job(predict=10, deployment="acme/other")) is None  # not the model's price
    assert table.estimate(job(predict=10, model="someone/else")) is None
    assert table.estimate(job(metrics=None)) is None
    assert table.estimate(job(predict=10, model="acme/tiny")) == 0.0


@pytest.mark.parametrize(
    ("amount", "text"),
    [(0.0, "$0"), (0.0000001, "$0"), (0.002175, "$0.002175"), (0.5, "$0.5"), (1.0, "$1.00"), (1234.5, "$1,234.50")],
)
def test_dollars_read_plainly(amount: float, text: str) -> None:
    assert usd(amount) == text


# GPU seconds by model or deployment --------------------------------------------------------------


def test_usage_sums_predict_time_of_jobs_that_ended_in_the_window_by_deployment_or_model_and_kind() -> None:
    jobs = [
        job("a", predict=2.0),
        job("b", predict=3.0),
        job("c", predict=4.0, deployment="acme/flux-prod"),
        job("d", predict=100.0, kind="training"),
        job("e", metrics=None, state=JobState.ABORTED),  # ended without running: a job, no seconds
        job("f", predict=50.0, state=JobState.PROCESSING),  # not final
        job("g", predict=70.0, completed_at=NOW - timedelta(hours=25), updated_at=NOW - timedelta(hours=25)),
    ]
    table = PriceTable.parse(json.dumps({"models": {FLUX: 0.001}}), source="t")

    summary = summarize_usage(jobs, now=NOW, prices=table, limit=50)

    shown = [
        (row.target, row.kind, row.jobs, row.predict_seconds, row.estimate_usd, row.unpriced_jobs)
        for row in summary.rows
    ]
    assert shown == [
        (f"model {FLUX}", "training", 1, 100.0, pytest.approx(0.1), 0),
        (f"model {FLUX}", "prediction", 3, 5.0, pytest.approx(0.005), 0),
        ("deployment acme/flux-prod", "prediction", 1, 4.0, None, 1),
    ]
    assert summary.predict_seconds == 109.0
    assert summary.estimate_usd == pytest.approx(0.105)
    assert summary.complete
    assert summary.priced


def test_without_prices_usage_has_seconds_and_no_estimate() -> None:
    summary = summarize_usage([job()], now=NOW, prices=None, limit=50)

    assert [(row.predict_seconds, row.estimate_usd, row.unpriced_jobs) for row in summary.rows] == [(3.5, None, 0)]
    assert not summary.priced
    assert summary.estimate_usd is None


def test_usage_says_when_the_jobs_read_do_not_reach_back_over_the_window() -> None:
    recent = [job(str(n), updated_at=NOW - timedelta(hours=2)) for n in range(3)]
    older = [*recent[:2], job("old", updated_at=NOW - timedelta(hours=30))]

    short = summarize_usage(recent, now=NOW, prices=None, limit=3)
    reaching = summarize_usage(older, now=NOW, prices=None, limit=3)
    fewer_than_the_limit = summarize_usage(recent, now=NOW, prices=None, limit=4)

    assert (short.complete, short.reaches_back) == (False, timedelta(hours=2))
    assert (reaching.complete, reaching.reaches_back) == (True, None)
    assert fewer_than_the_limit.complete
