"""Verification failures and push backlogs for `relay status`: the local metrics file and Cloud Monitoring."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as google_exceptions
from google.cloud import monitoring_v3
from google.pubsub_v1 import types as pubsub_v1_types
from opentelemetry.exporter.otlp.json.file import FileMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from replicate_relay.ops import monitoring
from replicate_relay.ops.context import OpsSettings
from replicate_relay.ops.metrics_file import METRIC, count_failures, metrics_file_path, read_failures
from replicate_relay.ops.status import (
    DEAD_LETTER,
    dead_letter_subscriptions,
    push_subscriptions,
    recent_verification_failures,
)

NOW = datetime(2026, 11, 29, 15, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
SETTINGS = OpsSettings(
    project="demo",
    events_topic="replicate-events",
    quiet=timedelta(minutes=10),
    timeout=2.0,
    bucket="demo-relay-outputs",
)


# The local metrics file ------------------------------------------------------------------------


def _ns(moment: datetime) -> str:
    return str(int(moment.timestamp()) * 1_000_000_000)


def otlp_line(instance: str, started: datetime, at: datetime, counts: dict[str, int], *, other: bool = False) -> bytes:
    """One export of one process, as FileMetricExporter writes it (cumulative, asInt as a string)."""
    points = [
        {
            "attributes": [{"key": "reason", "value": {"stringValue": reason}}],
            "startTimeUnixNano": _ns(started),
            "timeUnixNano": _ns(at),
            "asInt": str(value),
        }
        for reason, value in counts.items()
    ]
    metrics: list[dict[str, Any]] = [
        {"name": METRIC, "sum": {"dataPoints": points, "aggregationTemporality": 2, "isMonotonic": True}}
    ]
    if other:
        metrics = [{"name": "relay.webhook.requests", "sum": {"dataPoints": [], "aggregationTemporality": 2}}]
    document = {
        "resourceMetrics": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": "receiver"}},
                        {"key": "service.instance.id", "value": {"stringValue": instance}},
                    ]
                },
                "scopeMetrics": [{"scope": {"name": "relay"}, "metrics": metrics}],
            }
        ]
    }
    return json.dumps(document).encode() + b"\n"


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


def test_failures_in_the_last_hour_add_up_each_process_since_the_cutoff_across_a_restart() -> None:
    lines = [
        # Process a1, counting since 2 h ago: 7 at the cutoff, 12 now → 5 in the window.
        otlp_line("a1", ago(120), ago(90), {"bad_signature": 5}),
        otlp_line("a1", ago(120), ago(61), {"bad_signature": 7}),
        # Process b, counting since 3 h ago, interleaved with a1 as separate processes write.
        otlp_line("b", ago(180), ago(70), {"bad_signature": 1, "stale_timestamp": 3}),
        otlp_line("a1", ago(120), ago(59), {"bad_signature": 9}),
        otlp_line("a1", ago(120), ago(31), {"bad_signature": 12}),
        # a1 restarted as a2 half an hour ago: everything it counted is inside the window.
        otlp_line("a2", ago(30), ago(29), {"bad_signature": 2}),
        otlp_line("b", ago(180), ago(10), {"bad_signature": 2, "stale_timestamp": 3}),
        otlp_line("a2", ago(30), ago(2), {"bad_signature": 4, "missing_headers": 1}),
        otlp_line("b", ago(180), ago(1), {"bad_signature": 2}, other=True),
    ]

    counted = count_failures(lines, now=NOW, window=HOUR)

    assert counted.by_reason == {"bad_signature": 5 + 4 + 1, "missing_headers": 1, "stale_timestamp": 0}
    assert counted.total == 11
    assert counted.unreadable_lines == 0


def test_a_process_that_stopped_before_the_window_counts_nothing_and_a_reused_instance_id_is_a_new_series() -> None:
    lines = [
        otlp_line("old", ago(300), ago(120), {"bad_signature": 100}),
        # Same instance id, a new start time: a restart that reused the id, counted from zero.
        otlp_line("same", ago(200), ago(65), {"bad_signature": 50}),
        otlp_line("same", ago(20), ago(5), {"bad_signature": 3}),
    ]

    assert count_failures(lines, now=NOW, window=HOUR).by_reason == {"bad_signature": 3}


def test_torn_and_foreign_lines_are_skipped_and_counted_as_unreadable() -> None:
    whole = otlp_line("a", ago(30), ago(5), {"bad_signature": 2})
    lines = [
        whole[: whole.index(METRIC.encode()) + 60],  # a write cut short after the metric's name
        b"not json at all but mentions " + METRIC.encode() + b"\n",
        b'{"resourceMetrics": 7, "x": "' + METRIC.encode() + b'"}\n',
        otlp_line("a", ago(30), ago(4), {}, other=True),
        whole,
    ]

    counted = count_failures(lines, now=NOW, window=HOUR)

    assert counted.by_reason == {"bad_signature": 2}
    assert counted.unreadable_lines == 3


def test_lines_written_by_opentelemetrys_file_exporter_are_read_as_written(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"

    def run_process(instance: str, adds: list[tuple[str, int]]) -> None:
        reader = PeriodicExportingMetricReader(FileMetricExporter(str(path)), export_interval_millis=3_600_000)
        resource = Resource.create({"service.name": "receiver", "service.instance.id": instance})
        provider = MeterProvider(metric_readers=[reader], resource=resource)
        counter = provider.get_meter("relay").create_counter(METRIC)
        for reason, amount in adds:
            counter.add(amount, {"reason": reason})
            provider.force_flush()
        provider.shutdown()

    run_process("first", [("bad_signature", 1), ("bad_signature", 2), ("stale_timestamp", 1)])
    run_process("second", [("bad_signature", 4)])  # a restart appends to the same file

    counted = read_failures(path, now=datetime.now(UTC) + timedelta(seconds=1))

    assert len(path.read_text().splitlines()) >= 4
    assert counted.by_reason == {"bad_signature": 7, "stale_timestamp": 1}
    assert counted.unreadable_lines == 0


def test_a_rotated_files_previous_generation_counts_too(tmp_path: Path) -> None:
    """The dev stack rotated the file at a restart within the hour: the window's start is in `.1`."""
    path = tmp_path / "metrics.jsonl"
    started = NOW - 2 * HOUR
    (tmp_path / "metrics.jsonl.1").write_bytes(
        otlp_line("a", started, ago(90), {"bad_signature": 5}) + otlp_line("a", started, ago(30), {"bad_signature": 7})
    )
    path.write_bytes(otlp_line("b", ago(20), NOW, {"stale_timestamp": 3}))

    # Process a: 7 - 5 = 2 within the hour, from the old generation alone; process b: 3, from the new.
    assert read_failures(path, now=NOW).by_reason == {"bad_signature": 2, "stale_timestamp": 3}


def test_only_a_previous_generation_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    (tmp_path / "metrics.jsonl.1").write_bytes(otlp_line("a", ago(30), NOW, {"bad_signature": 4}))

    assert read_failures(path, now=NOW).by_reason == {"bad_signature": 4}


def test_no_metrics_file_at_all_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_failures(tmp_path / "metrics.jsonl", now=NOW)


def test_the_metrics_file_is_relay_metrics_file_or_the_dev_stacks_default() -> None:
    assert metrics_file_path({"RELAY_METRICS_FILE": "/srv/m.jsonl"}) == Path("/srv/m.jsonl")
    assert metrics_file_path({}).parts[-3:] == (".relay", "telemetry", "metrics.jsonl")


@pytest.fixture
def on_emulators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")


@pytest.mark.usefixtures("on_emulators")
def test_locally_failures_come_from_the_metrics_file_and_a_missing_file_says_the_stack_may_be_down(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(otlp_line("a", ago(30), ago(1), {"bad_signature": 2, "stale_timestamp": 1}))

    text, by_reason = recent_verification_failures(None, SETTINGS, path, now=NOW)
    missing_text, missing = recent_verification_failures(None, SETTINGS, tmp_path / "absent.jsonl", now=NOW)

    assert text == "3 in the last hour (bad_signature 2, stale_timestamp 1; local metrics file)"
    assert by_reason == {"bad_signature": 2, "stale_timestamp": 1}
    assert missing_text.startswith("n/a: no local metrics file (dev stack not running?)")
    assert missing is None


@pytest.mark.usefixtures("on_emulators")
def test_locally_push_backlogs_stay_not_available_without_asking_cloud_monitoring() -> None:
    client = FakeMetricService({})

    rows = push_subscriptions(client, SETTINGS, ["job-status"], now=NOW)

    assert [(r.backlog, r.note) for r in rows] == [(None, "n/a locally (Cloud Monitoring in production)")]
    assert client.requests == []


# Cloud Monitoring, with a fake of the one method used ------------------------------------------


class FakeMetricService:
    """`MetricServiceClient.list_time_series` only: answers by metric type, or raises `error`."""

    def __init__(self, series: dict[str, list[monitoring_v3.TimeSeries]], error: Exception | None = None) -> None:
        self._series = series
        self._error = error
        self.requests: list[dict[str, Any]] = []

    def list_time_series(
        self, request: dict[str, Any], *, retry: Any, timeout: float
    ) -> list[monitoring_v3.TimeSeries]:
        self.requests.append(request)
        assert timeout == SETTINGS.timeout
        if self._error is not None:
            raise self._error
        metric_type = request["filter"].split('"')[1]
        return self._series.get(metric_type, [])


def series(
    *, subscription: str | None = None, reason: str | None = None, points: list[tuple[datetime, float]]
) -> monitoring_v3.TimeSeries:
    return monitoring_v3.TimeSeries(
        {
            "resource": {"labels": {"subscription_id": subscription} if subscription else {}},
            "metric": {"labels": {"reason": reason} if reason else {}},
            "points": [
                {"interval": {"end_time": {"seconds": int(at.timestamp())}}, "value": {"int64_value": int(value)}}
                for at, value in points
            ],
        }
    )


@pytest.fixture
def in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)


@pytest.mark.usefixtures("in_production")
def test_push_backlogs_take_the_latest_sample_per_subscription_from_the_last_ten_minutes() -> None:
    client = FakeMetricService(
        {
            monitoring.UNDELIVERED: [
                series(subscription="job-status", points=[(ago(1), 12), (ago(2), 30)]),
                series(subscription="archive-outputs", points=[(ago(3), 0)]),
            ],
            monitoring.OLDEST_UNACKED_AGE: [series(subscription="job-status", points=[(ago(2), 900), (ago(1), 75)])],
        }
    )

    rows = push_subscriptions(client, SETTINGS, ["job-status", "archive-outputs", "idle"], now=NOW)

    shown = {r.name: (r.backlog, r.oldest_age_seconds, r.note) for r in rows}
    assert shown == {
        "job-status": (12, 75.0, "Cloud Monitoring, sampled 60s ago"),
        "archive-outputs": (0, None, "Cloud Monitoring, sampled 180s ago"),
        "idle": (None, None, "n/a: no Cloud Monitoring sample in the last 10 minutes"),
    }
    request = client.requests[0]
    assert request["name"] == "projects/demo"
    assert request["filter"] == (
        f'metric.type = "{monitoring.UNDELIVERED}" AND resource.type = "pubsub_subscription" '
        'AND resource.labels.subscription_id = one_of("job-status", "archive-outputs", "idle")'
    )
    interval = request["interval"]
    assert interval["end_time"]["seconds"] - interval["start_time"]["seconds"] == 600
    assert {r["filter"].split('"')[1] for r in client.requests} == {
        monitoring.UNDELIVERED,
        monitoring.OLDEST_UNACKED_AGE,
    }


class NoPubSub:
    """A subscriber that fails any call: in production the dead letters are not Pub/Sub's to count."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"Pub/Sub's {name} called: dead letters come from Cloud Monitoring in production")


@pytest.mark.usefixtures("in_production")
def test_in_production_dead_letters_are_counted_from_cloud_monitoring_without_pulling() -> None:
    client = FakeMetricService(
        {
            monitoring.UNDELIVERED: [series(subscription="job-status-dead-letter", points=[(ago(2), 4)])],
            monitoring.OLDEST_UNACKED_AGE: [series(subscription="job-status-dead-letter", points=[(ago(2), 3600)])],
        }
    )
    names = ["job-status-dead-letter", "archive-outputs-dead-letter"]

    rows = dead_letter_subscriptions(NoPubSub(), client, SETTINGS, names, now=NOW)  # type: ignore[arg-type]

    assert [(r.name, r.kind, r.backlog, r.backlog_capped, r.oldest_age_seconds, r.note) for r in rows] == [
        ("job-status-dead-letter", DEAD_LETTER, 4, False, 3600.0, "Cloud Monitoring, sampled 120s ago"),
        (
            "archive-outputs-dead-letter",
            DEAD_LETTER,
            None,
            False,
            None,
            "n/a: no Cloud Monitoring sample in the last 10 minutes",
        ),
    ]
    assert 'one_of("job-status-dead-letter", "archive-outputs-dead-letter")' in client.requests[0]["filter"]


@pytest.mark.usefixtures("in_production")
def test_in_production_dead_letters_without_monitoring_are_not_available_rather_than_pulled() -> None:
    refused = FakeMetricService({}, error=google_exceptions.PermissionDenied("no"))

    refused_rows = dead_letter_subscriptions(NoPubSub(), refused, SETTINGS, ["d"], now=NOW)  # type: ignore[arg-type]
    absent_rows = dead_letter_subscriptions(NoPubSub(), None, SETTINGS, ["d"], now=NOW)  # type: ignore[arg-type]

    assert [(r.backlog, r.note) for r in refused_rows] == [
        (None, "n/a: no permission to read Cloud Monitoring (roles/monitoring.viewer)")
    ]
    assert [(r.backlog, r.note) for r in absent_rows] == [(None, "n/a (no Cloud Monitoring client)")]


class CountingSubscriber:
    """The emulator's side of counting by pulling: `waiting` messages, handed out once; records
    what was done with them."""

    def __init__(self, waiting: int) -> None:
        self.waiting = [f"ack-{n}" for n in range(waiting)]
        self.acknowledged: list[str] = []
        self.released: list[str] = []

    def subscription_path(self, project: str, name: str) -> str:
        return f"projects/{project}/subscriptions/{name}"

    def pull(self, request: dict[str, Any], **options: Any) -> Any:
        batch, self.waiting = self.waiting[: request["max_messages"]], self.waiting[request["max_messages"] :]
        published = {"seconds": int(ago(5).timestamp())}
        messages = [{"ack_id": ack_id, "message": {"publish_time": published}} for ack_id in batch]
        return pubsub_v1_types.PullResponse(received_messages=messages)

    def modify_ack_deadline(self, request: dict[str, Any], **options: Any) -> None:
        assert request["ack_deadline_seconds"] == 0
        self.released.extend(request["ack_ids"])

    def acknowledge(self, request: dict[str, Any], **options: Any) -> None:
        self.acknowledged.extend(request["ack_ids"])


@pytest.mark.usefixtures("on_emulators")
def test_locally_dead_letters_are_counted_by_pulling_and_every_one_is_handed_back_unacknowledged() -> None:
    subscriber = CountingSubscriber(waiting=150)
    client = FakeMetricService({})

    [row] = dead_letter_subscriptions(subscriber, client, SETTINGS, ["d"], now=NOW)  # type: ignore[arg-type]

    assert (row.kind, row.backlog, row.oldest_age_seconds, row.note) == (
        DEAD_LETTER,
        150,
        300.0,
        "counted by pulling; nothing acknowledged",
    )
    assert (len(subscriber.released), subscriber.acknowledged, client.requests) == (150, [], [])


@pytest.mark.usefixtures("in_production")
def test_verification_failures_are_the_counters_increase_over_the_hour_summed_by_reason() -> None:
    client = FakeMetricService(
        {
            monitoring.VERIFICATION_FAILURES: [
                series(reason="bad_signature", points=[(ago(0), 4), (ago(30), 2)]),
                series(reason="stale_timestamp", points=[(ago(0), 1)]),
            ]
        }
    )

    text, by_reason = recent_verification_failures(client, SETTINGS, None, now=NOW)

    assert by_reason == {"bad_signature": 6, "stale_timestamp": 1}
    assert text == "7 in the last hour (bad_signature 6, stale_timestamp 1; Cloud Monitoring)"
    request = client.requests[0]
    assert request["filter"] == f'metric.type = "{monitoring.VERIFICATION_FAILURES}"'
    assert request["aggregation"] == {
        "alignment_period": {"seconds": 3600},
        "per_series_aligner": "ALIGN_DELTA",
        "cross_series_reducer": "REDUCE_SUM",
        "group_by_fields": ["metric.labels.reason"],
    }
    assert request["interval"]["end_time"]["seconds"] - request["interval"]["start_time"]["seconds"] == 3600
    monitoring_v3.ListTimeSeriesRequest(request)  # the request is one the real client accepts


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (google_exceptions.PermissionDenied("caller lacks monitoring.timeSeries.list"), "no permission to read"),
        (
            google_exceptions.PermissionDenied(
                "Cloud Monitoring API has not been used in project demo before or it is disabled"
            ),
            "the Cloud Monitoring API is disabled in this project",
        ),
        (google_exceptions.ServiceUnavailable("down"), "did not answer within 2 s"),
        (google_exceptions.InvalidArgument("bad filter"), "refused the query"),
    ],
)
@pytest.mark.usefixtures("in_production")
def test_a_cloud_monitoring_failure_fills_only_its_cells_with_the_reason(error: Exception, says: str) -> None:
    client = FakeMetricService({}, error=error)

    rows = push_subscriptions(client, SETTINGS, ["job-status", "archive-outputs"], now=NOW)
    text, by_reason = recent_verification_failures(client, SETTINGS, None, now=NOW)

    assert [r.backlog for r in rows] == [None, None]
    assert all((r.note or "").startswith("n/a: ") and says in (r.note or "") for r in rows)
    assert text.startswith("n/a: ")
    assert says in text
    assert by_reason is None


@pytest.mark.usefixtures("in_production")
def test_no_verification_failure_metric_in_cloud_monitoring_yet_means_none_yet() -> None:
    client = FakeMetricService({}, error=google_exceptions.NotFound("no such metric"))

    assert recent_verification_failures(client, SETTINGS, None, now=NOW) == (
        "0 in the last hour (Cloud Monitoring: none recorded yet)",
        {},
    )
