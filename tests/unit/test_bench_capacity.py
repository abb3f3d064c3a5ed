"""bench/capacity.py's arithmetic: counts read from an e2e results document, Pub/Sub's billed bytes,
the autoscaler's instance count, the Firestore ramp, which limit binds first, and the cost table."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from tests.unit.bench_scripts import load

capacity = load("bench_capacity", "capacity.py")
DOC = capacity.DOCUMENTED_COUNTS
A = capacity.assumed()


def e2e_document(**changes: object) -> dict[str, object]:
    """The parts of a bench/e2e.py results document that capacity.py reads: 10 predictions."""
    document: dict[str, object] = {
        "generated_at": "2026-12-01T00:00:00+00:00",
        "settings": {"files": 2},
        "submit": {"submitted": 10},
        "jobs": {"states": {"succeeded": 8, "failed": 2}},
        "webhooks": {"per_prediction": 6.0},
        "pubsub": {"replicate_events_per_prediction": 6.0, "job_events_per_prediction": 1.0},
        "firestore": {
            "writes": {
                "submit": 30,
                "event_records": 60,
                "job_updates_by_events": 20,
                "archive_finish": 8,
                "announcements": 20,
                "total": 138,
            },
            "handler_commits_per_prediction": 9.0,
        },
        "services": {"job-status": {"requests": 60, "p50_ms": 30.0, "busy_s": 12.0}},
        "archive_outputs_spans": {"message": {"count": 8, "p50_ms": 80.0, "p90_ms": 150.0}},
    }
    document.update(changes)
    return document


def test_counts_from_an_e2e_document_are_per_prediction() -> None:
    counts = capacity.counts_from_e2e(e2e_document(), source="x", receiver_cpu_us=700.0)
    assert counts.predictions == 10
    assert counts.succeeded_share == pytest.approx(0.8)
    assert counts.writes == {
        "submit": 3.0,
        "event_records": 6.0,
        "job_updates_by_events": 2.0,
        "archive_finish": 0.8,
        "announcements": 2.0,
    }
    assert counts.writes_total == pytest.approx(13.8)  # "total" is not counted twice
    assert counts.job_status_ms == 30.0  # the p50, not busy_s / requests
    assert counts.archive_ms == 80.0  # archive-outputs's p50 a succeeded message, from its spans
    assert counts.receiver_cpu_us == 700.0


def test_job_document_writes_leave_out_the_mapping_and_the_event_records() -> None:
    # 2 of the 3 submit writes, every job update, the archive's finish (which claims the
    # announcement), the mark announced.
    assert DOC.job_document_writes == pytest.approx(2 + 3 + 1 + 1)


def test_an_e2e_document_without_archive_spans_uses_the_documented_archive_time() -> None:
    document = e2e_document()
    del document["archive_outputs_spans"]
    assert capacity.counts_from_e2e(document, source="x", receiver_cpu_us=700.0).archive_ms == DOC.archive_ms


def test_pubsub_bills_at_least_1000_bytes_a_request() -> None:
    assert capacity.billed_bytes(10) == 1000
    assert capacity.billed_bytes(1740) == 1740


def test_pubsub_bytes_per_prediction() -> None:
    counts = dataclasses.replace(DOC, webhooks=6.0, replicate_events=6.0, succeeded_share=1.0)
    small = {**A, "body_bytes": 100, "attribute_bytes": 100, "job_event_bytes": 100, "app_subscriptions": 1}
    # 6 publishes + 6 pushes to job-status + 1 to archive-outputs, each billed 1000 B; job-events: 1 publish + 1 pull.
    assert capacity.per_prediction(counts, small)["pubsub_billed_bytes"] == (6 + 6 + 1 + 2) * 1000
    big = {**small, "body_bytes": 1900}
    assert capacity.per_prediction(counts, big)["pubsub_billed_bytes"] == 13 * 2000 + 2 * 1000


def test_instances_take_the_larger_driver_at_the_autoscalers_targets() -> None:
    # CPU: 1,000/s x 0.6 ms = 0.6 vCPU, at 60% → 1 instance; concurrency: 1,000 x 0.05 s = 50 in flight / (80 x 0.6).
    assert capacity.instances(rate=1000, seconds_each=0.05, concurrency=80, cpu_s_each=0.0006) == pytest.approx(50 / 48)
    assert capacity.instances(rate=1000, seconds_each=0.001, concurrency=80, cpu_s_each=0.0012) == pytest.approx(2.0)
    assert capacity.instances(rate=0.0, seconds_each=1, concurrency=8, cpu_s_each=1, minimum=1) == 1.0


def test_receiver_instances_follow_its_cpu_per_webhook() -> None:
    load = capacity.Load(10_000_000, 10)
    peak = capacity.fleet(DOC, A, load.peak)["receiver"]
    assert peak == pytest.approx(load.peak * DOC.webhooks * 767e-6 / 0.6)


def test_firestore_ramp_adds_half_every_five_minutes() -> None:
    assert capacity.ramp_minutes(400) == 0.0
    assert capacity.ramp_minutes(750) == 5
    assert capacity.ramp_minutes(751) == 10
    assert capacity.ramp_minutes(500 * 1.5**6) == pytest.approx(30, abs=5)


def test_load_average_and_peak() -> None:
    load = capacity.Load(8_640_000, 10)
    assert load.average == 100.0
    assert load.peak == 1000.0


def test_the_jobs_collection_binds_first_at_ten_million_a_day() -> None:
    load = capacity.Load(10_000_000, 10)
    rows = [row for row in capacity.limits(DOC, A, load) if "Cloud Trace" not in row["limit"]]
    assert rows[0]["limit"].startswith("Firestore: 500 writes/s to a collection")
    assert rows[0]["binds_at"] == pytest.approx(500 / 7, abs=0.1)
    assert [row["binds_at"] for row in rows] == sorted(row["binds_at"] for row in rows)


def test_the_cost_table_leaves_out_prices_not_found_and_says_so() -> None:
    result = capacity.report(DOC, A, capacity.Load(10_000_000, 10))
    assert result["unpriced"] == []  # the receiver's memory is unpriced inside its line, which is labelled
    assert "memory unpriced" in next(iter(result["cost_per_day"]))
    assert result["total_per_1000"] == pytest.approx(sum(result["cost_per_1000"].values()))
    writes = result["cost_per_day"]["Firestore writes"]
    assert writes == pytest.approx(10_000_000 * DOC.writes_total * 0.09 / 1e5)


def test_a_missing_price_makes_its_line_none(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = capacity.Price(None, "span", "nowhere", "not found")
    monkeypatch.setitem(capacity.PRICES, "trace_span", missing)
    result = capacity.report(DOC, A, capacity.Load(10_000_000, 10))
    assert result["cost_per_day"]["Cloud Trace spans"] is None
    assert result["unpriced"] == ["Cloud Trace spans"]
    assert "price not found" in capacity.render(result)


def test_every_price_names_its_source_and_date() -> None:
    for name, item in capacity.PRICES.items():
        assert item.source, name
        assert "2026-" in item.date or "20" in item.date, name


def test_without_e2e_json_it_says_so_and_uses_the_documented_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(capacity, "E2E_JSON", tmp_path / "e2e.json")
    monkeypatch.setattr(capacity, "REPO_ROOT", tmp_path)
    counts = capacity.load_counts(None, None)
    assert counts.measured_at == DOC.measured_at
    assert "is not on this machine" in capsys.readouterr().err


def test_counts_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(e2e_document()), encoding="utf-8")
    assert capacity.load_counts(path, None).source == str(path)
    with pytest.raises(SystemExit):
        capacity.load_counts(tmp_path / "absent.json", None)


def test_main_prints_the_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert capacity.main(["--documented", "--set", "body_bytes=2000"]) == 0
    out = capsys.readouterr().out
    assert "| receiver |" in out
    assert "total priced" in out
    assert math.isfinite(float(out.split("instances wanted")[0].rsplit("|", 1)[-1].split()[0].replace(",", "")))


def test_an_unknown_assumption_is_refused() -> None:
    with pytest.raises(SystemExit):
        capacity.parse_args(["--set", "nonsense=1"])
