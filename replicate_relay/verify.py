"""`relay verify`: one synthetic prediction through a running Relay, every hop checked and timed.

It signs a prediction lifecycle (starting → processing → succeeded) with the receiver's own secret;
the final webhook's output is a small PNG as a `data:` URI, so no Replicate call is needed. It posts
it to the receiver, then checks, in order: the job final in Firestore, the file in the bucket with
the CRC32C of the bytes sent, exactly one job-event (read from a pull subscription of its own), the
API answering for the job, and the trace (the span file locally, Cloud Trace on Google Cloud).

The same code checks the deployed Relay (`on_gcp`: Google's services, an ID token for the API) and
the local one (the emulators named in the environment, the API without auth). Whatever it creates is
removed afterwards: the job and its prediction mapping, the objects and the subscription. When a
check fails, the job and its objects are kept for the commands printed beside the failure.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import httpx
from google.api_core import exceptions as google_exceptions
from google.cloud import firestore, pubsub_v1, storage

from replicate_relay import topology
from replicate_relay.bodies import crc32c
from replicate_relay.config import ConfigError
from replicate_relay.jobs import Job
from replicate_relay.jobstore import EVENTS, JOBS, PREDICTIONS
from replicate_relay.testing import png, prediction_lifecycle, sign_webhook
from replicate_relay.traceview.lookup import find_in_file
from replicate_relay.traceview.model import Trace

VERIFY_PREFIX = "relay-verify-"  # prediction ids and subscriptions of verify runs start with this
SUCCEEDED = "succeeded"


@dataclass(frozen=True)
class Target:
    """Where the Relay under test is, and how to reach its parts."""

    receiver_url: str
    api_url: str
    project: str
    bucket: str
    webhook_secret: str = field(repr=False)  # whsec_…, as Replicate signs; never printed
    on_gcp: bool = True  # False: the emulators named by PUBSUB/FIRESTORE/STORAGE_EMULATOR_HOST
    job_events_topic: str = "job-events"
    trace_file: Path | None = None  # locally: the span file the stack's processes append to
    api_identity: str | None = None  # on Google Cloud: a service account in api_invokers to impersonate


@dataclass
class Check:
    """One line of the checklist."""

    name: str
    passed: bool | None = None  # None: skipped (said why in detail)
    seconds: float = 0.0
    detail: str = ""
    hints: list[str] = field(default_factory=list)


class _HopFailed(Exception):
    """A check's reason for failing, for the checklist."""


@dataclass
class _Run:
    target: Target
    out: TextIO
    timeout: float
    prediction_id: str = field(default_factory=lambda: f"{VERIFY_PREFIX}{uuid.uuid4().hex[:16]}")
    checks: list[Check] = field(default_factory=list)
    image: bytes = field(default_factory=lambda: png(int(time.time()) % 97))
    job: Job | None = None
    posted_at: float = 0.0
    subscription: str | None = None
    subscription_error: str = ""

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.image).decode("ascii")

    def hints(self) -> list[str]:
        target, ident = self.target, self.prediction_id
        if target.on_gcp:
            logs = (
                f"gcloud logging read 'jsonPayload.prediction_id=\"{ident}\"' --project={target.project} --freshness=1h"
            )
            return [f"relay jobs show {ident}", f"relay trace --gcp --project {target.project} {ident}", logs]
        return [f"relay jobs show {ident}", f"relay trace {ident}", f"grep -l {ident} .relay/logs/*.log"]


def verify(target: Target, out: TextIO = sys.stdout, *, timeout: float = 120.0, keep: bool = False) -> bool:
    """Run every check against `target`, print the checklist to `out`; True when none failed."""
    run = _Run(target, out, timeout)
    print(f"relay verify: prediction {run.prediction_id} → {target.receiver_url}", file=out, flush=True)
    started = time.monotonic()
    clients = _Clients.connect(target)
    steps: list[tuple[str, Callable[[], str]]] = [
        ("receiver accepted 3 signed webhooks", lambda: _post_lifecycle(run)),
        ("job final in Firestore", lambda: _job_final(run, clients)),
        ("output in the bucket, CRC32C matches", lambda: _object_stored(run, clients)),
        ("exactly one job-event", lambda: _one_job_event(run, clients)),
        ("API answers for the job", lambda: _api_answers(run)),
        ("one trace from the receiver to both handlers", lambda: _trace(run)),
    ]
    failed: Check | None = None
    with clients.subscription(target, run):
        for name, step in steps:
            check = Check(name)
            if failed is None:
                _run_check(check, step, run)
                if check.passed is False:
                    failed = check
            else:
                check.detail = "not reached"
            run.checks.append(check)
            _print_check(check, out)
    if failed is not None or keep:
        print(f"  kept jobs/{run.prediction_id} and its objects for the commands above", file=out)
    else:
        print(f"  cleaned up: {clients.clean_up(run)}", file=out)
    passed = sum(1 for check in run.checks if check.passed)
    skipped = sum(1 for check in run.checks if check.passed is None and check.detail != "not reached")
    total = time.monotonic() - started
    if failed is not None:
        print(f'FAILED at "{failed.name}": {failed.detail} ({total:.1f} s)', file=out, flush=True)
        return False
    note = f", {skipped} skipped" if skipped else ""
    print(f"All {passed} checks passed{note} in {total:.1f} s.", file=out, flush=True)
    return True


def _run_check(check: Check, step: Callable[[], str], run: _Run) -> None:
    began = time.monotonic()
    try:
        check.detail = step()
        check.passed = True
    except _Skipped as skipped:
        check.detail = str(skipped)
    except _HopFailed as error:
        check.passed, check.detail, check.hints = False, str(error), run.hints()
    check.seconds = time.monotonic() - began


class _Skipped(Exception):
    pass


# ---- the hops ----


def _post_lifecycle(run: _Run) -> str:
    bodies = prediction_lifecycle(run.prediction_id, output=[run.data_uri])
    secrets = run.target.webhook_secret.split()[:1]
    with httpx.Client(timeout=30.0) as http:
        for body in bodies:
            webhook = sign_webhook(body, secrets)
            try:
                response = http.post(run.target.receiver_url, content=webhook.body, headers=webhook.headers)
            except httpx.HTTPError as error:
                raise _HopFailed(f"cannot reach the receiver: {error}") from None
            if response.status_code >= 300:
                raise _HopFailed(f"the {body['status']} webhook got {response.status_code}: {response.text[:200]}")
    run.posted_at = time.monotonic()
    return f"{len(bodies)} × 2xx"


def _job_final(run: _Run, clients: _Clients) -> str:
    ref = clients.db.collection(JOBS).document(run.prediction_id)
    deadline = time.monotonic() + run.timeout
    job: Job | None = None
    while time.monotonic() < deadline:
        snapshot = ref.get()
        if snapshot.exists:
            job = Job.from_document(snapshot.to_dict() or {})
            if job.is_terminal and job.outputs:
                break
        time.sleep(0.2)
    if job is None:
        raise _HopFailed(f"no jobs/{run.prediction_id} after {run.timeout:g} s")
    if not job.is_terminal:
        raise _HopFailed(f"still {job.state} after {run.timeout:g} s")
    run.job = job
    if job.state != SUCCEEDED or not job.outputs:
        raise _HopFailed(f"ended {job.state} ({job.error_code}: {job.error}), not succeeded with its file")
    return f"{job.state}, {time.monotonic() - run.posted_at:.2f} s after the final webhook"


def _object_stored(run: _Run, clients: _Clients) -> str:
    if run.job is None:
        raise _HopFailed("no final job to read the output from")
    entry = run.job.outputs[0]
    uri = str(entry.get("gs_uri", ""))
    bucket_name, _, name = uri.removeprefix("gs://").partition("/")
    if bucket_name != run.target.bucket:
        raise _HopFailed(f"the output went to {uri}, not to the bucket {run.target.bucket}")
    blob = clients.storage.bucket(bucket_name).get_blob(name)
    if blob is None:
        raise _HopFailed(f"the job names {uri}, which does not exist")
    sent = crc32c(run.image)
    if blob.crc32c != sent or entry.get("crc32c") != sent:
        raise _HopFailed(f"{uri} has CRC32C {blob.crc32c} (job says {entry.get('crc32c')}), the file sent has {sent}")
    return f"{uri} ({blob.size} B)"


def _one_job_event(run: _Run, clients: _Clients) -> str:
    """Pull until the job's event arrives, then keep pulling a while: a second one would be a duplicate."""
    quiet_after = 3.0
    subscription = run.subscription
    if subscription is None:
        raise _HopFailed(f"no subscription on {run.target.job_events_topic}: {run.subscription_error}")
    found: list[str] = []
    arrived = 0.0
    deadline = time.monotonic() + run.timeout
    while time.monotonic() < deadline:
        try:
            wait = min(5.0, max(0.5, deadline - time.monotonic()))  # a pull with nothing to give waits this long
            response = clients.subscriber.pull(
                request={"subscription": subscription, "max_messages": 10}, timeout=wait, retry=None
            )
        except google_exceptions.DeadlineExceeded:  # Google's pull waits for a message; none came
            continue
        ack_ids = []
        for received in response.received_messages:
            ack_ids.append(received.ack_id)
            attributes = received.message.attributes
            if attributes.get("job_id") == run.prediction_id:
                found.append(attributes.get("state", "?"))
                arrived = arrived or time.monotonic() - run.posted_at
                deadline = min(deadline, time.monotonic() + quiet_after)
        if ack_ids:
            clients.subscriber.acknowledge(request={"subscription": subscription, "ack_ids": ack_ids})
        if not response.received_messages:
            time.sleep(0.2)
    if not found:
        raise _HopFailed(f"no job-event for the job on {run.target.job_events_topic} within {run.timeout:g} s")
    if found != [SUCCEEDED]:
        raise _HopFailed(f"{len(found)} job-events ({', '.join(found)}); exactly one, succeeded, was expected")
    return f"job.succeeded, {arrived:.2f} s after the final webhook; no other in the next {quiet_after:g} s"


def _api_answers(run: _Run) -> str:
    target = run.target
    headers = {"Authorization": f"Bearer {_id_token(target)}"} if target.on_gcp else {}
    url = f"{target.api_url.rstrip('/')}/v1/jobs/{run.prediction_id}"
    try:
        response = httpx.get(url, headers=headers, timeout=30.0)
    except httpx.HTTPError as error:
        raise _HopFailed(f"cannot reach the API: {error}") from None
    if response.status_code != 200:
        raise _HopFailed(f"GET {url} answered {response.status_code}: {response.text[:200]}")
    body = response.json()
    if body.get("job_id") != run.prediction_id or body.get("state") != SUCCEEDED:
        raise _HopFailed(f"GET {url} answered job {body.get('job_id')!r} in state {body.get('state')!r}")
    return f"GET /v1/jobs/{{id}} → 200 {body['state']}"


def _trace(run: _Run) -> str:
    wanted = {"receiver", "job-status", "archive-outputs"}
    deadline = time.monotonic() + (90.0 if run.target.on_gcp else 15.0)  # Cloud Trace shows spans within a minute
    seen: set[str] = set()
    while True:
        traces = _traces(run)
        for trace in traces:
            services = {span.service for span in trace.spans}
            if wanted <= services:
                return f"trace {trace.trace_id}: {len(trace.spans)} spans, {', '.join(sorted(services))}"
            seen |= services
        if time.monotonic() > deadline:
            break
        time.sleep(2.0 if run.target.on_gcp else 0.5)
    if not traces:
        raise _HopFailed("no trace of the job (is telemetry on? RELAY_GCP_TELEMETRY on Cloud Run)")
    raise _HopFailed(f"no single trace holds all three services; missing {', '.join(sorted(wanted - seen))}")


def _traces(run: _Run) -> tuple[Trace, ...]:
    """Every trace of the job: the span file locally, Cloud Trace on Google Cloud."""
    target = run.target
    if target.on_gcp:
        from replicate_relay.traceview import gcp  # noqa: PLC0415 - Cloud Trace's client only when asked

        client, project = gcp.connect(target.project, {})
        now = datetime.now(UTC)
        return gcp.fetch(client, project, run.prediction_id, since=now - timedelta(hours=1), now=now).traces
    if target.trace_file is None or not target.trace_file.exists():
        raise _Skipped("skipped: no span file here (RELAY_TRACE_FILE), so no trace to read")
    return find_in_file(target.trace_file, run.prediction_id).traces


def _id_token(target: Target) -> str:
    """An ID token whose audience is the API (its URL), as api/auth.py checks."""
    audience = target.api_url.rstrip("/")
    if target.api_identity:
        command = [
            "gcloud",
            "auth",
            "print-identity-token",
            f"--impersonate-service-account={target.api_identity}",
            f"--audiences={audience}",
            "--include-email",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise _HopFailed(f"cannot mint an ID token as {target.api_identity}: {result.stderr.strip()[:300]}")
        return result.stdout.strip()
    import google.auth.transport.requests  # noqa: PLC0415
    from google.auth import exceptions as auth_exceptions  # noqa: PLC0415
    from google.oauth2 import id_token  # noqa: PLC0415

    try:
        token = id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)  # type: ignore[no-untyped-call]
        return str(token)
    except auth_exceptions.GoogleAuthError as error:
        raise _HopFailed(
            f"no ID token for the API from these credentials ({error}); pass --api-identity SA, a service account "
            "listed in api_invokers that you may impersonate (roles/iam.serviceAccountTokenCreator)"
        ) from None


def _print_check(check: Check, out: TextIO) -> None:
    mark = {True: "✓", False: "✗", None: "-"}[check.passed]
    timing = f"{check.seconds:6.2f} s" if check.detail != "not reached" else " " * 8
    print(f"  {mark} {check.name:<45} {timing}  {check.detail}", file=out, flush=True)
    for hint in check.hints:
        print(f"      see: {hint}", file=out, flush=True)


# ---- Google's clients, and what the run leaves behind ----


@dataclass
class _Clients:
    db: firestore.Client
    storage: storage.Client
    subscriber: pubsub_v1.SubscriberClient
    project: str

    @classmethod
    def connect(cls, target: Target) -> _Clients:
        return cls(
            db=firestore.Client(project=target.project),
            storage=storage.Client(project=target.project),
            subscriber=pubsub_v1.SubscriberClient(),
            project=target.project,
        )

    @contextmanager
    def subscription(self, target: Target, run: _Run) -> Iterator[None]:
        """A pull subscription on job-events for this run only (made before the first webhook, so it sees
        the job's event), deleted on the way out. Google applies the filter; the emulator ignores it, so
        the pull checks the job id too. If it cannot be made, the job-event check says why."""
        prediction_id = run.prediction_id
        path = self.subscriber.subscription_path(self.project, prediction_id)
        topic = f"projects/{self.project}/topics/{target.job_events_topic}"
        try:
            self.subscriber.create_subscription(
                request={
                    "name": path,
                    "topic": topic,
                    "filter": f'attributes.job_id = "{prediction_id}"',
                    "ack_deadline_seconds": 30,
                    "message_retention_duration": {"seconds": 600},
                    "expiration_policy": {"ttl": {"seconds": 86400}},  # the shortest: gone in a day if left behind
                }
            )
        except google_exceptions.GoogleAPICallError as error:
            run.subscription_error = f"cannot create one: {error.message}"
            yield
            return
        run.subscription = path
        try:
            yield
        finally:
            with suppress(google_exceptions.GoogleAPICallError):
                self.subscriber.delete_subscription(request={"subscription": path})

    def clean_up(self, run: _Run) -> str:
        """Delete the job (with its event records), the prediction mapping and the objects."""
        ident = run.prediction_id
        job_ref = self.db.collection(JOBS).document(ident)
        events = list(job_ref.collection(EVENTS).list_documents())
        batch = self.db.batch()
        for ref in [*events, job_ref, self.db.collection(PREDICTIONS).document(ident)]:
            batch.delete(ref)
        batch.commit()
        bucket = self.storage.bucket(run.target.bucket)
        blobs: list[Any] = []
        for prefix in (f"predictions/{ident}/", f"jobs/{ident}/"):
            blobs.extend(bucket.list_blobs(prefix=prefix))
        for blob in blobs:
            blob.delete()
        return f"the job, {len(events)} event record(s), {len(blobs)} object(s) and the subscription"


# ---- the command ----


def add_verify_command(commands: Any) -> None:
    """Register `relay verify` on the `commands` subparsers of replicate_relay/cli.py."""
    parser = commands.add_parser(
        "verify",
        help="send one signed synthetic prediction through a running Relay and check every hop",
        description="Sign a prediction lifecycle with the receiver's secret (its output a small data: file, so no "
        "Replicate call), post it, then check and time: the job final in Firestore, the file in the bucket with a "
        "matching CRC32C, exactly one job-event, the API answering for the job, and the trace. Cleans up after "
        "itself; exits 1 naming the failing hop. Locally (the emulator variables set, as `relay dev` prints them) "
        "it reads the stack's environment; otherwise Google Cloud, with the URLs from `terraform output` of "
        "infra/terraform unless given.",
    )
    parser.add_argument("--project", help="default GOOGLE_CLOUD_PROJECT")
    parser.add_argument("--receiver-url", metavar="URL", help="default RELAY_WEBHOOK_URL, else terraform's webhook_url")
    parser.add_argument("--api-url", metavar="URL", help="default RELAY_API_URL, else terraform's api_url")
    parser.add_argument("--bucket", help="default RELAY_BUCKET, else terraform's bucket")
    parser.add_argument(
        "--webhook-secret-file",
        type=Path,
        metavar="PATH",
        help="the signing secret (whsec_…); default RELAY_WEBHOOK_SECRETS, else Secret Manager's latest version",
    )
    parser.add_argument(
        "--api-identity",
        metavar="SERVICE_ACCOUNT",
        help="on Google Cloud: call the API as this service account, impersonated by gcloud (default terraform's "
        "verifier_service_account, relay-verify, which var.verifiers may impersonate)",
    )
    parser.add_argument("--terraform-dir", type=Path, default=TERRAFORM_DIR, help="where `terraform output` runs")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS", help="per hop (default 120)")
    parser.add_argument("--keep", action="store_true", help="keep the job and its objects (for a look afterwards)")
    parser.set_defaults(command=_command)


TERRAFORM_DIR = Path("infra/terraform")
EMULATOR_VARIABLES = ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")


def _command(args: Any) -> int:
    target = target_from(args, os.environ)
    return 0 if verify(target, timeout=args.timeout, keep=args.keep) else 1


def target_from(args: Any, environ: Mapping[str, str]) -> Target:
    """The flags first, then the environment (the local stack's, as `relay dev` prints it), then, on Google
    Cloud, `terraform output` and Secret Manager."""
    local = [name for name in EMULATOR_VARIABLES if environ.get(name)]
    if local and len(local) < len(EMULATOR_VARIABLES):
        unset = ", ".join(name for name in EMULATOR_VARIABLES if name not in local)
        raise ConfigError(f"{', '.join(local)} set but not {unset}: set all three (local) or none (Google Cloud)")
    on_gcp = not local
    project = args.project or environ.get("GOOGLE_CLOUD_PROJECT") or environ.get("RELAY_PROJECT")
    receiver_url = args.receiver_url or environ.get("RELAY_WEBHOOK_URL")
    api_url = args.api_url or environ.get("RELAY_API_URL")
    bucket = args.bucket or environ.get("RELAY_BUCKET")
    outputs: dict[str, Any] = {}
    if on_gcp and not (receiver_url and api_url and bucket and args.api_identity):
        outputs = _terraform_outputs(args.terraform_dir)
        receiver_url = receiver_url or outputs.get("webhook_url")
        api_url = api_url or outputs.get("api_url")
        bucket = bucket or outputs.get("bucket")
    given = {"--project": project, "--receiver-url": receiver_url, "--api-url": api_url, "--bucket": bucket}
    missing = [flag for flag, value in given.items() if not value]
    if missing:
        raise ConfigError(
            f"relay verify needs {', '.join(missing)} (or `relay dev`'s environment, or terraform outputs)"
        )
    found = {flag: str(value) for flag, value in given.items()}
    if args.webhook_secret_file is not None:
        try:
            secret = args.webhook_secret_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(f"cannot read {args.webhook_secret_file}: {error.strerror}") from None
    elif environ.get("RELAY_WEBHOOK_SECRETS"):
        secret = environ["RELAY_WEBHOOK_SECRETS"]
    elif on_gcp:
        secret = _latest_secret(found["--project"], str(outputs.get("webhook_secret_id") or "relay-webhook-secrets"))
    else:
        raise ConfigError("no signing secret: set RELAY_WEBHOOK_SECRETS or pass --webhook-secret-file")
    trace_file = environ.get("RELAY_TRACE_FILE")
    return Target(
        receiver_url=found["--receiver-url"],
        api_url=found["--api-url"],
        project=found["--project"],
        bucket=found["--bucket"],
        webhook_secret=secret.split()[0],
        on_gcp=on_gcp,
        job_events_topic=topology.load().job_events_topic,
        trace_file=Path(trace_file) if trace_file and not on_gcp else None,
        api_identity=args.api_identity or outputs.get("verifier_service_account"),
    )


def _terraform_outputs(directory: Path) -> dict[str, Any]:
    command = ["terraform", f"-chdir={directory}", "output", "-json"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    except FileNotFoundError:
        raise ConfigError(
            "no terraform on PATH to read the deployment's URLs: pass --receiver-url, --api-url and --bucket"
        ) from None
    if result.returncode != 0:
        raise ConfigError(f"`{' '.join(command)}` failed: {result.stderr.strip()[:300]}")
    return {name: value.get("value") for name, value in json.loads(result.stdout or "{}").items()}


def _latest_secret(project: str, secret_id: str) -> str:
    command = ["gcloud", "secrets", "versions", "access", "latest", f"--secret={secret_id}", f"--project={project}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    except FileNotFoundError:
        raise ConfigError("no gcloud on PATH to read the signing secret: pass --webhook-secret-file") from None
    if result.returncode != 0:
        raise ConfigError(f"cannot read the signing secret {secret_id}: {result.stderr.strip()[:300]}")
    return result.stdout.strip()
