"""One trace per webhook across the processes, log lines tied to it, and no secret in either.

Read from what the running stack wrote: each process appends its spans and metrics to the
stack's telemetry files and its JSON log lines to its log file.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
from google.cloud import firestore

from replicate_relay.devstack.stack import DEV_REPLICATE_TOKEN, LocalStack
from replicate_relay.jobstore import JobStore
from replicate_relay.replicate_api import ModelRef, ReplicateAPI
from replicate_relay.submit import Submitter
from replicate_relay.testing import prediction_lifecycle
from replicate_relay.traceview.lookup import find_in_file
from replicate_relay.traceview.model import Span, SpanKind, Trace
from replicate_relay.webhooks import parse_secret
from tests.integration.conftest import Post, Sign, read_job, unique_id, wait_for, wait_for_job
from tests.integration.fileserver import Answer, FileServer

MODEL = ModelRef.parse("flux-kontext-apps/restore-image")
LOST_FINAL_WEBHOOK = {"sim_duration": 0.5, "sim_drop_final": True}


def _traces(stack: LocalStack, prediction_id: str) -> list[Trace]:
    try:
        return list(find_in_file(stack.trace_file, prediction_id).traces)
    except Exception:  # not written yet
        return []


def _one(spans: list[Span], name: str, service: str) -> Span:
    matching = [span for span in spans if span.name == name and span.service == service]
    assert len(matching) == 1, (name, service, [(s.name, s.service) for s in spans])
    return matching[0]


def _children(spans: list[Span], parent: Span) -> list[Span]:
    return [span for span in spans if span.parent_id == parent.span_id]


def _descendants(spans: list[Span], root: Span) -> list[Span]:
    found, frontier = [], [root]
    while frontier:
        children = [span for parent in frontier for span in _children(spans, parent)]
        found += children
        frontier = children
    return found


def test_one_webhook_is_one_trace_from_the_receiver_through_both_handlers(
    stack: LocalStack, db: firestore.Client, files: FileServer, sign: Sign, post: Post
) -> None:
    prediction_id = unique_id()
    url = files.serve(f"/{prediction_id}/restored.png", Answer(body=b"\x89PNG-trace", content_type="image/png"))
    final = prediction_lifecycle(prediction_id, output=[url], progress_events=0)[-1]
    webhook = sign(final)
    assert post(webhook).status_code == 200
    job = wait_for_job(db, prediction_id, "succeeded")

    def complete() -> Trace | None:
        traces = _traces(stack, prediction_id)
        if len(traces) != 1:
            return None
        names = {(span.service, span.name) for span in traces[0].spans}
        wanted = {
            ("receiver", "POST /"),
            ("job-status", "process job-status"),
            ("archive-outputs", "process archive-outputs"),  # a parent span ends, and is written, last
        }
        return traces[0] if wanted <= names else None

    trace = wait_for(complete, what="the webhook's spans from all three processes")
    spans = list(trace.spans)
    assert {span.trace_id for span in spans} == {trace.trace_id}

    server = _one(spans, "POST /", "receiver")
    assert server.kind is SpanKind.SERVER
    assert server.parent_id is None  # nothing upstream sent a trace context
    assert server.attributes["relay.prediction_id"] == prediction_id
    assert server.attributes["relay.webhook_id"] == webhook.webhook_id
    assert server.attributes["http.response.status_code"] == 200

    send = _one(spans, "send replicate-events", "receiver")
    assert (send.kind, send.parent_id) == (SpanKind.PRODUCER, server.span_id)
    assert send.attributes["messaging.message.id"]

    # Both subscriptions' handlers continue the trace from the message attributes.
    status = _one(spans, "process job-status", "job-status")
    archive = _one(spans, "process archive-outputs", "archive-outputs")
    for consumer in (status, archive):
        assert (consumer.kind, consumer.parent_id) == (SpanKind.CONSUMER, send.span_id)
        assert consumer.attributes["relay.job_id"] == job.job_id
        assert consumer.attributes["messaging.message.id"] == send.attributes["messaging.message.id"]

    # Under the handlers: Firestore writes with their RPCs, the download, the Cloud Storage write. Which
    # write applies an event depends on the race (replicate_relay/jobstore.py): the job's first write as a batch, a
    # transaction, or (the job exists: archive-outputs finishes it) the deferred event's record alone.
    status_work = _descendants(spans, status)
    assert {"apply_event", "defer_event"} & {span.attributes.get("db.operation.name") for span in status_work}
    assert any(span.name.startswith("/google.firestore.v1.Firestore/Commit") for span in status_work)
    archive_work = _descendants(spans, archive)
    archived = _one(archive_work, "archive file", "archive-outputs")
    assert archived.attributes["relay.output.gs_uri"] == job.outputs[0]["gs_uri"]
    upload = [span for span in _descendants(spans, archived) if span.kind is SpanKind.CLIENT]
    assert any(span.name.startswith("Storage.") for span in upload), [s.name for s in upload]
    assert any(span.name == "GET" for span in upload)  # the download, through httpx
    assert any(span.attributes.get("db.operation.name") == "finish_archive" for span in archive_work)
    # Whichever handler made the job final announced it, in the same trace.
    assert len([span for span in spans if span.name == "send job-events"]) == 1
    # Copying a file shows no failed call: the archiver does not probe for the object with a GET that
    # would 404 (which the storage client's and requests' tracing mark failed). Firestore contention
    # between the two handlers may still show a retried Commit: that one is real.
    assert not [(span.name, span.status_message) for span in [archived, *_descendants(spans, archived)] if span.failed]

    # The receiver's and the handlers' log lines for this webhook name the same trace.
    for service in ("receiver", "job-status", "archive-outputs"):
        lines = [entry for entry in _log_entries(stack, service) if entry.get("prediction_id") == prediction_id]
        assert len(lines) == 1, (service, lines)
        assert lines[0]["logging.googleapis.com/trace"] == f"projects/{stack.config.project}/traces/{trace.trace_id}"
        assert len(lines[0]["logging.googleapis.com/spanId"]) == 16


def test_a_reconciled_jobs_trace_links_to_the_reconciler_run(stack: LocalStack, db: firestore.Client) -> None:
    api = ReplicateAPI.connect(DEV_REPLICATE_TOKEN, base_url=stack.simulator_url)
    try:
        submitter = Submitter(store=JobStore(db), replicate=api, webhook_url=stack.receiver_url + "/")
        job = submitter.submit(MODEL, {"input_image": "https://example.com/a.jpg", **LOST_FINAL_WEBHOOK})
    finally:
        api.close()
    assert job.prediction_id is not None
    wait_for(lambda: (j := read_job(db, job.job_id)) and j.state == "processing", what="processing")
    time.sleep(3.5)  # RELAY_RECONCILE_QUIET_SECONDS in the test stack
    assert stack.reconcile()["recovered"] >= 1  # type: ignore[operator]
    wait_for_job(db, job.job_id, "succeeded")

    def recovered() -> tuple[Span, list[Span]] | None:
        for trace in _traces(stack, job.prediction_id or ""):
            spans = list(trace.spans)
            roots = [span for span in spans if span.name == "reconcile recover" and span.service == "reconciler"]
            if roots and any(span.name == "process job-status" for span in spans):
                return roots[0], spans
        return None

    recover, spans = wait_for(recovered, what="the recovered prediction's trace")
    assert recover.parent_id is None  # a trace of its own, as a webhook would have started
    send = _one(spans, "send replicate-events", "reconciler")
    assert send.parent_id == recover.span_id
    assert _one(spans, "process job-status", "job-status").parent_id == send.span_id
    # ...linked to the run, in another trace, which links back.
    [link] = recover.links
    assert link.trace_id != recover.trace_id
    run = find_in_file(stack.trace_file, link.trace_id).traces[0]
    run_span = _one(list(run.spans), "reconcile run", "reconciler")
    assert (run_span.span_id, run_span.parent_id) == (link.span_id, None)
    assert (recover.trace_id, recover.span_id) in {(back.trace_id, back.span_id) for back in run_span.links}


def test_every_log_line_is_json_and_no_secret_reaches_logs_spans_or_metrics(
    stack: LocalStack, db: firestore.Client, sign: Sign, post: Post, http: httpx.Client
) -> None:
    prediction_id = unique_id()
    sent = [sign(body) for body in prediction_lifecycle(prediction_id)]
    for webhook in sent:
        assert post(webhook).status_code == 200
    forged = sign(prediction_lifecycle(unique_id())[0])
    forged.headers["webhook-signature"] = "v1," + base64.b64encode(b"f" * 32).decode()
    assert post(forged).status_code == 401
    wait_for_job(db, prediction_id, "succeeded")
    time.sleep(6)  # one metrics export interval of the stack (RELAY_METRICS_INTERVAL_SECONDS=5)

    secrets = set()
    for secret in stack.config.webhook_secrets:
        secrets |= {secret, base64.b64encode(parse_secret(secret).key).decode()}
    signatures = {
        entry.split(",", 1)[1] for webhook in [*sent, forged] for entry in webhook.headers["webhook-signature"].split()
    }
    forbidden = {*secrets, *signatures, DEV_REPLICATE_TOKEN}

    log_files = sorted(stack.config.log_dir.glob("*.log"))
    telemetry_files = [stack.trace_file, stack.metrics_file]
    assert {path.name for path in log_files} >= {"receiver.log", "job-status.log", "archive-outputs.log"}
    assert all(path.stat().st_size > 0 for path in telemetry_files)
    for path in [*log_files, *telemetry_files]:
        text = path.read_text(encoding="utf-8", errors="replace")
        leaked = sorted(value for value in forbidden if value in text)
        assert not leaked, f"{path.name} holds a secret, signature or token"

    # Every line our processes log is one JSON object in Cloud Logging's shape.
    for service in ("receiver", "job-status", "archive-outputs", "reconciler"):
        entries = _log_entries(stack, service)
        assert all({"severity", "message", "time"} <= entry.keys() for entry in entries)
    webhook_lines = [e for e in _log_entries(stack, "receiver") if e.get("webhook_id") in {w.webhook_id for w in sent}]
    assert len(webhook_lines) == len(sent)  # exactly one line per webhook
    assert all(e["outcome"] == "accepted" and "logging.googleapis.com/trace" in e for e in webhook_lines)

    rejected = [e for e in _log_entries(stack, "receiver") if e.get("webhook_id") == forged.webhook_id]
    assert [(e["outcome"], e["reason"]) for e in rejected] == [("rejected", "signature_mismatch")]
    assert _metric_total(stack.metrics_file, "relay.webhook.verification_failures", reason="signature_mismatch") >= 1
    assert _metric_total(stack.metrics_file, "relay.webhooks", outcome="accepted") >= len(sent)


def _log_entries(stack: LocalStack, service: str) -> list[dict[str, Any]]:
    """The JSON lines a process logged (functions-framework's and gunicorn's own lines aside)."""
    entries = []
    for line in (stack.config.log_dir / f"{service}.log").read_text(encoding="utf-8").splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def _metric_total(path: Path, name: str, **attributes: str) -> int:
    """The sum over processes of a counter's latest cumulative value for `attributes`."""
    latest: dict[tuple[str, str], int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        for resource in json.loads(line)["resourceMetrics"]:
            resource_attributes = {a["key"]: a["value"] for a in resource["resource"]["attributes"]}
            instance = resource_attributes["service.instance.id"]["stringValue"]
            for scope in resource["scopeMetrics"]:
                for metric in scope["metrics"]:
                    if metric["name"] != name:
                        continue
                    for point in metric["sum"]["dataPoints"]:
                        labels = {a["key"]: a["value"].get("stringValue") for a in point.get("attributes", [])}
                        if all(labels.get(key) == value for key, value in attributes.items()):
                            key = (instance, json.dumps(labels, sort_keys=True))
                            latest[key] = int(point["asInt"])
    return sum(latest.values())


def test_every_trace_starts_at_a_request_a_message_or_a_reconciler_run(
    stack: LocalStack, db: firestore.Client, files: FileServer, sign: Sign, post: Post
) -> None:
    """No library call starts a trace of its own (a background thread, a batch publisher): such
    orphans clutter Cloud Trace and are missing from the waterfall they belong to. Checked over
    everything the session's stack has traced so far, after one more archived job."""
    prediction_id = unique_id()
    url = files.serve(f"/{prediction_id}/out.png", Answer(body=b"\x89PNG-roots", content_type="image/png"))
    assert post(sign(prediction_lifecycle(prediction_id, output=[url], progress_events=0)[-1])).status_code == 200
    wait_for_job(db, prediction_id, "succeeded")
    stack.reconcile()
    time.sleep(2)  # background threads, if any, would have exported by now

    roots: set[tuple[str, str]] = set()
    for line in stack.trace_file.read_text(encoding="utf-8").splitlines():
        for resource in json.loads(line)["resourceSpans"]:
            labels = {a["key"]: a["value"] for a in resource["resource"]["attributes"]}
            for scope in resource["scopeSpans"]:
                roots |= {
                    (labels["service.name"]["stringValue"], span["name"])
                    for span in scope["spans"]
                    if not span.get("parentSpanId")
                }
    assert ("receiver", "POST /") in roots
    allowed = {"reconcile run", "reconcile recover", "process job-status", "process archive-outputs"}
    # A request's server span is named by its method and route ("POST /", the api's "GET /v1/jobs/{job_id}");
    # a library's client call is named by its method alone ("GET") or its RPC, and must have a parent.
    requests = {(service, name) for service, name in roots if re.fullmatch(r"[A-Z]+ /\S*", name)}
    assert {name for _, name in roots - requests} <= allowed, sorted(roots)
    assert {service for service, _ in requests} <= {"receiver", "api"}, sorted(requests)
