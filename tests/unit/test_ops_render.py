"""The operator commands' pure parts: parsing, attribute rewriting, error sentences, rendering."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions

from replicate_relay.config import ConfigError
from replicate_relay.jobs import Job
from replicate_relay.ops.errors import NO_CREDENTIALS, OpsError, google_errors
from replicate_relay.ops.jobs_view import EventRecord, JobDetail, job_detail_json, parse_since, render_job, render_jobs
from replicate_relay.ops.render import age, table
from replicate_relay.ops.replay import (
    ReplayReport,
    dead_letter_subscription,
    describe,
    render_replay,
    replay_attributes,
)
from replicate_relay.ops.reprocess import reprocess_webhook_id
from replicate_relay.ops.status import PUSH_LOCALLY, Status, SubscriptionStatus, render_status
from replicate_relay.ops.usage import PriceTable
from replicate_relay.topology import load

NOW = datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("2h", NOW - timedelta(hours=2)),
        ("3d", NOW - timedelta(days=3)),
        ("2025-04-30T08:00:00Z", datetime(2025, 4, 30, 8, tzinfo=UTC)),
        ("2025-04-30T08:00:00", datetime(2025, 4, 30, 8, tzinfo=UTC)),
        ("2025-04-30T10:00:00+02:00", datetime(2025, 4, 30, 8, tzinfo=UTC)),
    ],
)
def test_since_takes_a_duration_before_now_or_an_iso_time_in_utc_by_default(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2 weeks", "-1h", "1y", ""])
def test_since_rejects_anything_else_with_one_sentence(text: str) -> None:
    with pytest.raises(OpsError, match="--since takes a duration such as 2h"):
        parse_since(text, NOW)


def test_replayed_attributes_keep_the_webhook_id_drop_dead_letter_bookkeeping_and_say_replay() -> None:
    attributes = {
        "prediction_id": "p1",
        "status": "succeeded",
        "webhook_id": "msg_1",
        "webhook_timestamp": "1700000000",
        "source": "webhook",
        "CloudPubSubDeadLetterSourceDeliveryCount": "10",
        "CloudPubSubDeadLetterSourceSubscription": "job-status",
    }

    assert replay_attributes(attributes) == {
        "prediction_id": "p1",
        "status": "succeeded",
        "webhook_id": "msg_1",
        "webhook_timestamp": "1700000000",
        "source": "replay",
    }


def test_a_dead_lettered_message_is_described_with_its_dead_letter_attributes_and_no_data() -> None:
    shown = describe("42", {"prediction_id": "p1", "CloudPubSubDeadLetterSourceDeliveryCount": "10"})

    assert shown == {
        "message_id": "42",
        "prediction_id": "p1",
        "status": "-",
        "webhook_id": "-",
        "source": "-",
        "CloudPubSubDeadLetterSourceDeliveryCount": "10",
    }


@pytest.mark.parametrize("name", ["job-status", "archive-outputs", "replicate-events", "job-status-dead"])
def test_only_the_topologys_dead_letter_subscriptions_can_be_replayed(name: str) -> None:
    with pytest.raises(OpsError, match="choose one of job-status-dead-letter, archive-outputs-dead-letter"):
        dead_letter_subscription(load(), name)


def test_replay_report_prints_the_four_counts_and_a_dry_run_a_table() -> None:
    done = ReplayReport("job-status-dead-letter", "replicate-events", False, 2, 2, 1, 1, errors=["7: not acknowledged"])
    dry = ReplayReport(
        "job-status-dead-letter",
        "replicate-events",
        True,
        1,
        messages=[describe("7", {"prediction_id": "p1", "CloudPubSubDeadLetterSourceDeliveryCount": "10"})],
    )

    assert render_replay(done).splitlines() == [
        "Replayed job-status-dead-letter → replicate-events: pulled 2, republished 2, acknowledged 1, failed 1",
        "  error: 7: not acknowledged",
    ]
    dry_lines = render_replay(dry).splitlines()
    assert dry_lines[2].split() == [
        "message",
        "prediction",
        "status",
        "webhook_id",
        "source",
        "deliveries",
        "dead-lettered",
        "by",
    ]
    assert dry_lines[3].split() == ["7", "p1", "-", "-", "-", "10", "-"]


def test_reprocess_webhook_ids_change_every_second_so_they_are_never_deduplicated() -> None:
    assert reprocess_webhook_id("p1", "succeeded", NOW) == "reprocess:p1:succeeded:1746100800"
    assert reprocess_webhook_id("p1", "succeeded", NOW + timedelta(seconds=1)) != reprocess_webhook_id(
        "p1", "succeeded", NOW
    )


def test_operator_errors_are_config_errors_so_the_cli_exits_2() -> None:
    assert issubclass(OpsError, ConfigError)


def test_missing_google_credentials_become_the_login_sentence() -> None:
    with pytest.raises(OpsError) as raised, google_errors("Pub/Sub", "PUBSUB_EMULATOR_HOST", timeout=1):
        raise auth_exceptions.DefaultCredentialsError("nothing found")  # type: ignore[no-untyped-call]

    assert str(raised.value) == NO_CREDENTIALS


@pytest.mark.parametrize(
    "error",
    [
        google_exceptions.ServiceUnavailable("down"),  # type: ignore[no-untyped-call]
        google_exceptions.RetryError("gave up", None),  # type: ignore[no-untyped-call]
    ],
)
def test_an_unreachable_emulator_is_named_with_its_host(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:1")

    with pytest.raises(OpsError) as raised, google_errors("Firestore", "FIRESTORE_EMULATOR_HOST", timeout=2):
        raise error

    assert str(raised.value) == (
        "cannot reach the Firestore emulator at 127.0.0.1:1 (FIRESTORE_EMULATOR_HOST) in 2 s: is it running?"
    )


def test_table_aligns_columns_and_shows_missing_values_as_a_dash() -> None:
    assert table(["a", "long header"], [["x", None], ["wider", 3]]).splitlines() == [
        "a      long header",
        "x      -",
        "wider  3",
    ]


def test_age_reads_in_the_largest_whole_unit() -> None:
    assert [age(NOW - timedelta(seconds=s), NOW) for s in (5, 300, 7200, 172800)] == [
        "5s ago",
        "5m ago",
        "2h ago",
        "2d ago",
    ]
    assert age(None, NOW) == "-"


def test_job_rendering_shows_error_outputs_and_the_trace_hint() -> None:
    job = Job(
        job_id="j1",
        prediction_id="p1",
        state="failed",
        error="CUDA out of memory",
        error_code="failed",
        updated_at=NOW - timedelta(minutes=3),
        outputs=[{"index": 0, "gs_uri": "gs://b/predictions/p1/0-out.png", "content_type": "image/png", "size": 9}],
    )
    event = EventRecord(NOW, "failed", "webhook", "applied", "msg_1", 1)

    text = render_job(JobDetail(job, "job id", [event]), now=NOW)
    listing = render_jobs([job], now=NOW)

    assert "error            failed: CUDA out of memory" in text
    assert "  0  image/png  9      gs://b/predictions/p1/0-out.png" in text
    assert text.endswith("trace: relay trace j1   (--html FILE for a page, --gcp for Cloud Trace)")
    assert listing.splitlines()[1].split()[:5] == ["j1", "failed", "-", "p1", "-"]
    assert render_jobs([], now=NOW) == "No jobs match."


def test_status_says_push_backlogs_are_not_available_locally_instead_of_inventing_numbers() -> None:
    status = Status(
        project="demo",
        at=NOW,
        subscriptions=[
            SubscriptionStatus("job-status", "push", None, False, None, PUSH_LOCALLY),
            SubscriptionStatus("job-status-dead-letter", "dead-letter (pull)", 1000, True, 7200.0, None),
        ],
        jobs_by_state={"succeeded": 3},
        stuck_jobs=1,
        stuck_after_seconds=600,
        last_event_at=NOW - timedelta(seconds=42),
        verification_failures="n/a",
    )

    text = render_status(status)

    assert "job-status              push                n/a locally (Cloud Monitoring in production)" in text
    assert "job-status-dead-letter  dead-letter (pull)  1000+" in text
    assert "2h" in text.splitlines()[4]
    assert "stuck jobs             1   (not final, not written for 10m: relay jobs list --stuck)" in text
    assert "(42s ago)" in text


PRICES = PriceTable.parse(json.dumps({"models": {"acme/flux": 0.000725}}), source="RELAY_PRICE_TABLE")


def _timed(job_id: str, predict: float | None, **fields: object) -> Job:
    metrics = {"predict_time": predict, "total_time": 4.5} if predict is not None else None
    values = {"job_id": job_id, "state": "succeeded", "model": "acme/flux", "metrics": metrics, "updated_at": NOW}
    return Job.model_validate({**values, **fields})


def test_jobs_list_shows_predict_seconds_and_no_estimate_without_a_price_table() -> None:
    listing = render_jobs([_timed("j1", 3.25), _timed("j2", None)], now=NOW)

    header, first, second = listing.splitlines()
    assert header.split()[:7] == ["job", "state", "replicate", "prediction", "model", "predict", "s"]
    assert first.split()[5] == "3.25"
    assert second.split()[5] == "-"
    assert "estimate" not in listing
    assert "$" not in listing


def test_jobs_list_with_a_price_table_marks_each_cost_as_an_estimate() -> None:
    listing = render_jobs([_timed("j1", 10.0), _timed("j2", 2.0, model="other/model")], now=NOW)
    priced = render_jobs([_timed("j1", 10.0), _timed("j2", 2.0, model="other/model")], now=NOW, prices=PRICES)

    lines = priced.splitlines()
    assert lines[0].split()[5:8] == ["predict", "s", "estimate"]
    assert lines[1].split()[5:7] == ["10.00", "$0.00725"]
    assert lines[2].split()[5:8] == ["2.00", "no", "price"]
    assert lines[-1] == "estimate: predict s × USD per second from RELAY_PRICE_TABLE; Replicate reports no cost"
    assert "estimate" not in listing


def test_job_show_prints_predict_and_total_time_and_only_with_prices_an_estimate() -> None:
    detail = JobDetail(_timed("j1", 3.25), "job id", [])

    plain = render_job(detail, now=NOW)
    priced = render_job(detail, now=NOW, prices=PRICES)
    unpriced = render_job(JobDetail(_timed("j2", 3.0, model="x/y"), "job id", []), now=NOW, prices=PRICES)

    assert "predict time     3.250 s" in plain
    assert "total time       4.500 s" in plain
    assert "estimate" not in plain
    assert "cost estimate    $0.002356   (estimate: predict time × $0.000725/s from RELAY_PRICE_TABLE)" in priced
    assert "cost estimate    -   (no price for x/y in RELAY_PRICE_TABLE)" in unpriced
    none_reported = render_job(JobDetail(_timed("j3", None), "job id", []), now=NOW)
    assert "predict time     -   (Replicate reported none)" in none_reported


def test_job_show_json_carries_usage_and_the_estimate_only_with_prices() -> None:
    detail = JobDetail(_timed("j1", 3.25), "job id", [])

    assert job_detail_json(detail)["usage"] == {"predict_time": 3.25, "total_time": 4.5}
    assert job_detail_json(detail, prices=PRICES)["usage"] == {
        "predict_time": 3.25,
        "total_time": 4.5,
        "estimate_usd": pytest.approx(3.25 * 0.000725),
        "usd_per_second": 0.000725,
        "prices": "RELAY_PRICE_TABLE",
    }
