"""End-to-end benchmark: N predictions at R a second through the whole local stack, every webhook accounted for.

Starts the local stack on free ports (the Pub/Sub and Firestore emulators, fake-gcs-server, the
Replicate simulator, the receiver, both handlers and the reconciler, which is never called: the run
measures webhooks alone), adds a pull subscription to `replicate-events` and one to `job-events` to
count what is published, then submits N predictions with relay's Submitter (Replicate's own client,
pointed at the simulator) at a steady R a second. Each prediction runs for a set time, writes log
lines and small output files, and sends the default webhook events (start, output, logs, completed).

Once every job is final, it reads back what happened and reports:

- webhooks delivered (2xx) and per second, from the simulator's delivery records;
- end-to-end latency: Replicate's `completed_at` → the job's final `updated_at` in Firestore;
- Pub/Sub messages per prediction (published on replicate-events and job-events, counted by the
  pull subscriptions; push deliveries, counted from the handlers' one log line per message);
- Firestore document writes per prediction, derived from what the run left in Firestore (method in
  `firestore_writes()`), with the handlers' Commit RPCs from their span file as a cross-check;
- lost: every webhook the simulator got a 2xx for must have its record
  `jobs/{job}/events/{sha256(webhook_id)[:40]}`, written in the same transaction as its effect on the
  job (or, without a record, a job at least as far as that webhook's status): anything else is lost;
- the old polling design beside it (every 30 s: 15 s mean delay, p99 29.7 s, N·D/30 API calls).

Results go to stdout and bench/results/e2e.json (with per-prediction latencies for the plots;
`--results` names another file, so that `make bench` keeps its 1/s run beside the 5/s one), the
stack's logs and span file to bench/results/logs/<the results file's name>/ (logs/e2e/ by default).
Bounded by a global timeout; everything it starts is stopped on the way out, including on Ctrl-C and
SIGTERM. Exits 1 if a webhook was lost, a job did not end, or it could not measure.

    .venv/bin/python bench/e2e.py [--predictions 200] [--rate 5] [--quick] [--timeout S] [--results PATH]
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
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, so sys.path[0] is bench/ (for `common`); the project's packages live one level up.
sys.path.insert(0, str(REPO_ROOT))

import common  # noqa: E402
from common import LOG_DIR, RESULTS_DIR, BenchError, Processes  # noqa: E402

from replicate_relay.devstack.stack import LocalStack, StackConfig  # noqa: E402
from replicate_relay.jobstore import EVENTS, JOBS, PREDICTIONS, event_key  # noqa: E402

RESULTS_JSON = RESULTS_DIR / "e2e.json"

MODEL = "flux-kontext-apps/restore-image"
POLL_EVERY_S = 30.0  # the old design: GET every job's prediction every 30 s
SUBMIT_WORKERS = 32  # threads submitting: R × a submit's time must fit, or the rate falls behind schedule
READ_BATCH = 100  # documents per Firestore get_all
SETTLE_S = 60.0  # at most this long, after every job is final, for the last event records
PULL_BATCH = 1000

# How far a webhook's status takes a job, and how far each job state is (replicate_relay/jobs.py's order):
# a webhook without its record is only "superseded" when the job is at least that far.
STATUS_RANK = {"starting": 1, "processing": 2, "succeeded": 3, "failed": 4, "canceled": 4, "aborted": 4}
STATE_RANK = {
    "submitted": 0,
    "starting": 1,
    "processing": 2,
    "archiving": 3,
    "succeeded": 4,
    "failed": 4,
    "canceled": 4,
    "aborted": 4,
}
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
# Firestore writes an event record's transaction makes, by the outcome recorded on it (replicate_relay/jobstore.py):
# the record itself, plus the job document, plus the predictions/{id} mapping when the event created the job.
WRITES_BY_OUTCOME = {"created": 3, "applied": 2}
SUBMIT_WRITES = 3  # jobs/{id} created; then predictions/{id} set and the job updated in one transaction
# The announcement marked sent; its claim rides on the write that made the job final (replicate_relay/jobstore.py
# _transact). A redelivery or the reconciler claiming it again after a failed publish adds one, not counted.
ANNOUNCE_WRITES = 1


# Processes -----------------------------------------------------------------------------------------


class StackProcesses(Processes):
    """Processes, plus the local stack: `stop_all()` also stops every process group the stack started."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: LocalStack | None = None

    def stop_all(self) -> None:
        try:
            super().stop_all()
        finally:
            stack, self.stack = self.stack, None
            if stack is not None:
                try:
                    stack.stop()
                except Exception as error:  # reported; the exit goes on
                    print(f"warning: stopping the local stack: {error}", file=sys.stderr)


@contextlib.contextmanager
def global_timeout(seconds: float) -> Iterator[None]:
    """A hard bound on the whole run: SIGALRM raises BenchError wherever the run is (cleanup then runs)."""

    def expired(_signum: int, _frame: FrameType | None) -> None:
        raise BenchError(f"the run did not finish within its global timeout of {seconds:g} s (--timeout)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# Records -------------------------------------------------------------------------------------------


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
    replicate_status: str | None
    duration_s: float | None  # Replicate's created_at → completed_at
    end_to_end_s: float | None  # Replicate's completed_at → the job's final updated_at
    announce_s: float | None  # Replicate's completed_at → the job-events announcement recorded
    outputs_archived: int
    webhooks: int  # messages the simulator made (unique webhook-ids), dropped ones included
    attempts: int
    acknowledged: int  # unique webhook-ids answered 2xx
    with_record: int
    superseded: int
    lost: list[str] = field(default_factory=list)
    event_outcomes: dict[str, int] = field(default_factory=dict)
    final: str = ""  # how the simulator's completed webhook ended
    # Replicate's completed_at → the completed webhook accepted by the receiver / handled by each handler.
    stages: dict[str, float | None] = field(default_factory=dict)


# Helpers ---------------------------------------------------------------------------------------------


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 4)


def percentile(values: Iterable[float], p: float) -> float | None:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1]


def distribution(values: list[float]) -> dict[str, float | int | None]:
    return {
        "count": len(values),
        "mean": round(statistics.fmean(values), 4) if values else None,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def fmt_s(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


# The run ---------------------------------------------------------------------------------------------


def stack_log_dir(results: Path) -> Path:
    """bench/results/logs/<the results file's name>/: runs that keep their results apart keep their logs apart."""
    return LOG_DIR / results.stem


def shown(path: Path) -> Path:
    """The path from the repository's root, for messages (a --results file may lie outside it)."""
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def stack_config(args: argparse.Namespace, log_dir: Path) -> StackConfig:
    if log_dir.exists():
        shutil.rmtree(log_dir)  # the processes append to their logs: start each run clean
    return StackConfig.on_free_ports(
        reconcile_every=0,  # no reconciler runs: every job must end through its webhooks alone
        log_dir=log_dir,
        telemetry_dir=log_dir / "telemetry",
        extra_env={"RELAY_LOG_LEVEL": "INFO"},  # one line per webhook and per message: counted below
        start_timeout=args.start_timeout,
    )


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

    changes: dict[str, Any] = {}
    if args.duplicate_probability:
        changes["duplicate_probability"] = args.duplicate_probability
    if args.reorder_probability:
        changes["reorder_probability"] = args.reorder_probability
    if changes:
        response = httpx.post(f"{stack.simulator_url}/_sim/config", json=changes, timeout=10)
        if response.status_code != 200:
            raise BenchError(f"the simulator refused {changes}: {response.text[:300]}")
        print(f"simulator chaos: {changes}")


def submit_all(stack: LocalStack, db: Any, args: argparse.Namespace, deadline: float) -> tuple[list[Submitted], float]:
    """Submit N predictions, the i-th at i/R seconds after the first; returns them and the wall time at the first."""
    inputs = {
        "input_image": "https://example.com/old-photo.jpg",
        "output_format": "png",
        "sim_duration": args.duration,
        "sim_files": args.files,
        "sim_file_bytes": args.file_bytes,
        "sim_logs": args.logs,
    }
    records = [Submitted(index, round(index / args.rate, 4)) for index in range(args.predictions)]
    begin = time.monotonic() + 0.2
    wall_begin = time.time() + 0.2
    every = max(int(args.rate * 10), 1)
    submit_paced(
        stack,
        db,
        records,
        begin=begin,
        deadline=deadline,
        inputs=lambda index: inputs,
        label="e2e",
        workers=SUBMIT_WORKERS,
        progress=lambda index: f"submitted {index} of {args.predictions}" if index % every == 0 else None,
    )  # events_filter: the default, every event (start, output, logs, completed)
    return records, wall_begin


def submit_paced(
    stack: LocalStack,
    db: Any,
    records: list[Submitted],
    *,
    begin: float,
    deadline: float,
    inputs: Callable[[int], dict[str, Any]],
    label: str,
    workers: int,
    progress: Callable[[int], str | None],
) -> None:
    """Submit each record at `begin` + its scheduled time with relay's Submitter (Replicate's own
    client against the simulator) from `workers` threads, with `inputs(index)`. A failed submit is
    kept on its record, not raised; `progress(index)` is a line to print, or None."""
    from replicate_relay.jobstore import JobStore  # noqa: PLC0415
    from replicate_relay.replicate_api import ModelRef, ReplicateAPI  # noqa: PLC0415
    from replicate_relay.submit import Submitter  # noqa: PLC0415

    submitter = Submitter(
        store=JobStore(db),
        replicate=ReplicateAPI.connect(stack.client_env["REPLICATE_API_TOKEN"], base_url=stack.simulator_url),
        webhook_url=stack.receiver_url + "/",
    )
    model = ModelRef.parse(MODEL)

    def submit(record: Submitted) -> None:
        started = time.monotonic()
        record.started_s = round(started - begin, 4)
        try:
            job = submitter.submit(model, inputs(record.index), metadata={"bench": label, "index": str(record.index)})
        except Exception as error:  # a failed submit is counted and reported, not fatal
            record.error = f"{type(error).__name__}: {error}"[:300]
        else:
            record.job_id, record.prediction_id = job.job_id, job.prediction_id
        record.took_s = round(time.monotonic() - started, 4)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="submit") as pool:
            for record in records:
                wait = begin + record.scheduled_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if time.monotonic() > deadline:
                    raise BenchError("the global timeout came while submitting")
                pool.submit(submit, record)
                if record.index and (line := progress(record.index)):
                    print(f"   {line} …", flush=True)
    finally:
        submitter.replicate.close()


def read_documents(db: Any, refs: list[Any]) -> dict[str, dict[str, Any]]:
    """path → data of every ref that exists, read in batches."""
    found: dict[str, dict[str, Any]] = {}
    for batch in chunks(refs, READ_BATCH):
        for snapshot in db.get_all(batch):
            if snapshot.exists:
                found[snapshot.reference.path] = snapshot.to_dict()
    return found


def wait_for_jobs(db: Any, job_ids: list[str], deadline: float) -> dict[str, dict[str, Any]]:
    """Every job's document once all are final, or as they are at the deadline."""
    refs = [db.collection(JOBS).document(job_id) for job_id in job_ids]
    reported = -1
    while True:
        documents = read_documents(db, refs)
        jobs = {path.split("/")[-1]: data for path, data in documents.items()}
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


def read_event_records(db: Any, mapping: Mapping[str, str], logs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """path → event record, for every acknowledged webhook-id (looked up by its key)."""
    refs = []
    for prediction_id, log in logs.items():
        job_id = mapping.get(prediction_id, prediction_id)
        events = db.collection(JOBS).document(job_id).collection(EVENTS)
        refs += [events.document(event_key(webhook_id)) for webhook_id in acknowledged_ids(log)]
    return read_documents(db, refs)


def settle_event_records(
    db: Any, mapping: Mapping[str, str], logs: Mapping[str, Mapping[str, Any]], deadline: float
) -> dict[str, Any]:
    """The event records, re-read until every acknowledged webhook has one or SETTLE_S (or the deadline) passes.

    A job can be final (the archive handler finished it) before job-status has recorded the
    prediction's earlier webhooks: Pub/Sub delivers in no set order.
    """
    expected = sum(len(acknowledged_ids(log)) for log in logs.values())
    settle_until = min(time.monotonic() + SETTLE_S, deadline)
    while True:
        records = read_event_records(db, mapping, logs)
        if len(records) >= expected or time.monotonic() > settle_until:
            return records
        time.sleep(1.0)


def all_event_records(db: Any) -> dict[str, list[dict[str, Any]]]:
    """job id → every event record under it (the run's emulator holds only this run's jobs)."""
    by_job: dict[str, list[dict[str, Any]]] = {}
    for snapshot in db.collection_group(EVENTS).stream():
        job_ref = snapshot.reference.parent.parent
        if job_ref is not None:
            by_job.setdefault(job_ref.id, []).append(snapshot.to_dict())
    return by_job


def log_entries(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON lines of one process's log (each process logs one object a line)."""
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
        latencies = [end - start for start, end in spans]
        return {
            "requests": len(spans),
            "p50_ms": round(p * 1000, 1) if (p := percentile(latencies, 50)) is not None else None,
            "p99_ms": round(p * 1000, 1) if (p := percentile(latencies, 99)) is not None else None,
            "busy_s": round(sum(latencies), 2),
            "max_in_flight": most,
        }


def read_logs(log_dir: Path) -> LogFacts:
    """The receiver's one line per webhook and each handler's one line per push delivery."""
    facts = LogFacts()
    for process in ("receiver", "job-status", "archive-outputs"):
        outcomes: Counter[str] = Counter()
        done: dict[str, datetime] = {}
        spans: list[tuple[float, float]] = []
        for entry in log_entries(log_dir / f"{process}.log"):
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


_STATUS_ERROR = 2  # OTLP/JSON's status code for STATUS_CODE_ERROR
_REFUSED = ("StatusCode.ALREADY_EXISTS", "StatusCode.FAILED_PRECONDITION")


def firestore_rpcs(span_file: Path) -> Counter[str]:
    """Firestore RPC method → calls made by the handlers, from their span file (gRPC client spans);
    "METHOD failed" counts those that ended in an error (a Commit aborted on contention, say), except
    a write refused by its own precondition ("METHOD refused": ALREADY_EXISTS, FAILED_PRECONDITION),
    which is how a lost first-write race or a stale conditional write ends by design (replicate_relay/jobstore.py)."""
    counter: Counter[str] = Counter()
    with contextlib.suppress(FileNotFoundError), span_file.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if "google.firestore" not in line:
                continue
            with contextlib.suppress(json.JSONDecodeError):
                for resource in json.loads(line).get("resourceSpans", []):
                    for scope in resource.get("scopeSpans", []):
                        for span in scope.get("spans", []):
                            name = str(span.get("name", ""))
                            if name.startswith("/google.firestore."):
                                method = name.rsplit("/", 1)[-1]
                                counter[method] += 1
                                status = span.get("status", {})
                                if status.get("code") == _STATUS_ERROR:
                                    message = str(status.get("message", ""))
                                    refused = any(code in message for code in _REFUSED)
                                    counter[f"{method} {'refused' if refused else 'failed'}"] += 1
    return counter


def read_spans(span_file: Path, service: str) -> list[dict[str, Any]]:
    """Every span one service exported to the span file (OTLP/JSON lines)."""
    found: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError), span_file.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if f'"{service}"' not in line:
                continue
            with contextlib.suppress(json.JSONDecodeError):
                for resource in json.loads(line).get("resourceSpans", []):
                    attributes = resource.get("resource", {}).get("attributes", [])
                    names = [a["value"].get("stringValue") for a in attributes if a.get("key") == "service.name"]
                    if names == [service]:
                        found += [span for scope in resource.get("scopeSpans", []) for span in scope.get("spans", [])]
    return found


def _span_ms(span: Mapping[str, Any]) -> float:
    return (int(span["endTimeUnixNano"]) - int(span["startTimeUnixNano"])) / 1e6


def _summary_ms(values: list[float]) -> dict[str, float | int | None]:
    return {
        "count": len(values),
        "p50_ms": round(p, 1) if (p := percentile(values, 50)) is not None else None,
        "p90_ms": round(p, 1) if (p := percentile(values, 90)) is not None else None,
        "p99_ms": round(p, 1) if (p := percentile(values, 99)) is not None else None,
    }


def archive_breakdown(span_file: Path) -> dict[str, Any]:
    """archive-outputs's messages that copied files, from its spans: the whole message (its consumer
    span) and each step under it, in milliseconds. Steps: the copies ("archive file", each, and all of
    a message's from the first start to the last end), the job lookup and the records outside a
    transaction (Firestore RPCs straight under the message), each Firestore transaction by name, the
    job-events publish."""
    spans = read_spans(span_file, "archive-outputs")
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
        first = min(int(c["startTimeUnixNano"]) for c in copies)
        steps.setdefault("copies, all of the message's", []).append(
            (max(int(c["endTimeUnixNano"]) for c in copies) - first) / 1e6
        )
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
    return {
        "message": _summary_ms(messages),
        "steps": {name: _summary_ms(values) for name, values in sorted(steps.items())},
        "method": "archive-outputs's consumer spans with at least one 'archive file' span under them; a step's "
        "figure sums its spans within one message",
    }


def firestore_writes(
    submitted: int, jobs: Mapping[str, Mapping[str, Any]], records: Mapping[str, list[dict[str, Any]]]
) -> dict[str, int]:
    """Document writes (as Firestore bills them) the run made, derived from what it left in Firestore.

    The emulator keeps no write counter, so each write is inferred from the code path that leaves a
    trace: SUBMIT_WRITES per job submitted; per event record, the record plus the job and mapping
    documents its transaction wrote (WRITES_BY_OUTCOME; coalesced, stale, absorbed, deferred: the record alone;
    a duplicate webhook-id writes nothing and leaves nothing); one job write per archive finished
    (outputs with a gs:// URI); ANNOUNCE_WRITES per job announced on job-events. Transactions retried
    on contention count once, as Firestore bills only commits that succeed.
    """
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


# Main -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--predictions", type=int, help="N predictions (default 200; --quick: 40 unless given)")
    parser.add_argument("--rate", type=float, default=5.0, help="R: predictions submitted per second (default 5)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds each prediction runs (default 3)")
    parser.add_argument("--files", type=int, default=2, help="output files per prediction (default 2)")
    parser.add_argument("--file-bytes", type=int, default=16_384, help="bytes per output file (default 16384)")
    parser.add_argument("--logs", type=int, default=3, help="log lines per prediction (default 3)")
    parser.add_argument("--duplicate-probability", type=float, default=0.0, help="simulator chaos (default 0)")
    parser.add_argument("--reorder-probability", type=float, default=0.0, help="simulator chaos (default 0)")
    parser.add_argument("--quick", action="store_true", help="40 predictions: a smoke check of about a minute")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="per process at start-up (default 120)")
    parser.add_argument("--timeout", type=float, help="global bound in seconds (default: from N, R and the duration)")
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_JSON,
        help="the results file (default bench/results/e2e.json); the stack's logs go to bench/results/logs/<its name>/",
    )
    args = parser.parse_args(argv)
    args.results = args.results.resolve()
    if args.predictions is None:
        args.predictions = 40 if args.quick else 200
    if not 1 <= args.predictions <= 5000:
        parser.error("--predictions must be between 1 and 5000")
    if not 0.1 <= args.rate <= 100:
        parser.error("--rate must be between 0.1 and 100 a second")
    if not 0.1 <= args.duration <= 600:
        parser.error("--duration must be between 0.1 and 600 seconds")
    if not 0 <= args.files <= 100 or not 1 <= args.file_bytes <= 50_000_000 or not 0 <= args.logs <= 1000:
        parser.error("--files must be 0-100, --file-bytes 1-50000000, --logs 0-1000")
    for name in ("duplicate_probability", "reorder_probability"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    if args.timeout is None:
        # Start-up, submitting (slack for a busy machine), the last run, settling, reading back.
        args.timeout = 3 * args.start_timeout + 1.5 * args.predictions / args.rate + args.duration + SETTLE_S + 120
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    processes = StackProcesses()

    def body() -> int:
        with global_timeout(args.timeout):
            return run(args, processes)

    return common.run_guarded(processes, body)


def run(args: argparse.Namespace, processes: StackProcesses) -> int:
    started = time.monotonic()
    deadline = started + args.timeout - 15  # cooperative; the alarm at args.timeout is the backstop
    print(
        f"settings: {args.predictions} predictions at {args.rate:g}/s, each {args.duration:g} s with {args.files} "
        f"file(s) of {args.file_bytes:,} bytes and {args.logs} log lines; webhook events start, output, logs, "
        f"completed; reconciler off; global timeout {args.timeout:.0f} s; {os.cpu_count()} CPUs; loopback only"
    )
    busy = common.check_busy()
    code = common.code_version()  # as the stack starts: its processes load the code now
    log_dir = stack_log_dir(args.results)

    config = stack_config(args, log_dir)
    stack = LocalStack(config)
    processes.stack = stack
    print("starting the local stack (emulators, simulator, receiver, handlers) …", flush=True)
    stack.start()
    stack_ready = time.monotonic()
    os.environ.update(stack.client_env)
    print(f"stack ready after {stack_ready - started:.0f} s; logs in {shown(log_dir)}/")
    configure_simulator(stack, args)

    from google.cloud import firestore  # noqa: PLC0415 - once the emulators' addresses are set

    db = firestore.Client(project=config.project)
    taps = {topic: Tap(config.project, topic) for topic in ("replicate-events", "job-events")}
    try:
        print(f"\n== submitting {args.predictions} predictions at {args.rate:g}/s", flush=True)
        submitted, wall_begin = submit_all(stack, db, args, deadline)
        submit_done = time.monotonic()
        ok = [record for record in submitted if record.prediction_id and record.job_id]
        failed_submits = [record for record in submitted if record.error]
        lags = [record.started_s - record.scheduled_s for record in submitted if record.started_s is not None]
        print(
            f"   {len(ok)} submitted, {len(failed_submits)} refused; submit took p50 "
            f"{fmt_s(percentile([r.took_s for r in ok if r.took_s], 50))}, max start lag behind schedule "
            f"{fmt_s(max(lags, default=0.0))}",
            flush=True,
        )
        for record in failed_submits[:5]:
            print(f"   ! submit {record.index}: {record.error}")

        print("\n== waiting for every job to be final", flush=True)
        wait_for_jobs(db, [record.job_id for record in ok if record.job_id], deadline)
        all_final = time.monotonic()
        back = read_back(db, stack.simulator_url, ok, deliveries_until=deadline, records_until=deadline)
        for tap in taps.values():
            tap.drain(deadline)
    finally:
        for tap in taps.values():
            tap.close()
    ended = time.monotonic()

    facts = read_logs(log_dir)
    results = back.assess(ok, facts)
    rpcs = firestore_rpcs(stack.trace_file)
    archive_steps = archive_breakdown(stack.trace_file)
    processes.stop_all()  # the stack: not needed for the report

    document = summarise(
        args,
        busy=busy,
        submitted=submitted,
        results=results,
        logs=back.logs,
        jobs=back.jobs,
        by_job_records=back.by_job_records,
        taps=taps,
        counts=facts.outcomes,
        services={process: facts.service(process) for process in facts.spans},
        rpcs=rpcs,
        archive_steps=archive_steps,
        wall_begin=wall_begin,
        timings={
            "stack_start_s": round(stack_ready - started, 1),
            "submitting_s": round(submit_done - stack_ready, 1),
            "until_all_final_s": round(all_final - submit_done, 1),
            "total_s": round(ended - started, 1),
        },
    )
    document["code"] = code
    report(document)
    common.write_results(args.results, document)
    print(f"\nwrote {shown(args.results)}; stack logs in {shown(log_dir)}/")
    problems = document["problems"]
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


@dataclass
class ReadBack:
    """What the lost check reads once every job is final: each prediction's webhook deliveries (the
    simulator's), its job, the event records, and the jobs again after the records settled."""

    logs: dict[str, dict[str, Any]]
    mapping: dict[str, str]  # prediction id → job id
    records: dict[str, Any]
    jobs: dict[str, dict[str, Any]]
    by_job_records: dict[str, list[dict[str, Any]]]

    def assess(self, submitted: list[Submitted], facts: LogFacts) -> list[PredictionResult]:
        return [
            assess(
                record,
                log=self.logs.get(record.prediction_id or ""),
                mapping=self.mapping,
                jobs=self.jobs,
                records=self.records,
                by_job_records=self.by_job_records,
                facts=facts,
            )
            for record in submitted
            if record.prediction_id
        ]


def read_back(
    db: Any, simulator_url: str, submitted: list[Submitted], *, deliveries_until: float, records_until: float
) -> ReadBack:
    """Read what `ReadBack` holds for the predictions `submitted` made (bench/soak.py uses it too)."""
    prediction_ids = [record.prediction_id for record in submitted if record.prediction_id]
    logs = fetch_deliveries(simulator_url, prediction_ids, deliveries_until)
    mappings = read_documents(db, [db.collection(PREDICTIONS).document(pid) for pid in prediction_ids])
    mapping = {path.split("/")[-1]: str(data["job_id"]) for path, data in mappings.items()}
    print("   reading back event records …", flush=True)
    records = settle_event_records(db, mapping, logs, records_until)
    # Jobs again: a job may have moved since (the settle wait), and the final read is what counts.
    refs = [db.collection(JOBS).document(job_id) for job_id in set(mapping.values())]
    jobs = {path.split("/")[-1]: data for path, data in read_documents(db, refs).items()}
    return ReadBack(logs, mapping, records, jobs, all_event_records(db))


def assess(
    record: Submitted,
    *,
    log: Mapping[str, Any] | None,
    mapping: Mapping[str, str],
    jobs: Mapping[str, Mapping[str, Any]],
    records: Mapping[str, Any],
    by_job_records: Mapping[str, list[dict[str, Any]]],
    facts: LogFacts,
) -> PredictionResult:
    """One prediction: its latency, its webhooks, and whether each acknowledged one had its effect."""
    prediction_id = record.prediction_id or ""
    job_id = mapping.get(prediction_id, record.job_id)
    job = jobs.get(job_id or "", {})
    state = job.get("state")
    acknowledged = acknowledged_ids(log) if log else {}
    with_record = superseded = 0
    lost: list[str] = []
    for webhook_id, status in acknowledged.items():
        if f"{JOBS}/{job_id}/{EVENTS}/{event_key(webhook_id)}" in records:
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
        replicate_status=job.get("replicate_status"),
        duration_s=seconds_between(job.get("created_at"), completed_at),
        end_to_end_s=seconds_between(completed_at, job.get("updated_at")) if final else None,
        announce_s=seconds_between(completed_at, job.get("announced_at")) if final else None,
        outputs_archived=sum(1 for entry in job.get("outputs") or [] if entry.get("gs_uri")),
        webhooks=len({attempt["webhook_id"] for attempt in deliveries}),
        attempts=sum(1 for attempt in deliveries if not attempt.get("dropped")),
        acknowledged=len(acknowledged),
        with_record=with_record,
        superseded=superseded,
        lost=lost,
        event_outcomes=dict(Counter(str(item.get("outcome")) for item in by_job_records.get(job_id or "", []))),
        final=str(log["final"]) if log else "unknown",
        stages=stages,
    )


def summarise(
    args: argparse.Namespace,
    *,
    busy: float | None,
    submitted: list[Submitted],
    results: list[PredictionResult],
    logs: Mapping[str, Mapping[str, Any]],
    jobs: Mapping[str, Mapping[str, Any]],
    by_job_records: Mapping[str, list[dict[str, Any]]],
    taps: Mapping[str, Tap],
    counts: Mapping[str, Counter[str]],
    services: Mapping[str, Mapping[str, Any]],
    rpcs: Counter[str],
    archive_steps: Mapping[str, Any],
    wall_begin: float,
    timings: dict[str, Any],
) -> dict[str, Any]:
    n = len(results)
    per = 1 / n if n else 0.0
    attempts = [attempt for log in logs.values() for attempt in log["deliveries"] if not attempt.get("dropped")]
    ok_attempts = [a for a in attempts if a.get("status_code") is not None and 200 <= a["status_code"] < 300]
    times = sorted(attempt["at"] for attempt in ok_attempts)
    span = (times[-1] - times[0]) if len(times) > 1 else 0.0
    series = Counter(int(at - wall_begin) for at in times)
    by_event = Counter(attempt["event"] for attempt in ok_attempts)
    e2e = [r.end_to_end_s for r in results if r.end_to_end_s is not None]
    announce = [r.announce_s for r in results if r.announce_s is not None]
    durations = [r.duration_s for r in results if r.duration_s is not None]
    lost = [webhook_id for r in results for webhook_id in r.lost]
    acknowledged = sum(r.acknowledged for r in results)
    unfinished = [r.prediction_id for r in results if r.state not in TERMINAL]
    states = Counter(str(r.state) for r in results)
    published = taps["replicate-events"].messages
    announcements = Counter(attrs.get("job_id", "") for attrs in taps["job-events"].messages.values())
    twice_announced = [job_id for job_id, count in announcements.items() if count > 1]
    writes = firestore_writes(sum(1 for s in submitted if s.job_id), jobs, by_job_records)
    outcomes: Counter[str] = Counter()
    for r in results:
        outcomes.update(r.event_outcomes)
    mean_duration = statistics.fmean(durations) if durations else args.duration
    push = {handler: sum(counts[handler].values()) for handler in ("job-status", "archive-outputs")}

    problems = []
    if lost:
        problems.append(f"{len(lost)} acknowledged webhook(s) lost (no event record, job behind): {lost[:5]}")
    if unfinished:
        problems.append(f"{len(unfinished)} job(s) not final by the deadline: {unfinished[:5]}")
    if len(results) < args.predictions:
        problems.append(f"only {len(results)} of {args.predictions} predictions were submitted")
    if twice_announced:
        problems.append(f"{len(twice_announced)} job(s) announced more than once on job-events: {twice_announced[:5]}")
    expected_files = args.files
    short = [r.prediction_id for r in results if r.state == "succeeded" and r.outputs_archived != expected_files]
    if short:
        problems.append(f"{len(short)} succeeded job(s) without {expected_files} archived file(s): {short[:5]}")

    return {
        **common.results_header(busy),
        "settings": {
            "predictions": args.predictions,
            "rate_per_s": args.rate,
            "prediction_duration_s": args.duration,
            "files": args.files,
            "file_bytes": args.file_bytes,
            "logs": args.logs,
            "webhook_events": ["start", "output", "logs", "completed"],
            "duplicate_probability": args.duplicate_probability,
            "reorder_probability": args.reorder_probability,
            "reconciler": "off",
            "quick": args.quick,
            "timeout_s": args.timeout,
        },
        "timings": timings,
        "submit": {
            "submitted": sum(1 for s in submitted if s.job_id),
            "refused": sum(1 for s in submitted if s.error),
            "achieved_rate_per_s": round((len(submitted) - 1) / max(s.started_s or 0 for s in submitted), 2)
            if len(submitted) > 1 and any(s.started_s for s in submitted)
            else None,
            "max_start_lag_s": round(max((s.started_s or 0) - s.scheduled_s for s in submitted), 3)
            if submitted
            else None,
            "took_s": distribution([s.took_s for s in submitted if s.took_s is not None]),
        },
        "jobs": {"final": n - len(unfinished), "unfinished": len(unfinished), "states": dict(states)},
        "webhooks": {
            "messages": sum(r.webhooks for r in results),
            "attempts": len(attempts),
            "delivered_2xx": len(ok_attempts),
            "non_2xx_or_error": len(attempts) - len(ok_attempts),
            "by_event": dict(by_event),
            "per_prediction": round(len(ok_attempts) * per, 2),
            "per_second": round(len(ok_attempts) / span, 1) if span else None,
            "span_s": round(span, 2),
            "series_per_second": [[second, series[second]] for second in range(max(series, default=-1) + 1)],
            "receiver_outcomes": dict(counts["receiver"]),
        },
        "services": dict(services),
        "archive_outputs_spans": dict(archive_steps),
        "end_to_end_s": distribution(e2e),
        "stages_s": {
            stage: distribution([v for r in results if (v := r.stages.get(stage)) is not None])
            for stage in ("accepted", "job_status", "archived")
        },
        "to_announcement_s": distribution(announce),
        "prediction_duration_s": distribution(durations),
        "pubsub": {
            "replicate_events_published": len(published),
            "replicate_events_per_prediction": round(len(published) * per, 2),
            "job_events_published": len(taps["job-events"].messages),
            "job_events_per_prediction": round(len(taps["job-events"].messages) * per, 2),
            "push_deliveries": push,
            "push_deliveries_per_prediction": round(sum(push.values()) * per, 2),
            "handler_outcomes": {handler: dict(counts[handler]) for handler in ("job-status", "archive-outputs")},
            "note": "the emulator ignores subscription filters, so archive-outputs is pushed every event here; "
            "in production only succeeded ones (one per prediction)",
        },
        "firestore": {
            "writes": writes,
            "writes_per_prediction": round(writes["total"] * per, 2),
            "event_record_outcomes": dict(outcomes),
            "handler_rpcs": dict(rpcs),
            "handler_commits_per_prediction": round(rpcs.get("Commit", 0) * per, 2),
            "handler_commits_failed": rpcs.get("Commit failed", 0),
            "handler_commits_refused_by_precondition": rpcs.get("Commit refused", 0),
            "method": "derived from what the run left in Firestore (see firestore_writes() in bench/e2e.py); "
            "Commit RPCs counted from the handlers' gRPC client spans as a cross-check",
        },
        "lost": {
            "acknowledged_webhook_ids": acknowledged,
            "with_event_record": sum(r.with_record for r in results),
            "superseded_without_record": sum(r.superseded for r in results),
            "lost": len(lost),
            "lost_ids": lost[:50],
        },
        "polling_comparison": {
            "poll_every_s": POLL_EVERY_S,
            "mean_delay_s": POLL_EVERY_S / 2,
            "p99_delay_s": round(POLL_EVERY_S * 0.99, 2),
            "mean_prediction_duration_s": round(mean_duration, 3),
            "api_calls_formula": "N·D/30",
            "api_calls": round(n * mean_duration / POLL_EVERY_S, 1),
            "api_calls_at_least_one_per_job": sum(max(math.ceil((d or 0) / POLL_EVERY_S), 1) for d in durations),
            "webhook_design_api_calls": 0,
        },
        "predictions": [asdict(r) for r in results],
        "problems": problems,
    }


def report(document: Mapping[str, Any]) -> None:
    settings, webhooks, pubsub, firestore = (
        document["settings"],
        document["webhooks"],
        document["pubsub"],
        document["firestore"],
    )
    e2e, lost, polling, jobs = (
        document["end_to_end_s"],
        document["lost"],
        document["polling_comparison"],
        document["jobs"],
    )
    submit = document["submit"]
    print(f"\n== results ({document['timings']['total_s']:.0f} s in all)\n")
    rows = [
        [
            "predictions",
            f"{submit['submitted']} submitted at {settings['rate_per_s']:g}/s (achieved "
            f"{submit['achieved_rate_per_s']}/s), {jobs['final']} final {jobs['states']}",
        ],
        [
            "webhooks delivered",
            f"{webhooks['delivered_2xx']:,} (2xx) of {webhooks['attempts']:,} attempts, {webhooks['per_prediction']} "
            f"per prediction, {webhooks['per_second']}/s over {webhooks['span_s']} s; by event {webhooks['by_event']}",
        ],
        [
            "end-to-end latency",
            f"p50 {fmt_s(e2e['p50'])}, p90 {fmt_s(e2e['p90'])}, p99 {fmt_s(e2e['p99'])}, max {fmt_s(e2e['max'])}, "
            f"mean {fmt_s(e2e['mean'])} (Replicate completed_at → job final)",
        ],
        [
            "Pub/Sub messages",
            f"{pubsub['replicate_events_per_prediction']} published on replicate-events and "
            f"{pubsub['job_events_per_prediction']} on job-events per prediction; "
            f"{pubsub['push_deliveries_per_prediction']} push deliveries {pubsub['push_deliveries']}",
        ],
        [
            "Firestore writes",
            f"{firestore['writes_per_prediction']} per prediction {firestore['writes']}; handler Commit RPCs "
            f"{firestore['handler_commits_per_prediction']} per prediction, {firestore['handler_commits_failed']} of "
            f"them failed (contention: retried); {firestore.get('handler_commits_refused_by_precondition', 0)} "
            f"refused by their precondition (a lost first-write race, a stale conditional write: by design)",
        ],
        [
            "lost",
            f"{lost['lost']} of {lost['acknowledged_webhook_ids']:,} acknowledged webhook ids "
            f"({lost['with_event_record']:,} with their event record, {lost['superseded_without_record']} superseded)",
        ],
    ]
    stages = document["stages_s"]
    rows.insert(
        3,
        [
            "  where it goes",
            "completed webhook accepted by the receiver p50 "
            + ", handled by job-status p50 ".join(fmt_s(stages[k]["p50"]) for k in ("accepted", "job_status"))
            + f", archived and final p50 {fmt_s(stages['archived']['p50'])} (after completed_at)",
        ],
    )
    services = document["services"]
    rows.append(
        [
            "services",
            "; ".join(
                f"{name} {info['requests']} requests, p50 {info['p50_ms']} ms, p99 {info['p99_ms']} ms, at most "
                f"{info['max_in_flight']} at once"
                for name, info in services.items()
            ),
        ]
    )
    archive = document.get("archive_outputs_spans", {})
    if archive.get("message", {}).get("count"):
        message = archive["message"]
        rows.append(
            [
                "archive-outputs",
                f"{message['count']} messages that copied files, from their spans: p50 {message['p50_ms']} ms, p90 "
                f"{message['p90_ms']} ms, p99 {message['p99_ms']} ms; steps p50: "
                + ", ".join(f"{name} {step['p50_ms']} ms" for name, step in archive["steps"].items()),
            ]
        )
    for label, value in rows:
        print(f"{label:<20}{value}")
    print(
        f"\npolling every {polling['poll_every_s']:g} s instead: mean delay {polling['mean_delay_s']:g} s, "
        f"p99 {polling['p99_delay_s']:g} s (plus the API call), and N·D/30 = {polling['api_calls']:g} GET calls for "
        f"{jobs['final']} jobs of {polling['mean_prediction_duration_s']:.1f} s (at least one per job: "
        f"{polling['api_calls_at_least_one_per_job']}); webhooks: p50 {fmt_s(e2e['p50'])}, p99 {fmt_s(e2e['p99'])}, "
        f"no GET calls"
    )


if __name__ == "__main__":
    sys.exit(main())
