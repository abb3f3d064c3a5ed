"""What the local stack cannot show about the real services, and how to check each on Google Cloud.

Data for bench/report.py's last section (docs/EMULATORS.md lists what each emulator does
and does not do). Service, subscription and bucket names are those of infra/topology.yaml and
infra/terraform; `$REGION` and `$PROJECT` as in docs/DEPLOY.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EmulatorLimit:
    title: str
    gap: str  # what the emulator does instead, and what that hides
    checks: tuple[str, ...]  # concrete commands or Cloud Monitoring metrics


EMULATOR_LIMITS = (
    EmulatorLimit(
        "OIDC tokens on push",
        "The Pub/Sub emulator pushes without an `Authorization` header and enforces no IAM, so the dev stack "
        "runs the handlers with `RELAY_PUSH_AUTH=off` and nothing here shows that only Pub/Sub's service "
        "account can reach them. In production the handlers are private Cloud Run services (Cloud Run's IAM "
        "check refuses any other caller) and check the token themselves (`handlers/auth.py`: Google's "
        "signature, issuer, audience, sender), which unit tests show with locally minted tokens only.",
        (
            "Each push subscription sends a token for the right account: `gcloud pubsub subscriptions describe "
            "job-status --format='value(pushConfig.oidcToken.serviceAccountEmail,pushConfig.oidcToken.audience)'` "
            "(and the same for `archive-outputs`).",
            "An unauthenticated caller is refused: `curl -s -o /dev/null -w '%{http_code}\\n' -X POST "
            "\"$(gcloud run services describe job-status --region=$REGION --format='value(status.url)')\"` "
            "must print 403.",
            "No refused pushes from Pub/Sub itself: metric `pubsub.googleapis.com/subscription/push_request_count` "
            "grouped by `response_code`, on `job-status` and `archive-outputs`, shows no 401/403; the handlers' "
            "refusals, if any: `gcloud logging read 'jsonPayload.reason=\"wrong_audience\"' --freshness=1d`.",
        ),
    ),
    EmulatorLimit(
        "Pub/Sub delivery: exactly-once, ordering, filters, real redelivery timing",
        "The emulator offers no exactly-once delivery, ignores subscription filters (so `archive-outputs` is "
        "pushed every event locally), puts no `deliveryAttempt` in the push body, and its backoff between "
        "attempts only approximates the service's. Relay relies on none of these (handlers deduplicate by "
        "`webhook-id` and accept any order), but the real rates of duplicates and retries, and the time a "
        "message spends in backoff, are only visible on the service.",
        (
            "Policies as provisioned: `gcloud pubsub subscriptions describe archive-outputs "
            "--format='yaml(filter,ackDeadlineSeconds,retryPolicy,deadLetterPolicy)'`.",
            "The filter works: `pubsub.googleapis.com/subscription/push_request_count` on `archive-outputs` is "
            "about one per succeeded prediction, not one per webhook.",
            "Duplicates and retries: `gcloud logging read 'jsonPayload.outcome=\"duplicate\"' --freshness=1d "
            "--format='value(timestamp)' | wc -l`, and `gcloud logging read 'jsonPayload.outcome=\"retry\"' "
            "--format='table(timestamp,jsonPayload.handler,jsonPayload.prediction_id,jsonPayload.delivery_attempt)'` "
            "(the real service fills `delivery_attempt`).",
            "Backlog and redelivery delay: `pubsub.googleapis.com/subscription/oldest_unacked_message_age` and "
            "`.../num_undelivered_messages` per subscription; dead letters: "
            "`pubsub.googleapis.com/subscription/dead_letter_message_count` and `relay status`.",
        ),
    ),
    EmulatorLimit(
        "Real network latency to Replicate and Cloud Storage",
        "Everything here is loopback: the simulator's webhooks reach the receiver in well under a millisecond "
        "and output files download from the same machine. Real webhooks cross the internet, and real downloads "
        "from `replicate.delivery` and uploads to Cloud Storage run at network speed.",
        (
            "End-to-end latency as users see it: the distribution metric "
            "`workload.googleapis.com/relay.job.end_to_end_latency` (p50, p99 by `state`) in Metrics Explorer.",
            "One webhook across every hop with real timings: `relay trace PREDICTION_ID --gcp` (receiver "
            "→ publish → handlers → Firestore, download, upload spans in Cloud Trace).",
            "The receiver's answer time as Replicate sees it: `run.googleapis.com/request_latencies` for service "
            "`receiver`; archive speed: `workload.googleapis.com/relay.archive.bytes` over "
            "`workload.googleapis.com/relay.handler.duration` for `handler=archive-outputs`.",
            "A real prediction: `relay submit --model OWNER/NAME --input … --wait 300`, then "
            "`relay jobs show JOB_ID` (its `completed_at` against `updated_at`).",
        ),
    ),
    EmulatorLimit(
        "Cloud Run cold starts and CPU throttling",
        "Locally every function is a warm process with its CPU always allocated. On Cloud Run a handler may "
        "start cold when a burst arrives, and outside requests the CPU is throttled unless configured "
        "otherwise (the receiver keeps one warm instance).",
        (
            "Configuration: `gcloud run services describe receiver --region=$REGION "
            "--format='yaml(spec.template.metadata.annotations)'` shows `autoscaling.knative.dev/minScale` and "
            "`run.googleapis.com/cpu-throttling`.",
            "Cold starts: `run.googleapis.com/container/startup_latencies` per service, "
            "`run.googleapis.com/container/instance_count` by `state`, and the tail of "
            "`run.googleapis.com/request_latencies` (p99) for `job-status` and `archive-outputs` during a burst.",
            "Load against the deployed receiver with the same tools as here: a body signed with the real secret "
            "(`replicate_relay.testing.sign_webhook`, valid for 300 s), then "
            "`hey -z 60s -c 16 -q 10 -m POST -H … -D body.json "
            '"$(terraform -chdir=infra/terraform output -raw webhook_url)"`; watch '
            "`run.googleapis.com/container/cpu/utilizations`.",
        ),
    ),
    EmulatorLimit(
        "Firestore contention limits, quotas, indexes and TTL",
        "The Firestore emulator accepts any write rate on one document, needs no composite indexes and never "
        "deletes expired documents; its transactions take about 10-15 ms here. When two transactions that "
        "read the same job both commit (job-status and archive-outputs handling one `succeeded` webhook at "
        "once), it holds the locks until a 2 s timeout and then aborts one (`ABORTED: Transaction lock "
        "timeout`; the aborted Commit spans last 2.0-2.1 s), so locally such a webhook can take 2 s longer; "
        "the handlers retry it, and the trace shows the aborted Commit. The real database sustains "
        "about one write a second per document (hence coalescing), aborts contended transactions, enforces "
        "quotas, needs the indexes in `infra/firestore.indexes.json`, and applies the TTL policy on `expire_at`.",
        (
            "Contention: metric `firestore.googleapis.com/api/request_count` with `response_code=ABORTED`, and the "
            "handlers' retries for it: `gcloud logging read 'jsonPayload.reason=\"firestore_unavailable\"' "
            "--freshness=1h`.",
            "Write rate: `firestore.googleapis.com/document/write_count` against the writes per prediction above; "
            "hot documents in the console's Key Visualizer.",
            "Indexes and TTL: `gcloud firestore indexes composite list` (the reconciler's indexes READY) and "
            "`gcloud firestore fields ttls list` (`expire_at` on the `events` collection group ACTIVE).",
        ),
    ),
    EmulatorLimit(
        "Cloud Storage: fake-gcs-server's different checksums and preconditions",
        "fake-gcs-server enforces `if_generation_match=0` only on single-request uploads and ignores it on "
        "resumable ones (`tests/integration/test_storage_emulator.py` pins both behaviours), and it recomputes "
        "CRC32C and MD5 over the whole object on every resumable chunk, which makes large uploads here "
        "quadratic in time. Real Cloud Storage enforces the precondition on every upload, validates the "
        "client's checksums, and streams at network speed.",
        (
            "The precondition on a resumable upload: `head -c 20M /dev/urandom > /tmp/big; gcloud storage cp "
            "--if-generation-match=0 /tmp/big gs://$PROJECT-relay-outputs/precondition-check` twice: the second "
            "must fail with 412 (then delete the object).",
            "Checksums as recorded: `gcloud storage objects describe "
            "gs://$PROJECT-relay-outputs/predictions/PREDICTION_ID/0-0-output.png "
            "--format='value(crc32c_hash,size,generation)'` against `relay jobs show PREDICTION_ID`.",
            "Refused second copies and errors: `storage.googleapis.com/api/request_count` grouped by "
            "`response_code` (412 is a redelivery finding its object already written).",
        ),
    ),
)
