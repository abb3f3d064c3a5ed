"""Capacity and cost on paper: what Relay would need for N predictions a day, from the e2e run's counts.

Reads the per-prediction counts `bench/e2e.py` writes to bench/results/e2e.json (or `--counts FILE`);
without that file it says so and uses DOCUMENTED_COUNTS, the figures docs/BENCHMARKS.md records for
the last full e2e run. It measures nothing and starts nothing: it multiplies those counts by a load
(10 million predictions a day by default, bursts of 10x the average), checks the result against the
Cloud Run settings of infra/terraform/run.tf and Firestore's documented limits, and prices it with
PRICES, the one table of list prices (each with its source and the date it was read). Every figure
that is not measured is in ASSUMED, with why. docs/CAPACITY.md is written from its output.

    .venv/bin/python bench/capacity.py [--counts FILE] [--per-day 10000000] [--burst 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
E2E_JSON = REPO_ROOT / "bench" / "results" / "e2e.json"
SECONDS_PER_DAY = 86_400
GIB = 2**30
TIB = 2**40


# Measured counts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """What one prediction costs in each resource, as the e2e run counted it (per prediction)."""

    source: str
    measured_at: str
    predictions: int
    webhooks: float  # delivered 2xx
    replicate_events: float  # messages published on replicate-events
    job_events: float  # messages published on job-events
    succeeded_share: float  # of predictions; archive-outputs is pushed one message per succeeded one
    files: float  # output files per prediction
    writes: Mapping[str, float]  # Firestore document writes per prediction, by kind (bench/e2e.py firestore_writes)
    commits: float  # the handlers' Commit RPCs per prediction
    job_status_ms: float  # job-status's p50 time per message (the emulator's 2 s lock timeouts skew the mean)
    archive_ms: float  # archive-outputs's p50 time per succeeded message, from its spans (bench/e2e.py)
    receiver_cpu_us: float  # the receiver's server CPU per webhook (bench/receiver.py, not e2e)

    @property
    def writes_total(self) -> float:
        return sum(self.writes.values())

    @property
    def job_document_writes(self) -> float:
        """Writes to documents of the `jobs` collection (the rest go to predictions/ and jobs/*/events/)."""
        w = self.writes
        return (
            w.get("submit", 0.0) * 2 / 3  # of the 3 submit writes, 1 is predictions/{id}
            + w.get("job_updates_by_events", 0.0)
            + w.get("archive_finish", 0.0)
            + w.get("announcements", 0.0)
        )


# docs/BENCHMARKS.md, "End to end" (full run measured 2026-12-02T04:30:44+00:00 at commit 6b4b715, after
# issue #14's lean pipeline: 200 predictions at 5/s, 2 files of 16 KiB each, every webhook event) and the
# receiver's 767 µs server CPU per webhook (full run measured 2026-11-29T20:14:24+00:00; the runs of
# 2026-12-02 measure 204-428 µs on faster machines, docs/PERFORMANCE.md). Used when
# bench/results/e2e.json is not on this machine.
DOCUMENTED_COUNTS = Counts(
    source="docs/BENCHMARKS.md (no bench/results/e2e.json here)",
    measured_at="2026-12-02T04:30:44+00:00",
    predictions=200,
    webhooks=6.0,
    replicate_events=6.0,
    job_events=1.0,
    succeeded_share=1.0,
    files=2,
    writes={
        "submit": 600 / 200,
        "event_records": 1200 / 200,
        "job_updates_by_events": 600 / 200,
        "archive_finish": 200 / 200,
        "announcements": 200 / 200,
    },
    commits=8.01,
    job_status_ms=13.7,
    archive_ms=42.8,
    receiver_cpu_us=767.0,
)


def counts_from_e2e(document: Mapping[str, Any], *, source: str, receiver_cpu_us: float) -> Counts:
    """The per-prediction counts of one bench/e2e.py results document."""
    n = document["submit"]["submitted"] or 1
    pubsub, firestore = document["pubsub"], document["firestore"]
    job_status_ms = document.get("services", {}).get("job-status", {}).get("p50_ms") or DOCUMENTED_COUNTS.job_status_ms
    archive_ms = (
        document.get("archive_outputs_spans", {}).get("message", {}).get("p50_ms") or DOCUMENTED_COUNTS.archive_ms
    )
    return Counts(
        source=source,
        measured_at=str(document.get("generated_at", "unknown")),
        predictions=n,
        webhooks=document["webhooks"]["per_prediction"],
        replicate_events=pubsub["replicate_events_per_prediction"],
        job_events=pubsub["job_events_per_prediction"],
        succeeded_share=document["jobs"]["states"].get("succeeded", 0) / n,
        files=document["settings"]["files"],
        writes={kind: count / n for kind, count in firestore["writes"].items() if kind != "total"},
        commits=firestore["handler_commits_per_prediction"],
        job_status_ms=round(job_status_ms, 1),
        archive_ms=round(archive_ms, 1),
        receiver_cpu_us=receiver_cpu_us,
    )


# Assumptions ---------------------------------------------------------------------------------------

# Everything below is not measured by bench/e2e.py; each can be changed on the command line.
ASSUMED: dict[str, tuple[float, str]] = {
    "body_bytes": (
        1_500,
        "a typical webhook body (the prediction JSON); the simulator's are 529-694 B, real ones carry "
        "longer logs, a 64-hex version and more urls",
    ),
    "attribute_bytes": (
        240,
        "Pub/Sub attributes of a replicate-events message (prediction_id, status, webhook_id, "
        "webhook_timestamp, source, traceparent) + 20 B timestamp + message id",
    ),
    "job_event_bytes": (900, "a job-events message (replicate_relay.jobevents.JobEvent JSON with 2 gs:// outputs)"),
    "app_subscriptions": (1, "pull subscriptions on job-events (one app)"),
    "output_mib": (1.0, "an output file (e2e used 16 KiB); sets the archive's Cloud Storage bytes"),
    "handler_cpu_ms": (
        2.0,
        "CPU per handler message: not measured; a no-op Flask request costs 0.97 ms (BENCHMARKS.md, Receiver)",
    ),
    "receiver_latency_ms": (15.8, "receiver answer time (BENCHMARKS.md: p50 at half its peak, emulator)"),
    "spans_per_webhook": (
        12.3,
        "spans per webhook with the archive-outputs filter applied: 74.0 per prediction counted in the span "
        "files of both e2e runs of 2026-12-02 (commit 6b4b715, 1/s and 5/s) once the spans of the pushes the "
        "emulator makes for non-succeeded events are left out: receiver 2, job-status 5.8 a webhook, "
        "archive-outputs 27 a succeeded prediction",
    ),
    "log_bytes": (
        1_050,
        "one log entry as Cloud Logging bills it: Relay's JSON lines measured 548-738 B (e2e, 2026-12-02), "
        "plus ~400 B of LogEntry metadata (resource, labels, trace)",
    ),
    "request_log_bytes": (800, "one Cloud Run request log entry (run.googleapis.com/requests), not measured"),
    "metric_series_per_instance": (12, "time series each instance exports (relay.* instruments x labels)"),
    "metric_point_bytes": (80, "a distribution point as Cloud Monitoring bills it (worst case; a scalar is 8)"),
}


def assumed(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    values = {name: value for name, (value, _) in ASSUMED.items()}
    values.update(overrides or {})
    return values


# Cloud Run settings of infra/terraform/run.tf, and the autoscaler's targets.
SERVICES = {
    "receiver": {"concurrency": 80, "memory_gib": 0.5, "cpu": 1, "cpu_idle": False, "min": 1},
    "job-status": {"concurrency": 8, "memory_gib": 1.0, "cpu": 1, "cpu_idle": True, "min": 0},
    "archive-outputs": {"concurrency": 8, "memory_gib": 1.0, "cpu": 1, "cpu_idle": True, "min": 0},
}
MAX_INSTANCES = 20  # var.max_instances, per service
# https://cloud.google.com/run/docs/about-instance-autoscaling (stored copy read 2026-12-01): the autoscaler
# keeps instances at 60% CPU and 60% of their maximum concurrency over a one-minute window.
CPU_TARGET = 0.6
CONCURRENCY_TARGET = 0.6

# Firestore limits (stored copies read 2026-12-01).
FIRESTORE_SEQUENTIAL_INDEX_WRITES = 500  # writes/s to a collection with a monotonically increasing indexed field:
# https://firebase.google.com/docs/firestore/solutions/shard-timestamp
FIRESTORE_DOCUMENT_WRITES = 1.0  # sustained writes/s per document: docs/ARCHITECTURE.md, Coalescing
FIRESTORE_RAMP_START = 500  # ops/s to a new collection, then +50% every 5 minutes ("500/50/5"):
# https://cloud.google.com/firestore/docs/best-practices
TRACE_SPANS_QUOTA_LOW = 3_000_000  # spans/day, the low end of Cloud Trace's ingestion quota (3M-5B by billing history):
# https://cloud.google.com/trace/docs/quotas


# Prices ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    usd: float | None  # None: not found; the cost table leaves that line out and says so
    unit: str
    source: str
    date: str  # the date the page shows, or when its stored copy was read


READ = "stored copy read 2026-12-01"
PRICES: dict[str, Price] = {
    "run_cpu_instance": Price(
        0.000018,
        "vCPU-second, instance-based billing (CPU always allocated), Tier 1",
        "https://cloud.google.com/run/pricing",
        f"no date on page; {READ}",
    ),
    "run_mem_instance": Price(
        None,
        "GiB-second, instance-based billing, Tier 1",
        "https://cloud.google.com/run/pricing (row cut off in the stored copy)",
        f"not found; {READ}",
    ),
    "run_cpu_request": Price(
        0.000024,
        "vCPU-second, request-based billing (CPU only during requests), Tier 1",
        "https://cloud.google.com/run/pricing?authuser=2",
        f"no date on page; {READ}",
    ),
    "run_mem_request": Price(
        0.0000025,
        "GiB-second, request-based billing, Tier 1",
        "https://cloudwebschool.com/tools/cloud-run-cost-calculator/ (third party; Google's row cut off)",
        READ,
    ),
    "run_requests": Price(
        0.40 / 1e6,
        "request, request-based billing (USD 0.40 per million)",
        "https://cloudwebschool.com/tools/cloud-run-cost-calculator/ (third party; Google's row cut off)",
        READ,
    ),
    "pubsub_tib": Price(
        40.0,
        "TiB of throughput (publish + each delivery), at least 1000 B per request; first 10 GiB free",
        "https://cloud.google.com/pubsub/pricing",
        f"no date on page; {READ}",
    ),
    "firestore_read": Price(
        0.03 / 1e5,
        "document read, Standard edition, us-central1 (USD 0.03 per 100,000)",
        "Firestore docs 'Query interfaces overview' (copy in a public repository; "
        "https://cloud.google.com/firestore/pricing renders its table by script)",
        READ,
    ),
    "firestore_write": Price(
        0.09 / 1e5,
        "document write, Standard edition, us-central1 (USD 0.09 per 100,000)",
        "Firestore docs 'Query interfaces overview' (as above)",
        READ,
    ),
    "firestore_delete": Price(
        0.01 / 1e5,
        "document delete (TTL deletes included), us-central1 (USD 0.01 per 100,000)",
        "Firestore docs 'Query interfaces overview' (as above)",
        READ,
    ),
    "firestore_storage_gib_month": Price(
        None,
        "GiB-month stored",
        "https://cloud.google.com/firestore/pricing (table rendered by script, not in the stored copy)",
        f"not found; {READ}",
    ),
    "gcs_class_a": Price(
        0.005 / 1000,
        "Class A operation (object insert, object list), Standard (USD 0.005 per 1,000)",
        "https://cloud.google.com/storage/pricing-examples",
        f"no date on page; {READ}",
    ),
    "gcs_class_b": Price(
        0.0004 / 1000,
        "Class B operation (object get, metadata), Standard (USD 0.0004 per 1,000)",
        "https://cloud.google.com/storage/pricing-examples",
        f"no date on page; {READ}",
    ),
    "gcs_gib_month": Price(
        0.020,
        "GB-month, Standard storage, us-central1 / us-east1",
        "https://cloud.google.com/storage/pricing-examples",
        f"no date on page; {READ}",
    ),
    "trace_span": Price(
        0.20 / 1e6,
        "span ingested (USD 0.20 per million; first 2.5 million a month free)",
        "https://cloud.google.com/stackdriver/pricing",
        f"effective 2018-11-01 on page; {READ}",
    ),
    "logging_gib": Price(
        0.50,
        "GiB of logs stored (ingested); first 50 GiB per project a month free",
        "https://cloud.google.com/stackdriver/pricing",
        f"effective 2018-07-01 on page; {READ}",
    ),
    "monitoring_mib": Price(
        0.2580,
        "MiB of chargeable metric data, 150-100,000 MiB band",
        "https://cloud.google.com/stackdriver/pricing",
        f"effective 2018-07-01 on page; {READ}",
    ),
}


def price(name: str) -> float | None:
    return PRICES[name].usd


# The arithmetic --------------------------------------------------------------------------------------


def billed_bytes(message_bytes: float) -> float:
    """Pub/Sub bills each publish, push or pull request at least 1000 bytes (one message a request here)."""
    return max(1000.0, message_bytes)


def instances(*, rate: float, seconds_each: float, concurrency: int, cpu_s_each: float, minimum: int = 0) -> float:
    """Instances the autoscaler keeps for `rate` requests/s: the larger of the CPU and concurrency drivers
    (each at its 60% target), fractional, at least `minimum`."""
    by_cpu = rate * cpu_s_each / CPU_TARGET
    by_concurrency = rate * seconds_each / (concurrency * CONCURRENCY_TARGET)
    return max(by_cpu, by_concurrency, float(minimum))


def ramp_minutes(target_ops: float, start: float = FIRESTORE_RAMP_START) -> float:
    """Minutes the 500/50/5 rule takes from `start` ops/s to `target_ops` (+50% every 5 minutes)."""
    if target_ops <= start:
        return 0.0
    return 5 * math.ceil(math.log(target_ops / start) / math.log(1.5))


@dataclass(frozen=True)
class Load:
    per_day: float
    burst: float

    @property
    def average(self) -> float:
        return self.per_day / SECONDS_PER_DAY

    @property
    def peak(self) -> float:
        return self.average * self.burst


def per_prediction(counts: Counts, a: Mapping[str, float]) -> dict[str, float]:
    """Every resource one prediction uses in production (the archive-outputs filter applied)."""
    message = a["body_bytes"] + a["attribute_bytes"]
    archive_pushes = counts.succeeded_share  # production: only succeeded events reach archive-outputs
    # Firestore reads, from the code paths in replicate_relay/jobstore.py (not measured): job-status applies an
    # event in a
    # transaction that reads the mapping, then the job and its event record (3); a succeeded event it leaves to
    # archive-outputs only looks the job up (mapping and job, 2) before creating its record; archive-outputs
    # looks the job up (2) and finishes it in one conditional write, which claims the announcement (0);
    # mark_announced, create_submitted and attach_prediction's batch write without reading (0).
    reads = 3 * (counts.webhooks - counts.succeeded_share) + 2 * counts.succeeded_share + 2 * archive_pushes
    pubsub_bytes = (
        counts.replicate_events * billed_bytes(message)  # receiver publishes, one message a request
        + counts.webhooks * billed_bytes(message)  # pushed to job-status
        + archive_pushes * billed_bytes(message)  # pushed to archive-outputs
        + counts.job_events * billed_bytes(a["job_event_bytes"]) * (1 + a["app_subscriptions"])
    )
    return {
        "webhooks": counts.webhooks,
        "pubsub_messages": counts.replicate_events + counts.job_events,
        "pubsub_deliveries": counts.webhooks + archive_pushes + counts.job_events * a["app_subscriptions"],
        "pubsub_billed_bytes": pubsub_bytes,
        "firestore_writes": counts.writes_total,
        "firestore_job_writes": counts.job_document_writes,
        "firestore_reads": reads,
        "firestore_ttl_deletes": counts.writes.get("event_records", 0.0),
        "gcs_class_a": counts.files * counts.succeeded_share * 2,  # a listing (existence check) + one upload
        "gcs_gib": counts.files * counts.succeeded_share * a["output_mib"] / 1024,
        "spans": counts.webhooks * a["spans_per_webhook"],
        "log_entries": counts.webhooks * 2 + archive_pushes,  # receiver + job-status per webhook, archive once
        "log_gib": (counts.webhooks * 2 + archive_pushes) * (a["log_bytes"] + a["request_log_bytes"]) / GIB,
    }


def fleet(counts: Counts, a: Mapping[str, float], rate: float) -> dict[str, float]:
    """Instances per service at `rate` predictions/s."""
    webhooks = rate * counts.webhooks
    return {
        "receiver": instances(
            rate=webhooks,
            seconds_each=a["receiver_latency_ms"] / 1000,
            concurrency=SERVICES["receiver"]["concurrency"],
            cpu_s_each=counts.receiver_cpu_us / 1e6,
            minimum=SERVICES["receiver"]["min"],
        ),
        "job-status": instances(
            rate=webhooks,
            seconds_each=counts.job_status_ms / 1000,
            concurrency=SERVICES["job-status"]["concurrency"],
            cpu_s_each=a["handler_cpu_ms"] / 1000,
        ),
        "archive-outputs": instances(
            rate=rate * counts.succeeded_share,
            seconds_each=counts.archive_ms / 1000,
            concurrency=SERVICES["archive-outputs"]["concurrency"],
            cpu_s_each=a["handler_cpu_ms"] / 1000 * (1 + counts.files),
        ),
    }


def cost_per_day(counts: Counts, a: Mapping[str, float], load: Load) -> dict[str, float | None]:
    """USD a day at the average rate, by line (None where a price was not found). Free tiers left out."""
    use = per_prediction(counts, a)
    n = load.per_day
    running = fleet(counts, a, load.average)

    def run_instance_day(service: str, count: float, *, request_based: bool) -> float | None:
        cpu = price("run_cpu_request" if request_based else "run_cpu_instance")
        mem = price("run_mem_request" if request_based else "run_mem_instance")
        if cpu is None:
            return None
        settings = SERVICES[service]
        seconds = count * SECONDS_PER_DAY
        return seconds * settings["cpu"] * cpu + (seconds * settings["memory_gib"] * mem if mem else 0.0)

    def times(amount: float, name: str) -> float | None:
        unit = price(name)
        return None if unit is None else amount * unit

    requests = price("run_requests") or 0.0
    handlers_requests = n * (counts.webhooks + counts.succeeded_share)
    return {
        "Cloud Run receiver (instance-based, memory unpriced)": run_instance_day(
            "receiver", running["receiver"], request_based=False
        ),
        "Cloud Run job-status (request-based)": run_instance_day(
            "job-status", running["job-status"], request_based=True
        ),
        "Cloud Run archive-outputs (request-based)": run_instance_day(
            "archive-outputs", running["archive-outputs"], request_based=True
        ),
        "Cloud Run handler requests": handlers_requests * requests,
        "Pub/Sub throughput": times(n * use["pubsub_billed_bytes"] / TIB, "pubsub_tib"),
        "Firestore writes": times(n * use["firestore_writes"], "firestore_write"),
        "Firestore reads": times(n * use["firestore_reads"], "firestore_read"),
        "Firestore TTL deletes": times(n * use["firestore_ttl_deletes"], "firestore_delete"),
        "Cloud Storage Class A": times(n * use["gcs_class_a"], "gcs_class_a"),
        "Cloud Storage, a day's outputs kept a month": times(n * use["gcs_gib"], "gcs_gib_month"),
        "Cloud Trace spans": times(n * use["spans"], "trace_span"),
        "Cloud Logging": times(n * use["log_gib"], "logging_gib"),
        "Cloud Monitoring": times(metric_mib_per_day(running, a), "monitoring_mib"),
    }


def metric_mib_per_day(running: Mapping[str, float], a: Mapping[str, float]) -> float:
    """Each instance exports every series once a minute."""
    points = sum(math.ceil(count) for count in running.values()) * a["metric_series_per_instance"] * 1440
    return points * a["metric_point_bytes"] / 2**20


def limits(counts: Counts, a: Mapping[str, float], load: Load) -> list[dict[str, Any]]:
    """Each limit, the rate of predictions/s at which it binds, and the load against it, first binding first."""
    use = per_prediction(counts, a)
    peak_fleet = fleet(counts, a, load.peak)
    per_instance = {service: peak_fleet[service] / load.peak for service in peak_fleet}
    rows = [
        {
            "limit": "Firestore: 500 writes/s to a collection with a sequential indexed field (jobs: updated_at)",
            "binds_at": FIRESTORE_SEQUENTIAL_INDEX_WRITES / use["firestore_job_writes"],
            "at_peak": f"{load.peak * use['firestore_job_writes']:,.0f} writes/s to jobs/",
        },
        {
            "limit": "Firestore: 500 writes/s, predictions/ (created_at indexed)",
            "binds_at": FIRESTORE_SEQUENTIAL_INDEX_WRITES / max(counts.writes.get("submit", 3.0) / 3, 1e-9),
            "at_peak": f"{load.peak * counts.writes.get('submit', 3.0) / 3:,.0f} writes/s to predictions/",
        },
        *(
            {
                "limit": f"Cloud Run max_instances = {MAX_INSTANCES} ({service})",
                "binds_at": MAX_INSTANCES / per_instance[service],
                "at_peak": f"{peak_fleet[service]:,.1f} instances wanted",
            }
            for service in peak_fleet
        ),
        {
            "limit": "Cloud Trace: 3M spans/day ingestion quota (low end; up to 5B by billing history)",
            "binds_at": TRACE_SPANS_QUOTA_LOW / SECONDS_PER_DAY / use["spans"],
            "at_peak": f"{load.per_day * use['spans'] / 1e6:,.0f}M spans/day at the average",
        },
    ]
    for row in rows:
        row["binds_at"] = round(row["binds_at"], 1)
        row["times_average"] = round(row["binds_at"] / load.average, 3)
    return sorted(rows, key=lambda row: row["binds_at"])


def report(counts: Counts, a: Mapping[str, float], load: Load) -> dict[str, Any]:
    use = per_prediction(counts, a)
    daily = cost_per_day(counts, a, load)
    priced = {line: usd for line, usd in daily.items() if usd is not None}
    total = sum(priced.values())
    return {
        "counts": {**asdict(counts), "writes_total": counts.writes_total, "job_writes": counts.job_document_writes},
        "assumed": dict(a),
        "load": {"per_day": load.per_day, "average_per_s": load.average, "burst": load.burst, "peak_per_s": load.peak},
        "per_prediction": use,
        "per_second": {
            name: {"average": value * load.average, "peak": value * load.peak} for name, value in use.items()
        },
        "instances": {"average": fleet(counts, a, load.average), "peak": fleet(counts, a, load.peak)},
        "firestore_ramp_minutes": ramp_minutes(load.peak * (use["firestore_writes"] + use["firestore_reads"])),
        "cost_per_day": daily,
        "unpriced": [line for line, usd in daily.items() if usd is None],
        "cost_per_1000": {line: usd / load.per_day * 1000 for line, usd in priced.items()},
        "total_per_day": total,
        "total_per_1000": total / load.per_day * 1000,
        "limits": limits(counts, a, load),
    }


# Output --------------------------------------------------------------------------------------------


def money(usd: float) -> str:
    return f"{usd:,.4f}" if usd < 1 else f"{usd:,.2f}"


def render(result: Mapping[str, Any]) -> str:
    counts, load, use = result["counts"], result["load"], result["per_prediction"]
    lines = [
        f"counts: {counts['source']}, measured {counts['measured_at']} ({counts['predictions']} predictions)",
        f"load: {load['per_day']:,.0f} predictions a day = {load['average_per_s']:,.1f}/s average, "
        f"{load['peak_per_s']:,.1f}/s in a {load['burst']:g}x burst",
        "",
        "| per prediction | count | per second, average | per second, burst |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, value in use.items():
        rates = result["per_second"][name]
        lines.append(f"| {name} | {value:,.4g} | {rates['average']:,.1f} | {rates['peak']:,.1f} |")
    lines += ["", "| service | instances, average | instances, burst |", "| --- | ---: | ---: |"]
    for service, average in result["instances"]["average"].items():
        lines.append(f"| {service} | {average:,.1f} | {result['instances']['peak'][service]:,.1f} |")
    lines += [
        "",
        f"Firestore 500/50/5 ramp to the burst's reads + writes: {result['firestore_ramp_minutes']:g} minutes",
        "",
        "| line | USD a day | USD per 1,000 predictions |",
        "| --- | ---: | ---: |",
    ]
    for line, usd in result["cost_per_day"].items():
        if usd is None:
            lines.append(f"| {line} | price not found | — |")
        else:
            lines.append(f"| {line} | {money(usd)} | {money(result['cost_per_1000'][line])} |")
    lines.append(f"| **total priced** | **{money(result['total_per_day'])}** | **{money(result['total_per_1000'])}** |")
    lines += ["", "| limit | binds at predictions/s | × average | at the burst |", "| --- | ---: | ---: | --- |"]
    for row in result["limits"]:
        lines.append(f"| {row['limit']} | {row['binds_at']:,.1f} | {row['times_average']:.2f} | {row['at_peak']} |")
    lines += ["", "| price | USD | unit | source | date |", "| --- | ---: | --- | --- | --- |"]
    for name, item in PRICES.items():
        usd = "not found" if item.usd is None else f"{item.usd:.10g}"
        lines.append(f"| {name} | {usd} | {item.unit} | {item.source} | {item.date} |")
    return "\n".join(lines)


def load_counts(path: Path | None, receiver_cpu_us: float | None, *, documented: bool = False) -> Counts:
    """The counts of `path`, else of bench/results/e2e.json, else DOCUMENTED_COUNTS (saying so)."""
    cpu = receiver_cpu_us or DOCUMENTED_COUNTS.receiver_cpu_us
    if documented:
        return replace(DOCUMENTED_COUNTS, receiver_cpu_us=cpu, source="docs/BENCHMARKS.md (--documented)")
    target = path or E2E_JSON
    if target.exists():
        document = json.loads(target.read_text(encoding="utf-8"))
        return counts_from_e2e(document, source=str(target), receiver_cpu_us=cpu)
    if path is not None:
        raise SystemExit(f"{path}: no such file")
    print(
        f"note: {E2E_JSON.relative_to(REPO_ROOT)} is not on this machine (run bench/e2e.py, or pass --counts FILE); "
        f"using the figures docs/BENCHMARKS.md records for the run of {DOCUMENTED_COUNTS.measured_at}",
        file=sys.stderr,
    )
    return replace(DOCUMENTED_COUNTS, receiver_cpu_us=cpu)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--counts", type=Path, help="a bench/e2e.py results file (default bench/results/e2e.json)")
    parser.add_argument("--documented", action="store_true", help="use DOCUMENTED_COUNTS even if e2e.json exists")
    parser.add_argument("--per-day", type=float, default=10_000_000, help="predictions a day (default 10 million)")
    parser.add_argument("--burst", type=float, default=10.0, help="burst rate as a multiple of the average (10)")
    parser.add_argument("--receiver-cpu-us", type=float, help="receiver CPU µs per webhook (default 767)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="change an ASSUMED value")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = parser.parse_args(argv)
    if args.per_day <= 0 or args.burst < 1:
        parser.error("--per-day must be positive and --burst at least 1")
    overrides: dict[str, float] = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in ASSUMED:
            parser.error(f"--set {item}: no assumption {name!r} (one of {', '.join(ASSUMED)})")
        try:
            overrides[name] = float(value)
        except ValueError:
            parser.error(f"--set {item}: {value!r} is not a number")
    args.overrides = overrides
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = load_counts(args.counts, args.receiver_cpu_us, documented=args.documented)
    result = report(counts, assumed(args.overrides), Load(args.per_day, args.burst))
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
