"""End to end: predictions through the whole local stack, every webhook accounted for; `--soak` for leaks.

The default run has the reconciler off, so every job must end through its webhooks alone; a webhook
is lost when the receiver acknowledged it and it left no event record with the job behind. `--soak`
runs a fixed mix (`plan()`) with chaos and the reconciler on, sampling every process from /proc.
Writes bench/results/NAME.json and the NAME section of docs/BENCHMARKS.md (NAME: the --results
file's stem); exits 1 if a webhook was lost or a job did not end as it should.

    .venv/bin/python bench/e2e.py [--predictions 200] [--rate 5] [--quick] [--results PATH]
    .venv/bin/python bench/e2e.py --soak [--minutes 30] [--rate 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script: sys.path[0] is bench/, the packages are one level up

import common  # noqa: E402
from common import LOG_DIR, RESULTS_DIR, BenchError, Processes, ms, percentile, secs  # noqa: E402

from replicate_relay.devstack.stack import LocalStack, StackConfig  # noqa: E402
from replicate_relay.jobstore import EVENTS, JOBS, PREDICTIONS, event_key  # noqa: E402

MODEL = "flux-kontext-apps/restore-image"
POLL_EVERY_S = 30.0  # the old design: GET every job's prediction every 30 s
READ_BATCH = 100  # documents per Firestore get_all
SETTLE_S = 60.0  # at most this long, after every job is final, for the last event records
PULL_BATCH = 1000
MIB = 1024 * 1024

# How far a webhook's status takes a job, and how far each job state is (replicate_relay/jobs.py's order):
# a webhook without its record is only "superseded" when the job is at least that far.
STATUS_RANK = {"starting": 1, "processing": 2, "succeeded": 3, "failed": 4, "canceled": 4, "aborted": 4}
STATE_RANK = {"submitted": 0, "starting": 1, "processing": 2, "archiving": 3} | dict.fromkeys(
    ("succeeded", "failed", "canceled", "aborted"), 4
)
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
# Firestore writes an event record's transaction makes, by the outcome recorded on it (replicate_relay/jobstore.py):
# the record itself, plus the job document, plus the predictions/{id} mapping when the event created the job.
WRITES_BY_OUTCOME = {"created": 3, "applied": 2}
SUBMIT_WRITES = 3  # jobs/{id} created; then predictions/{id} set and the job updated in one transaction
ANNOUNCE_WRITES = 1  # announced_at; the claim rides on the write that made the job final

# Limits for a run with the defaults (2 files of 16 KiB, 3 s, 3 log lines, no chaos), by rate:
# (label, where the figure is in the results, the limit, how it is shown).
TARGETS: dict[float, list[tuple[str, tuple[str, ...], float, Callable[[Any], str]]]] = {
    1.0: [
        ("end-to-end p50", ("end_to_end_s", "p50"), 0.120, secs),
        ("end-to-end p99", ("end_to_end_s", "p99"), 0.400, secs),
        ("handler Commits failed", ("firestore", "handler_commits_failed"), 0, str),
    ],
    5.0: [
        ("end-to-end p50", ("end_to_end_s", "p50"), 0.400, secs),
        ("end-to-end p99", ("end_to_end_s", "p99"), 1.5, secs),
        ("archive-outputs, a two-file message's p50 (spans)", ("archive_outputs_spans", "message", "p50_ms"), 120, ms),
    ],
}
SETTINGS = ("predictions", "rate", "duration", "files", "file_bytes", "logs", "quick", "soak", "minutes")
SETTINGS += ("duplicate_probability", "reorder_probability")
DEFAULTS = {"prediction_duration_s": 3.0, "files": 2, "file_bytes": 16_384, "logs": 3, "duplicate_probability": 0.0}

# The soak: its mix is fixed by each prediction's index (plan()); growth is judged over the last
# JUDGED_FRACTION of the load, comparing the medians (fds: minima) of its first and last EDGE_FRACTION.
SOAK_PREDICTION_S = 2.0
SOAK_FILE_BYTES = 8_192
QUIET_S = 10  # RELAY_RECONCILE_QUIET_SECONDS: a job silent this long is checked against Replicate
JUDGED_FRACTION = 2 / 3
EDGE_FRACTION = 1 / 6
BOUND_FRACTION = 0.05  # relay's processes are flat when growth stays under 5% or under the absolute bound
BOUND_RSS_BYTES = 10 * MIB
BOUND_FDS = 10
EMULATOR_GROUPS = ("pubsub", "firestore", "storage")
ROLE_NAMES = {"python3": "gcloud", "cloud_firestore": "launcher", "java": "jvm"}  # by /proc comm
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Submitted:
    index: int
    scheduled_s: float  # after the first submit's scheduled time
    started_s: float | None = None
    took_s: float | None = None
    job_id: str | None = None
    prediction_id: str | None = None
    error: str | None = None


@dataclass
class PredictionResult:
    index: int
    prediction_id: str
    job_id: str | None
    state: str | None
    completed_at: float | None  # Replicate's, as a Unix time
    end_to_end_s: float | None  # Replicate's completed_at → the job's final updated_at
    outputs_archived: int
    webhooks: int  # messages the simulator made (unique webhook-ids), dropped ones included
    attempts: int
    acknowledged: int  # unique webhook-ids answered 2xx
    with_record: int
    superseded: int
    lost: list[str] = field(default_factory=list)
    event_outcomes: dict[str, int] = field(default_factory=dict)
    # Replicate's completed_at → the completed webhook accepted by the receiver / handled by each handler.
    stages: dict[str, float | None] = field(default_factory=dict)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 4)


class Tap:
    """A pull subscription made for the run, so every message published on a topic can be counted."""

    def __init__(self, project: str, topic: str) -> None:
        import google.cloud.pubsub_v1 as pubsub_v1  # noqa: PLC0415 - once the emulator's address is set

        self.subscriber = pubsub_v1.SubscriberClient()
        self.path = self.subscriber.subscription_path(project, f"bench-e2e-{topic}-{uuid.uuid4().hex[:8]}")
        self.subscriber.create_subscription(
            request={"name": self.path, "topic": f"projects/{project}/topics/{topic}", "ack_deadline_seconds": 600}
        )
        self.messages: dict[str, dict[str, str]] = {}  # message id → attributes

    def drain(self, deadline: float) -> None:
        """Pull (and acknowledge) until two pulls in a row bring nothing."""
        empty = 0
        while empty < 2 and time.monotonic() < deadline:
            response = self.subscriber.pull(request={"subscription": self.path, "max_messages": PULL_BATCH}, timeout=15)
            received = list(response.received_messages)
            if not received:
                empty += 1
                continue
            empty = 0
            for item in received:
                self.messages[item.message.message_id] = dict(item.message.attributes)
            self.subscriber.acknowledge(request={"subscription": self.path, "ack_ids": [m.ack_id for m in received]})

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.subscriber.delete_subscription(request={"subscription": self.path}, timeout=10)
        self.subscriber.close()


def configure_simulator(stack: LocalStack, args: argparse.Namespace) -> None:
    import httpx  # noqa: PLC0415

    chaos = ("duplicate_probability", "reorder_probability")
    if changes := {key: getattr(args, key) for key in chaos if getattr(args, key)}:
        response = httpx.post(f"{stack.simulator_url}/_sim/config", json=changes, timeout=10)
        if response.status_code != 200:
            raise BenchError(f"the simulator refused {changes}: {response.text[:300]}")
        print(f"simulator chaos: {changes}")


def submit_paced(
    stack: LocalStack, db: Any, records: list[Submitted], args: argparse.Namespace, *, begin: float, deadline: float
) -> None:
    """Submit each record at `begin` + its scheduled time with relay's Submitter (Replicate's own
    client against the simulator) from 32 threads. A failed submit is kept on its record, not raised."""
    from replicate_relay.jobstore import JobStore  # noqa: PLC0415
    from replicate_relay.replicate_api import ModelRef, ReplicateAPI  # noqa: PLC0415
    from replicate_relay.submit import Submitter  # noqa: PLC0415

    submitter = Submitter(
        store=JobStore(db),
        replicate=ReplicateAPI.connect(stack.client_env["REPLICATE_API_TOKEN"], base_url=stack.simulator_url),
        webhook_url=stack.receiver_url + "/",
    )
    model, label = ModelRef.parse(MODEL), args.results.stem
    every = max(int(args.rate * (60 if args.soak else 10)), 1)  # a progress line every 10 s (soak: every minute)
    steady = {
        "input_image": "https://example.com/old-photo.jpg",
        **{f"sim_{key}": getattr(args, key) for key in ("duration", "files", "file_bytes", "logs")},
    }

    def submit(record: Submitted) -> None:
        started = time.monotonic()
        record.started_s = round(started - begin, 4)
        try:
            inputs = plan(record.index).inputs if args.soak else steady
            job = submitter.submit(model, inputs, metadata={"bench": label, "index": str(record.index)})
        except Exception as error:  # a failed submit is counted and reported, not fatal
            record.error = f"{type(error).__name__}: {error}"[:300]
        else:
            record.job_id, record.prediction_id = job.job_id, job.prediction_id
        record.took_s = round(time.monotonic() - started, 4)

    try:
        with ThreadPoolExecutor(max_workers=32, thread_name_prefix="submit") as pool:
            for record in records:
                wait = begin + record.scheduled_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if time.monotonic() > deadline:
                    raise BenchError("the global timeout came while submitting")
                pool.submit(submit, record)
                if record.index and record.index % every == 0:
                    print(f"   submitted {record.index} of {len(records)} …", flush=True)
    finally:
        submitter.replicate.close()


def read_documents(db: Any, collection: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """document id → data of every document of `collection` with one of `ids` that exists, read in batches."""
    refs = [db.collection(collection).document(doc_id) for doc_id in ids]
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(refs), READ_BATCH):
        for snapshot in db.get_all(refs[start : start + READ_BATCH]):
            if snapshot.exists:
                found[snapshot.id] = snapshot.to_dict()
    return found


def wait_for_jobs(db: Any, job_ids: list[str], deadline: float) -> dict[str, dict[str, Any]]:
    """Every job's document once all are final, or as they are at the deadline."""
    reported = -1
    while True:
        jobs = read_documents(db, JOBS, job_ids)
        final = sum(1 for data in jobs.values() if data.get("state") in TERMINAL)
        if final != reported:
            print(f"   {final} of {len(job_ids)} jobs final", flush=True)
            reported = final
        if final == len(job_ids) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.5)


def fetch_deliveries(simulator_url: str, prediction_ids: list[str], deadline: float) -> dict[str, dict[str, Any]]:
    """The simulator's delivery log of every prediction, once its completed webhook is done with."""
    import httpx  # noqa: PLC0415

    logs: dict[str, dict[str, Any]] = {}
    pending = list(prediction_ids)
    with httpx.Client(base_url=simulator_url, timeout=10) as http:
        while pending:
            still: list[str] = []
            for prediction_id in pending:
                response = http.get(f"/_sim/predictions/{prediction_id}/deliveries")
                response.raise_for_status()
                body = response.json()
                logs[prediction_id] = body
                if body["final"] == "pending" or body["in_flight"]:
                    still.append(prediction_id)
            pending = still
            if pending:
                if time.monotonic() > deadline:
                    print(f"   {len(pending)} predictions still had webhooks in flight at the deadline")
                    break
                time.sleep(1.0)
    return logs


def acknowledged_ids(log: Mapping[str, Any]) -> dict[str, str]:
    """webhook-id → prediction status of every message the simulator got a 2xx for."""
    return {
        attempt["webhook_id"]: attempt["prediction_status"]
        for attempt in log["deliveries"]
        if attempt.get("status_code") is not None and 200 <= attempt["status_code"] < 300
    }


def event_path(job_id: str, webhook_id: str) -> str:
    return f"{JOBS}/{job_id}/{EVENTS}/{event_key(webhook_id)}"


def settle_event_records(
    db: Any, mapping: Mapping[str, str], logs: Mapping[str, Mapping[str, Any]], deadline: float
) -> dict[str, dict[str, Any]]:
    """path → every event record, re-read until each acknowledged webhook has its record or SETTLE_S
    passes: a job can be final before job-status has recorded its earlier webhooks (Pub/Sub keeps no order)."""
    expected = {
        event_path(mapping.get(pid, pid), webhook) for pid, log in logs.items() for webhook in acknowledged_ids(log)
    }
    settle_until = min(time.monotonic() + SETTLE_S, deadline)
    while True:
        records = {snapshot.reference.path: snapshot.to_dict() for snapshot in db.collection_group(EVENTS).stream()}
        if expected <= records.keys() or time.monotonic() > settle_until:
            return records
        time.sleep(1.0)


def json_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a file of one object a line (a process's log, the span file)."""
    with contextlib.suppress(FileNotFoundError), path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    yield json.loads(line)


@dataclass
class LogFacts:
    """What the stack's logs say: messages by outcome, and when each webhook-id was accepted or handled."""

    outcomes: dict[str, Counter[str]] = field(default_factory=dict)  # process → outcome → lines
    done_at: dict[str, dict[str, datetime]] = field(default_factory=dict)  # process → webhook-id → first 2xx line
    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # process → (start, end) of each request

    def service(self, process: str) -> dict[str, float | int | None]:
        """Requests, latency and the most requests in flight at once (push concurrency, for the handlers)."""
        spans = self.spans.get(process, [])
        edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
        in_flight = most = 0
        for _, step in edges:
            in_flight += step
            most = max(most, in_flight)
        latencies = [1000 * (end - start) for start, end in spans]
        busy = round(sum(latencies) / 1000, 2)
        return {"requests": len(spans), **summary_ms(latencies), "busy_s": busy, "max_in_flight": most}


def read_logs(log_dir: Path) -> LogFacts:
    """The receiver's one line per webhook and each handler's one line per push delivery."""
    facts = LogFacts()
    for process in ("receiver", "job-status", "archive-outputs"):
        outcomes: Counter[str] = Counter()
        done: dict[str, datetime] = {}
        spans: list[tuple[float, float]] = []
        for entry in json_lines(log_dir / f"{process}.log"):
            outcome = entry.get("outcome")
            if not outcome or (process != "receiver" and entry.get("handler") != process):
                continue
            outcomes[str(outcome)] += 1
            if entry.get("time") and isinstance(entry.get("latency_ms"), int | float):
                end = datetime.fromisoformat(str(entry["time"])).timestamp()
                spans.append((end - entry["latency_ms"] / 1000, end))
            handled = outcome == "accepted" if process == "receiver" else outcome not in ("retry", "permanent_failure")
            webhook_id = entry.get("webhook_id")
            if handled and webhook_id and webhook_id not in done and entry.get("time"):
                done[str(webhook_id)] = datetime.fromisoformat(str(entry["time"]))
        facts.outcomes[process] = outcomes
        facts.done_at[process] = done
        facts.spans[process] = spans
    return facts


def read_spans(span_file: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(service name, span) of every span the stack exported to its span file (OTLP/JSON lines)."""
    for document in json_lines(span_file):
        for resource in document.get("resourceSpans", []):
            attributes = resource.get("resource", {}).get("attributes", [])
            service = next((a["value"].get("stringValue") for a in attributes if a.get("key") == "service.name"), "")
            for scope in resource.get("scopeSpans", []):
                yield from ((service, span) for span in scope.get("spans", []))


def firestore_rpcs(span_file: Path) -> Counter[str]:
    """Firestore RPC method → calls made by the handlers (their gRPC client spans); "METHOD failed"
    counts those that ended in an error (a Commit aborted on contention), except a write refused by its
    own precondition (ALREADY_EXISTS, FAILED_PRECONDITION: how a lost first-write race ends by design)."""
    counter: Counter[str] = Counter()
    for _, span in read_spans(span_file):
        if (name := str(span.get("name", ""))).startswith("/google.firestore."):
            method, status = name.rsplit("/", 1)[-1], span.get("status", {})
            counter[method] += 1
            if status.get("code") == 2:  # OTLP/JSON's STATUS_CODE_ERROR
                refused = any(code in str(status.get("message")) for code in ("ALREADY_EXISTS", "FAILED_PRECONDITION"))
                counter[f"{method} {'refused' if refused else 'failed'}"] += 1
    return counter


def _span_ms(span: Mapping[str, Any]) -> float:
    return (int(span["endTimeUnixNano"]) - int(span["startTimeUnixNano"])) / 1e6


def archive_breakdown(span_file: Path) -> dict[str, Any]:
    """archive-outputs's messages that copied files, from its spans, in ms: the whole message and each
    step under it (each copy, all of a message's copies, Firestore RPCs and transactions, the publish)."""
    spans = [span for service, span in read_spans(span_file) if service == "archive-outputs"]
    children: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        children.setdefault(str(span.get("parentSpanId", "")), []).append(span)
    messages: list[float] = []
    steps: dict[str, list[float]] = {}
    for span in spans:
        under = children.get(str(span["spanId"]), [])
        if not span["name"].startswith("process ") or not any(c["name"] == "archive file" for c in under):
            continue
        messages.append(_span_ms(span))
        copies = [c for c in under if c["name"] == "archive file"]
        whole = {"startTimeUnixNano": min(int(c["startTimeUnixNano"]) for c in copies)}
        whole["endTimeUnixNano"] = max(int(c["endTimeUnixNano"]) for c in copies)
        steps.setdefault("copies, all of the message's", []).append(_span_ms(whole))
        per_message: dict[str, float] = {}
        for child in under:
            name = str(child["name"])
            if name.startswith("/google.firestore."):
                name = "Firestore RPCs outside transactions (lookup, mark announced)"
            per_message[name] = per_message.get(name, 0.0) + _span_ms(child)
            if name == "archive file":
                steps.setdefault("archive file (each)", []).append(_span_ms(child))
        for name, total in per_message.items():
            if name != "archive file":
                steps.setdefault(name, []).append(total)
    return {"message": summary_ms(messages), "steps": {name: summary_ms(v) for name, v in sorted(steps.items())}}


def firestore_writes(
    submitted: int, jobs: Mapping[str, Mapping[str, Any]], records: Mapping[str, list[dict[str, Any]]]
) -> dict[str, int]:
    """Document writes (as Firestore bills them), inferred from what the run left in Firestore (the
    emulator counts none): per job, per event record by its outcome, per archive finished, per
    announcement. A retried transaction counts once: Firestore bills only the commits that succeed."""
    events = sum(len(items) for items in records.values())
    event_effects = sum(
        WRITES_BY_OUTCOME.get(str(r.get("outcome")), 1) - 1 for items in records.values() for r in items
    )
    archives = sum(1 for job in jobs.values() if any(entry.get("gs_uri") for entry in job.get("outputs") or []))
    announced = sum(1 for job in jobs.values() if job.get("announced_at") is not None)
    writes = {
        "submit": submitted * SUBMIT_WRITES,
        "event_records": events,
        "job_updates_by_events": event_effects,
        "archive_finish": archives,
        "announcements": announced * ANNOUNCE_WRITES,
    }
    writes["total"] = sum(writes.values())
    return writes


@dataclass
class ReadBack:
    """What the lost check reads once every job is final: each prediction's webhook deliveries (the
    simulator's), its job, the event records, and the jobs again after the records settled."""

    logs: dict[str, dict[str, Any]]
    mapping: dict[str, str]  # prediction id → job id
    records: dict[str, Any]
    jobs: dict[str, dict[str, Any]]
    by_job_records: dict[str, list[dict[str, Any]]]


def read_back(
    db: Any, simulator_url: str, submitted: list[Submitted], *, deliveries_until: float, records_until: float
) -> ReadBack:
    """Read what `ReadBack` holds for the predictions `submitted` made."""
    prediction_ids = [record.prediction_id for record in submitted if record.prediction_id]
    logs = fetch_deliveries(simulator_url, prediction_ids, deliveries_until)
    mapping = {pid: str(data["job_id"]) for pid, data in read_documents(db, PREDICTIONS, prediction_ids).items()}
    print("   reading back event records …", flush=True)
    records = settle_event_records(db, mapping, logs, records_until)
    # Jobs again: a job may have moved since (the settle wait), and the final read is what counts.
    jobs = read_documents(db, JOBS, set(mapping.values()))
    by_job: dict[str, list[dict[str, Any]]] = {}
    for path, record in records.items():
        by_job.setdefault(path.split("/")[1], []).append(record)
    return ReadBack(logs, mapping, records, jobs, by_job)


def assess(record: Submitted, back: ReadBack, facts: LogFacts) -> PredictionResult:
    """One prediction: its latency, its webhooks, and whether each acknowledged one had its effect."""
    prediction_id = record.prediction_id or ""
    log = back.logs.get(prediction_id)
    job_id = back.mapping.get(prediction_id, record.job_id)
    job = back.jobs.get(job_id or "", {})
    state = job.get("state")
    acknowledged = acknowledged_ids(log) if log else {}
    with_record = superseded = 0
    lost: list[str] = []
    for webhook_id, status in acknowledged.items():
        if event_path(str(job_id), webhook_id) in back.records:
            with_record += 1
        elif STATE_RANK.get(str(state), -1) >= STATUS_RANK.get(status, 99):
            superseded += 1
        else:
            lost.append(webhook_id)
    completed_at = job.get("completed_at")
    final = state in TERMINAL
    deliveries = log["deliveries"] if log else []
    # Where the time goes, for the completed webhook: accepted by the receiver, then handled by each handler.
    completed_ids = [webhook_id for webhook_id, status in acknowledged.items() if status in TERMINAL]
    stages: dict[str, float | None] = {}
    for process, stage in (("receiver", "accepted"), ("job-status", "job_status"), ("archive-outputs", "archived")):
        moments = [facts.done_at[process][w] for w in completed_ids if w in facts.done_at.get(process, {})]
        stages[stage] = seconds_between(completed_at, min(moments)) if moments else None
    return PredictionResult(
        index=record.index,
        prediction_id=prediction_id,
        job_id=job_id,
        state=state,
        completed_at=completed_at.timestamp() if completed_at else None,
        end_to_end_s=seconds_between(completed_at, job.get("updated_at")) if final else None,
        outputs_archived=sum(1 for entry in job.get("outputs") or [] if entry.get("gs_uri")),
        webhooks=len({attempt["webhook_id"] for attempt in deliveries}),
        attempts=sum(1 for attempt in deliveries if not attempt.get("dropped")),
        acknowledged=len(acknowledged),
        with_record=with_record,
        superseded=superseded,
        lost=lost,
        event_outcomes=dict(Counter(str(item.get("outcome")) for item in back.by_job_records.get(job_id or "", []))),
        stages=stages,
    )


def summary_ms(values: list[float]) -> dict[str, float | int | None]:
    found = {f"p{p}_ms": common.percentile(values, p) for p in (50, 90, 99)} | {"max_ms": max(values, default=None)}
    return {"count": len(values), **{key: None if v is None else round(v, 1) for key, v in found.items()}}


@dataclass(frozen=True)
class Plan:
    kind: str  # "files", "failed" or "lost-final"
    expected: str  # the job's final state
    files: int  # output files a succeeded job must have archived
    inputs: dict[str, Any]


def plan(index: int) -> Plan:
    """Prediction `index` of a soak: 1 in 50 loses its final webhook (the reconciler must finish it),
    1 in 10 fails, the rest succeed with one or two files."""
    inputs: dict[str, Any] = {
        "input_image": "https://example.com/old-photo.jpg",
        "sim_duration": SOAK_PREDICTION_S,
        "sim_file_bytes": SOAK_FILE_BYTES,
        "sim_logs": 2,
    }
    if index % 50 == 25:
        return Plan("lost-final", "succeeded", 1, {**inputs, "sim_files": 1, "sim_drop_final": True})
    if index % 10 == 7:
        return Plan("failed", "failed", 0, {**inputs, "sim_outcome": "failed", "sim_error": "CUDA out of memory"})
    return Plan("files", "succeeded", 1 + index % 2, {**inputs, "sim_files": 1 + index % 2})


def growth(points: Sequence[tuple[float, float]], start: float, end: float) -> dict[str, float | None]:
    """How a series moved over [start, end]: the least-squares line's rise over the window ("fitted"),
    the last sixth's median less the first's ("edges"), the last sixth's minimum less the first's
    ("floor"), against the first sixth's median ("first")."""
    window = sorted((t, y) for t, y in points if start <= t <= end)
    if len(window) < 2:
        return {"first": None, "fitted": None, "edges": None, "floor": None}
    edge = (end - start) * EDGE_FRACTION
    first = [y for t, y in window if t <= start + edge] or [window[0][1]]
    last = [y for t, y in window if t >= end - edge] or [window[-1][1]]
    mean_t, mean_y = statistics.fmean(t for t, _ in window), statistics.fmean(y for _, y in window)
    spread = sum((t - mean_t) ** 2 for t, _ in window)
    slope = sum((t - mean_t) * (y - mean_y) for t, y in window) / spread if spread else 0.0
    return {
        "first": statistics.median(first),
        "fitted": slope * (end - start),
        "edges": statistics.median(last) - statistics.median(first),
        "floor": min(last) - min(first),
    }


def flat(grown: Mapping[str, float | None], absolute: float, *keys: str) -> bool | None:
    """Every growth in `keys` under BOUND_FRACTION of the first sixth, or under `absolute`; None: too few samples."""
    if grown["first"] is None:
        return None
    return all((grown[key] or 0.0) < max(BOUND_FRACTION * grown["first"], absolute) for key in keys)


@dataclass
class Series:
    """One process of the stack, sampled over the run: (t, RSS bytes, open fds, CPU seconds) each round."""

    name: str  # group/role: receiver/worker-1, firestore/jvm, ...
    kind: str  # relay, emulator or simulator
    samples: list[tuple[float, int, int, float]] = field(default_factory=list)


def read_proc(pid: int) -> tuple[int, int, int, float, str] | None:
    """(pgid, RSS bytes, open fds, CPU seconds, comm) of one process; None once it is gone."""
    base = Path("/proc") / str(pid)
    try:
        stat, status, fds = (base / "stat").read_text(), (base / "status").read_text(), len(os.listdir(base / "fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
        return None
    after = stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, ..., utime (11), stime (12)
    rss = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    return int(after[2]), rss, fds, (int(after[11]) + int(after[12])) / CLOCK_TICKS, comm


class Sampler:
    """Every process of the stack's process groups, read from /proc every `every` seconds on its own thread."""

    def __init__(self, stack: LocalStack, every: float, origin: float) -> None:
        groups = {**stack.emulators, **stack.functions}
        self.groups = {process.pid: name for name, process in groups.items() if process.pid is not None}
        self.every, self.origin = every, origin
        self.series: dict[int, Series] = {}
        self.machine: list[tuple[float, float | None]] = []  # the whole machine's CPU busy % each round
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = round(time.monotonic() - self.origin, 2)
            for entry in filter(str.isdigit, os.listdir("/proc")):
                read = read_proc(int(entry))
                if read is not None and read[0] in self.groups:
                    series = self.series.get(int(entry)) or self._new(int(entry), read[0], read[4])
                    series.samples.append((t, read[1], read[2], round(read[3], 2)))
            self.machine.append((t, common.busy_cpu_percent(0.2)))
            self._stop.wait(self.every)

    def _new(self, pid: int, pgid: int, comm: str) -> Series:
        group = self.groups[pgid]
        kind = "emulator" if group in EMULATOR_GROUPS else "simulator" if group == "simulator" else "relay"
        # replicate_relay.serve: gunicorn's master leads a relay group, the rest are its workers.
        role = ("master" if pid == pgid else "worker") if kind == "relay" else ROLE_NAMES.get(comm, comm)
        role = group if kind == "simulator" else role
        if same := sum(1 for s in self.series.values() if s.name.rsplit("-", 1)[0] == f"{group}/{role}"):
            role += f"-{same + 1}"
        self.series[pid] = Series(f"{group}/{role}", kind)
        return self.series[pid]


def judge(series: Series, start: float, end: float) -> dict[str, Any]:
    """One process's growth over the window, with the verdict for relay's own."""
    rss = growth([(t, float(rss)) for t, rss, _, _ in series.samples], start, end)
    fds = growth([(t, float(fds)) for t, _, fds, _ in series.samples], start, end)
    cpu = [(t, cpu_s) for t, _, _, cpu_s in series.samples if start <= t <= end]
    verdicts = [flat(rss, BOUND_RSS_BYTES, "fitted", "edges"), flat(fds, BOUND_FDS, "floor")]
    return {
        "name": series.name,
        "kind": series.kind,
        "rss": rss,
        "fds": fds,
        "flat": None if None in verdicts else all(verdicts),
        "rss_mib_max": round(max((s[1] for s in series.samples), default=0) / MIB, 1),
        "cores": round((cpu[-1][1] - cpu[0][1]) / (cpu[-1][0] - cpu[0][0]), 3) if len(cpu) > 1 else None,
    }


def per_minute(points: Sequence[tuple[float, float]], minutes: int) -> list[dict[str, Any]]:
    """(t seconds, latency) → one row per minute of t, every minute shown: count, p50, p99."""
    by_minute: dict[int, list[float]] = {}
    for t, latency in points:
        by_minute.setdefault(max(int(t // 60), 0), []).append(latency)
    return [
        {"minute": m, "count": len(v := by_minute.get(m, [])), "p50": percentile(v, 50), "p99": percentile(v, 99)}
        for m in range(max(minutes, max(by_minute, default=-1) + 1))
    ]


def reconciler_runs(log_path: Path) -> dict[str, int]:
    """The reconciler's runs, from its one summary line each: how many, what they checked and recovered."""
    totals: Counter[str] = Counter()
    for entry in json_lines(log_path):
        if entry.get("handler") == "reconciler" and "checked" in entry:
            totals["runs"] += 1
            totals.update(
                {key: entry[key] for key in ("checked", "recovered", "errors") if isinstance(entry.get(key), int)}
            )
    return dict(totals)


# (flag, type, default, help): defaults of None depend on --soak or --quick, and are set after parsing.
OPTIONS: list[tuple[str, type, float | None, str]] = [
    ("--minutes", float, 30.0, "--soak: minutes of load (default 30)"),
    ("--predictions", int, None, "N predictions (default 200; --quick: 40)"),
    ("--rate", float, None, "predictions submitted per second (default 5; --soak: 2)"),
    ("--duration", float, 3.0, "seconds each prediction runs (default 3)"),
    ("--files", int, 2, "output files per prediction (default 2)"),
    ("--file-bytes", int, 16_384, "bytes per output file (default 16384)"),
    ("--logs", int, 3, "log lines per prediction (default 3)"),
    ("--duplicate-probability", float, None, "simulator chaos (default 0; --soak: 0.05)"),
    ("--reorder-probability", float, None, "simulator chaos (default 0; --soak: 0.1)"),
    ("--reconcile-every", float, 20.0, "--soak: scheduler period (default 20)"),
    ("--sample-every", float, 10.0, "--soak: seconds between /proc samples"),
    ("--drain", float, 180.0, "--soak: at most this long after the load"),
    ("--start-timeout", float, 120.0, "per process at start-up (default 120)"),
    ("--timeout", float, None, "global bound in seconds (default: from the load)"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--soak", action="store_true", help="steady load with chaos and the reconciler, for leaks")
    parser.add_argument("--quick", action="store_true", help="40 predictions: a smoke check of about a minute")
    parser.add_argument("--results", type=Path, help="the results file (default bench/results/e2e.json, soak.json)")
    for flag, kind, default, text in OPTIONS:
        parser.add_argument(flag, type=kind, default=default, help=text)
    args = parser.parse_args(argv)
    soak = args.soak
    args.rate = args.rate or (2.0 if soak else 5.0)
    args.duplicate_probability = args.duplicate_probability if args.duplicate_probability is not None else 0.05 * soak
    args.reorder_probability = args.reorder_probability if args.reorder_probability is not None else 0.1 * soak
    args.results = (args.results or RESULTS_DIR / ("soak.json" if soak else "e2e.json")).resolve()
    if soak:
        args.predictions, args.duration = int(args.minutes * 60 * args.rate), SOAK_PREDICTION_S
    elif args.predictions is None:
        args.predictions = 40 if args.quick else 200
    if not 1 <= args.predictions <= 100_000 or not 0.1 <= args.rate <= 100 or not 0.1 <= args.duration <= 600:
        parser.error("--predictions 1-100000 (--minutes × rate for --soak), --rate 0.1-100/s, --duration 0.1-600 s")
    if not 0 <= args.duplicate_probability <= 1 or not 0 <= args.reorder_probability <= 1:
        parser.error("the chaos probabilities must be between 0 and 1")
    if args.timeout is None:  # start-up, submitting (slack for a busy machine), the last run, settling, reading back
        args.timeout = 3 * args.start_timeout + 1.5 * args.predictions / args.rate + args.duration + SETTLE_S + 120
        args.timeout += args.drain + 480 if soak else 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    processes = Processes()

    def expired(_signum: int, _frame: FrameType | None) -> None:  # a hard bound; the cleanup then runs
        raise BenchError(f"the run did not finish within its global timeout of {args.timeout:g} s (--timeout)")

    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, args.timeout)
    return common.run_guarded(processes, lambda: run(args, processes))


def run(args: argparse.Namespace, processes: Processes) -> int:
    started = time.monotonic()
    deadline = started + args.timeout - 15  # cooperative; the alarm at args.timeout is the backstop
    busy = common.check_busy()
    log_dir = LOG_DIR / args.results.stem
    shutil.rmtree(log_dir, ignore_errors=True)  # the processes append to their logs: start each run clean
    config = StackConfig.on_free_ports(
        reconcile_every=args.reconcile_every if args.soak else 0,  # off: every job must end through its webhooks
        log_dir=log_dir,
        telemetry_dir=log_dir / "telemetry",
        extra_env={"RELAY_LOG_LEVEL": "INFO", "RELAY_RECONCILE_QUIET_SECONDS": str(QUIET_S)},
        start_timeout=args.start_timeout,
    )
    stack = LocalStack(config)
    processes.on_stop(stack.stop)
    print(f"starting the local stack; logs in {log_dir.relative_to(REPO_ROOT)}/ …", flush=True)
    stack.start()
    os.environ.update(stack.client_env)
    configure_simulator(stack, args)

    from google.cloud import firestore  # noqa: PLC0415 - once the emulators' addresses are set

    db = firestore.Client(project=config.project)
    taps = {} if args.soak else {topic: Tap(config.project, topic) for topic in ("replicate-events", "job-events")}
    records = [Submitted(index, round(index / args.rate, 4)) for index in range(args.predictions)]
    begin, wall_begin = time.monotonic() + 0.5, time.time() + 0.5
    sampler = Sampler(stack, args.sample_every, begin) if args.soak else None
    try:
        print(f"submitting {args.predictions} predictions at {args.rate:g}/s", flush=True)
        submit_paced(stack, db, records, args, begin=begin, deadline=deadline)
        ok = [record for record in records if record.prediction_id and record.job_id]
        until = min(time.monotonic() + args.drain, deadline) if args.soak else deadline
        wait_for_jobs(db, [record.job_id for record in ok if record.job_id], until)
        back = read_back(db, stack.simulator_url, ok, deliveries_until=until + 60, records_until=until + 120)
        for tap in taps.values():
            tap.drain(deadline)
    finally:
        for tap in taps.values():
            tap.close()
        if sampler:
            sampler.stop()
    facts = read_logs(log_dir)
    done = Done(args, records, [assess(record, back, facts) for record in ok], back, facts, wall_begin, log_dir)
    document: dict[str, Any] = {
        **common.results_header(busy),
        "settings": {key: getattr(args, key) for key in SETTINGS}
        | {"rate_per_s": args.rate, "prediction_duration_s": args.duration},
        **(summarise_soak(done, sampler) if sampler else summarise(done, taps, stack.trace_file)),
    }
    document["total_s"] = round(time.monotonic() - started, 1)
    processes.stop_all()  # the stack: not needed for the report
    name = args.results.stem
    common.publish(name, args.results, document, render_soak if args.soak else render)
    for problem in document["problems"]:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if document["problems"] else 0


def problems_of(results: list[PredictionResult], records: list[Submitted]) -> list[str]:
    """What makes a run fail: lost webhooks, refused submits, jobs not final."""
    lost = [webhook_id for result in results for webhook_id in result.lost]
    unfinished = [r.prediction_id for r in results if r.state not in TERMINAL]
    refused = [record.error for record in records if record.error]
    found = [f"{len(lost)} acknowledged webhook(s) lost (no event record, job behind): {lost[:5]}"] if lost else []
    found += [f"{len(unfinished)} job(s) not final by the deadline: {unfinished[:5]}"] if unfinished else []
    return found + ([f"{len(refused)} submit(s) refused: {refused[:2]}"] if refused else [])


@dataclass(frozen=True)
class Done:
    """What a finished run holds for its summary."""

    args: argparse.Namespace
    records: list[Submitted]
    results: list[PredictionResult]
    back: ReadBack
    facts: LogFacts
    wall_begin: float  # time.time() of the first submit's scheduled time
    log_dir: Path


def summarise(done: Done, taps: Mapping[str, Tap], trace_file: Path) -> dict[str, Any]:
    """The default run's figures and problems."""
    args, records, results, back, facts = done.args, done.records, done.results, done.back, done.facts
    per = 1 / len(results) if results else 0.0
    attempts = [attempt for log in back.logs.values() for attempt in log["deliveries"] if not attempt.get("dropped")]
    times = sorted(a["at"] for a in attempts if a.get("status_code") is not None and 200 <= a["status_code"] < 300)
    span = (times[-1] - times[0]) if len(times) > 1 else 0.0
    series = Counter(int(at - done.wall_begin) for at in times)
    rpcs = firestore_rpcs(trace_file)
    writes = firestore_writes(sum(1 for s in records if s.job_id), back.jobs, back.by_job_records)
    announcements = Counter(attrs.get("job_id", "") for attrs in taps["job-events"].messages.values())
    push = {handler: sum(facts.outcomes[handler].values()) for handler in ("job-status", "archive-outputs")}
    outcomes: Counter[str] = Counter()
    for result in results:
        outcomes.update(result.event_outcomes)
    problems = problems_of(results, records)
    if twice := [job_id for job_id, count in announcements.items() if count > 1]:
        problems.append(f"{len(twice)} job(s) announced more than once on job-events: {twice[:5]}")
    if short := [r.prediction_id for r in results if r.state == "succeeded" and r.outputs_archived != args.files]:
        problems.append(f"{len(short)} succeeded job(s) without {args.files} archived file(s): {short[:5]}")
    return {
        "submit": {
            "submitted": len(results),
            "achieved_rate_per_s": round((len(records) - 1) / max(s.started_s or 1e-9 for s in records), 2),
        },
        "jobs": {
            "final": sum(1 for r in results if r.state in TERMINAL),
            "states": dict(Counter(map(str, (r.state for r in results)))),
        },
        "webhooks": {
            "attempts": len(attempts),
            "delivered_2xx": len(times),
            "per_prediction": round(len(times) * per, 2),
            "per_second": round(len(times) / span, 1) if span else None,
            "span_s": round(span, 2),
            "series_per_second": [[second, series[second]] for second in range(max(series, default=-1) + 1)],
        },
        "services": {process: facts.service(process) for process in facts.spans},
        "archive_outputs_spans": archive_breakdown(trace_file),
        "end_to_end_s": common.distribution([r.end_to_end_s for r in results if r.end_to_end_s is not None]),
        "stages_s": {
            stage: common.distribution([v for r in results if (v := r.stages.get(stage)) is not None])
            for stage in ("accepted", "job_status", "archived")
        },
        "pubsub": {
            "replicate_events_per_prediction": round(len(taps["replicate-events"].messages) * per, 2),
            "job_events_per_prediction": round(len(taps["job-events"].messages) * per, 2),
            "push_deliveries_per_prediction": round(sum(push.values()) * per, 2),
        },
        "firestore": {
            "writes": writes,
            "writes_per_prediction": round(writes["total"] * per, 2),
            "event_record_outcomes": dict(outcomes),
            "handler_commits_per_prediction": round(rpcs.get("Commit", 0) * per, 2),
            "handler_commits_failed": rpcs.get("Commit failed", 0),
        },
        "lost": {
            "acknowledged_webhook_ids": sum(r.acknowledged for r in results),
            "with_event_record": sum(r.with_record for r in results),
            "superseded_without_record": sum(r.superseded for r in results),
            "lost": sum(len(r.lost) for r in results),
        },
        "predictions": [asdict(r) for r in results],
        "problems": problems,
    }


def targets(document: Mapping[str, Any]) -> tuple[list[list[str]], str]:
    """This run's target rows (limit, measured, verdict), and why it is not a target run, if it is not."""
    settings = document["settings"]
    why = ["`--quick`"] if settings.get("quick") else []
    why += [f"{key} {settings.get(key)}" for key, value in DEFAULTS.items() if settings.get(key) != value]
    why += ["problems reported"] if document["problems"] else []
    rows = []
    for label, keys, limit, show in TARGETS.get(settings["rate_per_s"], []):
        value: Any = document
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        verdict = "not measured" if value is None else "met" if value <= limit else "missed"
        rows.append([label, f"≤ {show(limit)}", "n/a" if value is None else show(value), verdict])
    return rows, ("not a target run: " + ", ".join(why)) if why else ""


def listing(counts: Mapping[str, Any]) -> str:
    """ "a 1, b 2": a mapping as a line of the report."""
    return ", ".join(f"{key} {value}" for key, value in counts.items())


def render(document: Mapping[str, Any]) -> str:
    """The run's section: targets, the figures, how polling every 30 s would compare, two plots."""
    settings, e2e, webhooks, lost = (document[key] for key in ("settings", "end_to_end_s", "webhooks", "lost"))
    stages, pubsub, firestore = document["stages_s"], document["pubsub"], document["firestore"]
    submit, jobs, archive = document["submit"], document["jobs"], document["archive_outputs_spans"]
    name = f"{settings['predictions']} predictions at {settings['rate_per_s']:g}/s"
    rows, why = targets(document)
    p50_p99 = "p50 {}, p99 {}".format
    services = "; ".join(
        f"{process}: {info['requests']} requests, {p50_p99(common.ms(info['p50_ms']), common.ms(info['p99_ms']))}, "
        f"at most {info['max_in_flight']} in flight"
        for process, info in document["services"].items()
    )
    steps = ", ".join(f"{step} {common.ms(v['p50_ms'])}" for step, v in archive["steps"].items())
    figures = {
        "predictions": f"{submit['submitted']} submitted (achieved {submit['achieved_rate_per_s']}/s), "
        f"{jobs['final']} final: {jobs['states']}",
        "webhooks delivered": f"{webhooks['delivered_2xx']:,} answered 2xx of {webhooks['attempts']:,} attempts; "
        f"{webhooks['per_prediction']} per prediction; **{webhooks['per_second']}/s** over {webhooks['span_s']} s",
        "end-to-end latency": f"p50 **{secs(e2e['p50'])}**, p90 {secs(e2e['p90'])}, p99 **{secs(e2e['p99'])}**, "
        f"max {secs(e2e['max'])}, mean {secs(e2e['mean'])}",
        "  completed webhook accepted": p50_p99(secs(stages["accepted"]["p50"]), secs(stages["accepted"]["p99"]))
        + " after completed_at",
        "  outputs archived": p50_p99(secs(stages["archived"]["p50"]), secs(stages["archived"]["p99"]))
        + " after completed_at",
        "Pub/Sub messages per prediction": f"{pubsub['replicate_events_per_prediction']} on replicate-events, "
        f"{pubsub['job_events_per_prediction']} on job-events; "
        f"{pubsub['push_deliveries_per_prediction']} push deliveries",
        "Firestore writes per prediction": f"{firestore['writes_per_prediction']} "
        f"({listing(firestore['writes'])}); "
        f"handler Commit RPCs {firestore['handler_commits_per_prediction']}, "
        f"{firestore['handler_commits_failed']} failed",
        "event record outcomes": listing(firestore["event_record_outcomes"]),
        "**lost**": f"**{lost['lost']}** of {lost['acknowledged_webhook_ids']:,} acknowledged webhook ids "
        f"({lost['with_event_record']:,} with their event record, {lost['superseded_without_record']} superseded)",
        "handlers (their logs)": services,
        "archive-outputs messages that copied files (spans)": f"{archive['message']['count']}, p50 "
        f"**{common.ms(archive['message']['p50_ms'])}**, p99 {common.ms(archive['message']['p99_ms'])}; "
        f"steps p50: {steps}",
    }
    count, duration = submit["submitted"], settings["prediction_duration_s"]
    polling = [
        ["mean delay after completion", secs(e2e["mean"]), f"{POLL_EVERY_S / 2:g} s"],
        ["p99 delay", secs(e2e["p99"]), f"{POLL_EVERY_S * 0.99:g} s"],
        [
            f"Replicate API reads for {count} jobs of {duration:g} s",
            "0",
            f"N·D/30 = {count * duration / POLL_EVERY_S:g}; "
            f"at least one per job: {count * max(math.ceil(duration / POLL_EVERY_S), 1)}",
        ],
    ]
    return "\n\n".join(
        [
            common.provenance(document) + (f" {why.capitalize()}." if why else ""),
            common.markdown_table(["target", "limit", "measured", "verdict"], rows)
            if rows
            else f"No targets at {name}.",
            common.markdown_table(["figure", name], list(figures.items())),
            common.markdown_table(["", "webhooks (this run)", f"polling every {POLL_EVERY_S:g} s"], polling),
            plot(document),
        ]
    )


def plot(document: Mapping[str, Any]) -> str:
    """The latency CDF (with polling's beside it) and the webhooks delivered per second."""
    stem = "e2e" if document["settings"]["rate_per_s"] == 5.0 else f"e2e-{document['settings']['rate_per_s']:g}ps"
    fig, axes = common.figure(2)
    left, right = axes[0]
    for key, label in (
        ("end_to_end_s", "job final"),
        ("accepted", "completed webhook accepted"),
        ("archived", "archived"),
    ):
        values = sorted(
            v
            for p in document["predictions"]
            if (v := p[key] if key == "end_to_end_s" else p["stages"].get(key)) is not None
        )
        left.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post", label=label)
    left.plot([0.01, POLL_EVERY_S, 60], [0.01 / POLL_EVERY_S, 1, 1], "--", label="polling every 30 s")
    left.set(xscale="log", xlabel="seconds after Replicate's completed_at", ylabel="share of predictions")
    left.legend(fontsize=7)
    series = document["webhooks"]["series_per_second"]
    right.bar([t for t, _ in series], [n for _, n in series], width=1.0, align="edge")
    right.set(xlabel="seconds since the first submit", ylabel="webhooks answered 2xx per second")
    return common.save(fig, stem)


def summarise_soak(done: Done, sampler: Sampler) -> dict[str, Any]:
    """The soak's figures and problems: growth per process, latency per minute, jobs as steered."""
    args, results, facts = done.args, done.results, done.facts
    start, end = args.minutes * 60 * (1 - JUDGED_FRACTION), args.minutes * 60
    kinds = ["relay", "simulator", "emulator"]
    processes = sorted(
        (judge(s, start, end) for s in sampler.series.values()), key=lambda p: (kinds.index(p["kind"]), p["name"])
    )
    relay = [p for p in processes if p["kind"] == "relay"]
    wrong, by_kind = [], {}
    for result in results:
        steered = plan(result.index)
        by_kind.setdefault(steered.kind, Counter())[str(result.state)] += 1
        if result.state != steered.expected or (
            steered.expected == "succeeded" and result.outputs_archived != steered.files
        ):
            wrong.append(f"{result.index} ({steered.kind}): {result.state}, {result.outputs_archived} file(s)")
    points = {
        reconciled: [
            (r.completed_at - done.wall_begin, r.end_to_end_s)
            for r in results
            if r.end_to_end_s is not None and r.completed_at and (plan(r.index).kind == "lost-final") == reconciled
        ]
        for reconciled in (False, True)
    }
    minutes = math.ceil(args.minutes)
    busy = [value for _, value in sampler.machine if value is not None]
    problems = problems_of(results, [])
    problems += [f"{len(wrong)} job(s) not final as steered: {wrong[:5]}"] if wrong else []
    problems += ["no process of relay's was sampled"] if not relay else []
    services = {
        process: {**facts.service(process), "outcomes": dict(facts.outcomes.get(process, {}))}
        for process in ("receiver", "job-status", "archive-outputs")
    }
    return {
        "judged_window_s": [round(start, 1), end],
        "flat": {"relay_processes": len(relay), "met": all(p["flat"] is not False for p in relay) if relay else None},
        "jobs": {
            "submitted": len(results),
            "final": sum(1 for r in results if r.state in TERMINAL),
            "states_by_kind": {kind: dict(counter) for kind, counter in sorted(by_kind.items())},
            "not_as_steered": len(wrong),
            "acknowledged_webhook_ids": sum(r.acknowledged for r in results),
            "lost": sum(len(r.lost) for r in results),
        },
        "end_to_end_s": common.distribution([latency for _, latency in points[False]]),
        "reconciled_end_to_end_s": common.distribution([latency for _, latency in points[True]]),
        "latency_per_minute": per_minute(points[False], minutes),
        "reconciled_per_minute": per_minute(points[True], minutes),
        "reconciler": reconciler_runs(done.log_dir / "reconciler.log"),
        "services": services,
        "machine_busy_percent": {
            "mean": round(statistics.fmean(busy), 1) if busy else None,
            "max": max(busy, default=None),
        },
        "processes": processes,
        "samples": {s.name: {"kind": s.kind, "t_rss_fds_cpu": s.samples} for s in sampler.series.values()},
        "problems": problems,
    }


def render_soak(document: Mapping[str, Any]) -> str:
    """The soak's section: jobs and losses, growth per process, the services, latency per minute, three plots."""
    jobs, e2e, rec = document["jobs"], document["end_to_end_s"], document["reconciled_end_to_end_s"]
    busy, settings, flat = document["machine_busy_percent"], document["settings"], document["flat"]
    by_kind = "; ".join(f"{kind}: {states}" for kind, states in jobs["states_by_kind"].items())
    figures = {
        "predictions": f"{jobs['submitted']:,} submitted over {settings['minutes']:g} min, {jobs['final']:,} final; "
        f"by kind {by_kind}",
        "not as steered": f"**{jobs['not_as_steered']}**",
        "**lost**": f"**{jobs['lost']}** of {jobs['acknowledged_webhook_ids']:,} acknowledged webhook ids",
        "relay's processes flat": f"**{'met' if flat['met'] else 'missed'}** ({flat['relay_processes']} processes)",
        "webhook-ended jobs": f"p50 {secs(e2e['p50'])}, p99 {secs(e2e['p99'])}, max {secs(e2e['max'])}",
        "reconciled jobs (final webhook dropped)": f"{rec['count']}, p50 {secs(rec['p50'])}, max {secs(rec['max'])}",
        "reconciler": listing(document["reconciler"]),
        "machine CPU busy during the run": f"mean {busy['mean']}%, max {busy['max']}%",
    }
    verdicts = {True: "flat", False: "**grows**", None: "n/a"}
    grown = [
        [
            p["name"],
            p["kind"],
            f"{p['rss_mib_max']:.1f}",
            *(f"{(p['rss'][key] or 0) / MIB:+.1f}" for key in ("fitted", "edges")),
            f"{p['fds']['first'] or 0:g}",
            f"{p['fds']['floor'] or 0:+g}",
            "n/a" if p["cores"] is None else f"{p['cores']:.2f}",
            verdicts[p["flat"]] + ("" if p["kind"] == "relay" else " (apart)"),
        ]
        for p in document["processes"]
    ]
    services = [
        [
            name,
            f"{s['requests']:,}",
            *(common.ms(s[key]) for key in ("p50_ms", "p99_ms", "max_ms")),
            listing(s["outcomes"]),
        ]
        for name, s in document["services"].items()
    ]
    reconciled = {row["minute"]: row for row in document["reconciled_per_minute"]}
    minutes = []
    for row in document["latency_per_minute"]:
        late = reconciled.get(row["minute"], {})
        minutes.append([str(row["minute"]), str(row["count"]), secs(row["p50"]), secs(row["p99"])])
        minutes[-1] += [str(late.get("count", 0)), secs(late.get("p99"))]
    start, end = document["judged_window_s"]
    growth_headers = ["process", "kind", "RSS MiB max", "fit MiB", "last−first MiB", "fds", "fds floor", "cores"]
    return "\n\n".join(
        [
            common.provenance(document),
            common.markdown_table(["figure", "value"], list(figures.items())),
            f"Growth per process over {start / 60:g}–{end / 60:g} min:",
            common.markdown_table([*growth_headers, "verdict"], grown),
            common.markdown_table(["process", "requests", "p50", "p99", "slowest", "outcomes"], services),
            common.markdown_table(["minute", "jobs", "p50", "p99", "reconciled", "reconciled p99"], minutes),
            plot_soak(document),
        ]
    )


def plot_soak(document: Mapping[str, Any]) -> str:
    """RSS and open fds over time per process (relay's, then the rest), and the latency per minute."""
    start, end = document["judged_window_s"]
    lines = []
    for index, (name, label, scale) in enumerate((("soak-rss", "RSS (MiB)", MIB), ("soak-fds", "open fds", 1))):
        fig, axes = common.figure(2)
        for panel, kinds in zip(axes[0], (("relay",), ("simulator", "emulator")), strict=True):
            for process, series in document["samples"].items():
                if series["kind"] in kinds:
                    points = series["t_rss_fds_cpu"]
                    panel.plot([p[0] / 60 for p in points], [p[1 + index] / scale for p in points], label=process, lw=1)
            panel.axvspan(start / 60, end / 60, color="#e9ecef", zorder=0)
            panel.set(xlabel="minutes since the first submit", ylabel=label)
            panel.legend(fontsize=6, ncol=2)
        lines.append(common.save(fig, name))
    fig, axes = common.figure()
    rows = document["latency_per_minute"]
    for key in ("p50", "p99"):
        axes.plot([r["minute"] for r in rows], [r[key] for r in rows], marker="o", label=key)
    axes.set(yscale="log", xlabel="minute (Replicate's completed_at)", ylabel="seconds to the job final")
    axes.legend()
    lines.append(common.save(fig, "soak-latency"))
    return "\n\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
