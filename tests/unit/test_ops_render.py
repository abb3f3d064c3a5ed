"""The operator commands' pure parts: parsing, attribute rewriting, error sentences, rendering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions

from replicate_relay.config import ConfigError
from replicate_relay.jobs import Job
from replicate_relay.ops.errors import NO_CREDENTIALS, OpsError, google_errors
from replicate_relay.ops.jobs_view import EventRecord, JobDetail, parse_since, render_job, render_jobs
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
