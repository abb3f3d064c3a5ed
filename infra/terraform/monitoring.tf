# Cloud Monitoring: the Relay dashboard, the alert policies, and the two log-based metrics they
# read. Every policy's documentation says what it means and what to do (docs/OPERATIONS.md).
#
# Where the numbers come from:
# - workload.googleapis.com/relay.*: the services' OpenTelemetry instruments (replicate_relay/telemetry.py,
#   RELAY_GCP_TELEMETRY in run.tf), written by opentelemetry-exporter-gcp-monitoring. It names a
#   metric "workload.googleapis.com/<instrument>", keeps attribute keys as metric labels (any
#   character but a letter or digit becomes "_"), and writes counters and histograms as
#   CUMULATIVE series (INT64 or DOUBLE, and DISTRIBUTION). On Cloud Run the resource that
#   opentelemetry-resourcedetector-gcp detects (cloud.platform gcp_cloud_functions, because
#   FUNCTION_TARGET is set, or gcp_cloud_run) is neither GCE nor GKE, so the exporter maps it to
#   the monitored resource generic_task: job = service.name (OTEL_SERVICE_NAME, the Cloud Run
#   service), namespace = service.namespace (replicate_relay/telemetry.py sets "replicate-relay"),
#   task_id = the instance id, location = the region. Hence `local.otel_resource` below.
#   Counters are charted with ALIGN_RATE, or ALIGN_DELTA where a count per interval reads better;
#   histograms with ALIGN_DELTA and a percentile reducer.
# - pubsub.googleapis.com/subscription/*: Pub/Sub's own (GAUGE backlog and age; DELTA
#   dead_letter_message_count on the source subscription).
# - logging.googleapis.com/user/relay/*: the log-based metrics below (DELTA counters).

locals {
  # The monitored resource every relay.* series is written against (see above). tests/unit/
  # test_infra.py exports through the real exporter and checks the series match this.
  otel_resource = "resource.type = \"generic_task\" AND resource.labels.namespace = \"replicate-relay\""

  push_subscriptions        = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = one_of(${join(", ", [for name in keys(local.subscriptions) : "\"${name}\""])})"
  dead_letter_subscriptions = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = one_of(${join(", ", [for dead in values(local.dead_letters) : "\"${dead.subscription}\""])})"

  notification_channels = concat(var.notification_channels, google_monitoring_notification_channel.email[*].id)
}

resource "google_monitoring_notification_channel" "email" {
  count        = var.alert_email == "" ? 0 : 1
  display_name = "Replicate Relay alerts"
  type         = "email"
  labels       = { email_address = var.alert_email }
  depends_on   = [google_project_service.apis]
}

# ---- log-based metrics, from the services' JSON log lines (replicate_relay/logs.py) ----

# Archive failures come from the log, not from relay.handler.duration: a job that ends failed
# because of its outputs (output_expired, output_refused, archive_conflict) is a handled message
# with a state-machine outcome ("applied"), so the metric's outcome label cannot tell it apart;
# only the handler's ERROR line carries error_code. The line also exists when metric export is
# off or lagging, and it is what the person paged reads next.
resource "google_logging_metric" "archive_failures" {
  name = "relay/archive_failures"
  filter = join(" AND ", [
    "resource.type=\"cloud_run_revision\"",
    "resource.labels.service_name=\"${local.archive_service}\"",
    "severity>=ERROR",
    "(jsonPayload.error_code:* OR jsonPayload.outcome=\"permanent_failure\")",
  ])

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    display_name = "Relay archive failures"
    labels {
      key         = "error_code"
      value_type  = "STRING"
      description = "output_expired, output_refused, archive_conflict; empty for a dropped message"
    }
    labels {
      key         = "reason"
      value_type  = "STRING"
      description = "why a message was dropped as undeliverable (outcome permanent_failure)"
    }
  }
  label_extractors = {
    error_code = "EXTRACT(jsonPayload.error_code)"
    reason     = "EXTRACT(jsonPayload.reason)"
  }
}

# Jobs by state. relay.jobs is not emitted: how many jobs are in each state right now lives in
# Firestore, and a count query per state every minute is the operator's job (`relay
# status`), not the services'. What Monitoring can see is the flow: each job is announced once
# when it becomes final, and the handler that announces it logs `announced: true` with its
# final `state`. Jobs the reconciler aborts (submit_incomplete) are counted only in its run
# line (`aborted`).
resource "google_logging_metric" "jobs_finished" {
  name = "relay/jobs_finished"
  filter = join(" AND ", [
    "resource.type=\"cloud_run_revision\"",
    "jsonPayload.announced=true",
  ])

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    display_name = "Relay jobs finished"
    labels {
      key         = "state"
      value_type  = "STRING"
      description = "the final state: succeeded, failed, canceled or aborted"
    }
  }
  label_extractors = {
    state = "EXTRACT(jsonPayload.state)"
  }
}

# ---- dashboard ----

locals {
  # Each chart: title, y-axis label, plot type, then one line per data set: the metric type, the
  # resources it is read from (`on`, by default the services' own: local.otel_resource), the
  # alignment period, per-series aligner and cross-series reducer, and optionally the fields it is
  # grouped by and a legend.
  charts = [
    { title = "Webhooks by outcome", y_label = "webhooks/s", plot = "STACKED_AREA", data_sets = [
      { metric = "workload.googleapis.com/relay.webhooks", period = "60s", aligner = "ALIGN_RATE", reducer = "REDUCE_SUM", by = ["metric.labels.outcome"] },
    ] },
    { title = "Webhook latency (all outcomes)", y_label = "seconds", plot = "LINE", data_sets = [
      { metric = "workload.googleapis.com/relay.webhook.duration", period = "60s", aligner = "ALIGN_DELTA", reducer = "REDUCE_PERCENTILE_50", legend = "p50" },
      { metric = "workload.googleapis.com/relay.webhook.duration", period = "60s", aligner = "ALIGN_DELTA", reducer = "REDUCE_PERCENTILE_99", legend = "p99" },
    ] },
    { title = "Verification failures by reason", y_label = "webhooks/s", plot = "STACKED_AREA", data_sets = [
      { metric = "workload.googleapis.com/relay.webhook.verification_failures", period = "60s", aligner = "ALIGN_RATE", reducer = "REDUCE_SUM", by = ["metric.labels.reason"] },
    ] },
    { title = "Publish latency p99 by topic and outcome", y_label = "seconds", plot = "LINE", data_sets = [
      { metric = "workload.googleapis.com/relay.publish.duration", period = "60s", aligner = "ALIGN_DELTA", reducer = "REDUCE_PERCENTILE_99", by = ["metric.labels.topic", "metric.labels.outcome"] },
    ] },
    { title = "Handler latency p95 by handler", y_label = "seconds", plot = "LINE", data_sets = [
      { metric = "workload.googleapis.com/relay.handler.duration", period = "60s", aligner = "ALIGN_DELTA", reducer = "REDUCE_PERCENTILE_95", by = ["metric.labels.handler"] },
    ] },
    { title = "Oldest unacknowledged message age per subscription", y_label = "seconds", plot = "LINE", data_sets = [
      { metric = "pubsub.googleapis.com/subscription/oldest_unacked_message_age", on = local.push_subscriptions, period = "60s", aligner = "ALIGN_MAX", reducer = "REDUCE_MAX", by = ["resource.labels.subscription_id"] },
    ] },
    { title = "Push backlog (undelivered messages) per subscription", y_label = "messages", plot = "LINE", data_sets = [
      { metric = "pubsub.googleapis.com/subscription/num_undelivered_messages", on = local.push_subscriptions, period = "60s", aligner = "ALIGN_MAX", reducer = "REDUCE_SUM", by = ["resource.labels.subscription_id"] },
    ] },
    { title = "Dead-letter backlog (relay replay --from <subscription>)", y_label = "messages", plot = "STACKED_AREA", data_sets = [
      { metric = "pubsub.googleapis.com/subscription/num_undelivered_messages", on = local.dead_letter_subscriptions, period = "60s", aligner = "ALIGN_MAX", reducer = "REDUCE_SUM", by = ["resource.labels.subscription_id"] },
    ] },
    { title = "Messages dead-lettered (Pub/Sub by subscription, Relay by handler)", y_label = "messages per 5 min", plot = "STACKED_BAR", data_sets = [
      { metric = "pubsub.googleapis.com/subscription/dead_letter_message_count", on = local.push_subscriptions, period = "300s", aligner = "ALIGN_DELTA", reducer = "REDUCE_SUM", by = ["resource.labels.subscription_id"] },
      { metric = "workload.googleapis.com/relay.messages.dead_lettered", period = "300s", aligner = "ALIGN_DELTA", reducer = "REDUCE_SUM", by = ["metric.labels.handler"] },
    ] },
    { title = "Reconciler recoveries (final webhooks that never came)", y_label = "jobs per 5 min", plot = "STACKED_BAR", data_sets = [
      { metric = "workload.googleapis.com/relay.reconciler.recovered", period = "300s", aligner = "ALIGN_DELTA", reducer = "REDUCE_SUM", legend = "recovered" },
    ] },
    { title = "End-to-end latency (Replicate completed → job final)", y_label = "seconds", plot = "LINE", data_sets = [
      { metric = "workload.googleapis.com/relay.job.end_to_end_latency", period = "300s", aligner = "ALIGN_DELTA", reducer = "REDUCE_PERCENTILE_50", legend = "p50, all states" },
      { metric = "workload.googleapis.com/relay.job.end_to_end_latency", period = "300s", aligner = "ALIGN_DELTA", reducer = "REDUCE_PERCENTILE_95", by = ["metric.labels.state"] },
    ] },
    { title = "Bytes archived", y_label = "bytes/s", plot = "STACKED_AREA", data_sets = [
      { metric = "workload.googleapis.com/relay.archive.bytes", period = "60s", aligner = "ALIGN_RATE", reducer = "REDUCE_SUM", legend = "archived" },
    ] },
    { title = "Jobs finished by final state", y_label = "jobs per 5 min", plot = "STACKED_BAR", data_sets = [
      { metric = "logging.googleapis.com/user/${google_logging_metric.jobs_finished.name}", on = "resource.type = \"cloud_run_revision\"", period = "300s", aligner = "ALIGN_DELTA", reducer = "REDUCE_SUM", by = ["metric.labels.state"] },
    ] },
    { title = "GPU seconds (Replicate's predict_time) by model and deployment", y_label = "seconds per hour", plot = "STACKED_BAR", data_sets = [
      { metric = "workload.googleapis.com/relay.job.predict_time", period = "3600s", aligner = "ALIGN_DELTA", reducer = "REDUCE_SUM", by = ["metric.labels.model", "metric.labels.deployment"] },
    ] },
  ]

  # The charts with each data set's filter and aggregation written exactly as the Dashboards API
  # takes them (camelCase JSON fields). Nothing is sent that the API leaves out of what it returns
  # (empty strings and lists, zero positions): the provider would show it as a change on every plan.
  dashboard_charts = [
    for chart in local.charts : merge(chart, {
      data_sets = [
        for data_set in chart.data_sets : {
          legend = lookup(data_set, "legend", "")
          filter = "metric.type = \"${data_set.metric}\" AND ${lookup(data_set, "on", local.otel_resource)}"
          aggregation = merge(
            { alignmentPeriod = data_set.period, perSeriesAligner = data_set.aligner, crossSeriesReducer = data_set.reducer },
            contains(keys(data_set), "by") ? { groupByFields = data_set.by } : {},
          )
        }
      ]
    })
  ]
  jobs_by_state_note = <<-EOT
    **Jobs by state, right now,** are in Firestore, not in Cloud Monitoring (the services emit no
    gauge of them: counting every state every minute is a query per state, for a number only an
    operator needs). With application-default credentials for this project:

    - `relay status`: jobs by state, stuck jobs, dead-letter backlogs, time since the last event
    - `relay jobs list --stuck`: jobs not final and not written for 10 minutes
    - `relay jobs list --state failed --since 1h`, then `relay jobs show <job>`

    The chart to the left counts jobs as they become final.
  EOT

  dashboard_widgets = concat(
    [
      for chart in local.dashboard_charts : {
        title = chart.title
        xyChart = {
          dataSets = [
            for data_set in chart.data_sets : merge(
              {
                timeSeriesQuery = {
                  timeSeriesFilter = {
                    filter      = data_set.filter
                    aggregation = data_set.aggregation
                  }
                }
                plotType           = chart.plot
                minAlignmentPeriod = data_set.aggregation.alignmentPeriod
                targetAxis         = "Y1"
              },
              data_set.legend == "" ? {} : { legendTemplate = data_set.legend },
            )
          ]
          yAxis        = { label = chart.y_label, scale = "LINEAR" }
          chartOptions = { mode = "COLOR" }
        }
      }
    ],
    [{ title = "Jobs by state", text = { content = local.jobs_by_state_note, format = "MARKDOWN" } }],
  )
}

resource "google_monitoring_dashboard" "relay" {
  dashboard_json = jsonencode({
    displayName = "Replicate Relay"
    mosaicLayout = {
      columns = 48
      # Two tiles a row, in the order above.
      tiles = [
        for index, widget in local.dashboard_widgets : merge(
          { width = 24, height = 16, widget = widget },
          index % 2 == 0 ? {} : { xPos = 24 },
          index < 2 ? {} : { yPos = floor(index / 2) * 16 },
        )
      ]
    }
  })

  depends_on = [google_project_service.apis]
}

# ---- alert policies ----

# Any dead-lettered message: one policy per dead-letter subscription, so that the incident names
# the subscription to replay from. It stays open until that backlog is empty again.
resource "google_monitoring_alert_policy" "dead_lettered" {
  for_each              = local.dead_letters
  display_name          = "Relay: ${each.key} messages dead-lettered"
  combiner              = "OR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "undelivered messages in ${google_pubsub_subscription.dead_letter[each.key].name} > 0"
    condition_threshold {
      filter          = "metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${google_pubsub_subscription.dead_letter[each.key].name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      **What it means.** The ${each.key} handler refused at least one message ${each.value.max_delivery_attempts} times (503 and other non-2xx answers: Firestore, Cloud Storage, Pub/Sub or a download failing, or the service not starting), so Pub/Sub moved it to the dead-letter topic `${each.value.topic}`, whose pull subscription `${each.value.subscription}` keeps it for 7 days. Its job has not been updated by it.

      **What to do.**
      1. `relay replay --from ${each.value.subscription} --dry-run` lists the messages (prediction, status, deliveries) without acknowledging any.
      2. Find the cause in the ${each.key} service's logs: WARNING lines with `jsonPayload.outcome="retry"` and their `reason`, for those prediction ids. `relay status` shows every dead-letter backlog and the stuck jobs.
      3. Fix it (quota, IAM, an outage upstream, a bad revision: `gcloud run services update-traffic ${each.key} --to-revisions=<previous>=100`).
      4. `relay replay --from ${each.value.subscription}` republishes them to the events topic (`source=replay`; handlers drop duplicates). The incident closes when the backlog is 0.

      Replicate deletes output files one hour after a prediction completes: a succeeded event replayed later than that ends its job `failed` with `output_expired`.
    EOT
  }
}

# Oldest unacknowledged message per push subscription: a handler failing (retried with backoff)
# or too slow, before anything reaches the dead letters.
resource "google_monitoring_alert_policy" "unacked_age" {
  for_each              = local.subscriptions
  display_name          = "Relay: ${each.key} falling behind"
  combiner              = "OR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "oldest unacked message in ${google_pubsub_subscription.push[each.key].name} older than ${var.unacked_age_threshold_seconds} s for 5 min"
    condition_threshold {
      filter          = "metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" AND resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${google_pubsub_subscription.push[each.key].name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.unacked_age_threshold_seconds
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      **What it means.** A message on `${each.key}` has waited more than ${var.unacked_age_threshold_seconds} s for the ${each.value.push_handler} service to acknowledge it: the handler answers non-2xx (503 when Firestore, Cloud Storage, Pub/Sub or a download fails; Pub/Sub retries with ${each.value.retry_policy.minimum_backoff_seconds}-${each.value.retry_policy.maximum_backoff_seconds} s backoff), takes longer than the ${each.value.ack_deadline_seconds} s ack deadline, or cannot start or scale (bad revision, max instances, quota). After ${each.value.dead_letter.max_delivery_attempts} attempts the message goes to `${each.value.dead_letter.subscription}` (the dead-letter alert follows).

      **What to do.**
      1. The ${each.value.push_handler} service's logs: WARNING lines with `jsonPayload.outcome="retry"` and their `reason`, Google API errors, and Cloud Run's request log for 5xx, 429 and timeouts.
      2. `relay status` and `relay jobs list --stuck` show which jobs wait.
      3. Fix the cause (roll back a bad revision with `gcloud run services update-traffic ${each.value.push_handler} --to-revisions=<previous>=100`); Pub/Sub redelivers by itself.
      4. Whatever reached the dead letters meanwhile: `relay replay --from ${each.value.dead_letter.subscription}`.

      Replicate deletes output files one hour after a prediction completes; archiving later than that ends the job `failed` with `output_expired`.
    EOT
  }
}

# Threshold alerts on one metric each; they differ only in the metric, its aggregation and the
# text, so they share one resource. Thresholds are variables (variables.tf).
locals {
  metric_alerts = {
    verification_failures = {
      display_name  = "Relay: webhook verification failures spike"
      condition     = "webhooks failing verification > ${var.verification_failures_per_minute}/min over 5 min"
      filter        = "metric.type = \"workload.googleapis.com/relay.webhook.verification_failures\" AND ${local.otel_resource}"
      window        = "300s"
      aligner       = "ALIGN_RATE" # per second, summed over instances and reasons
      threshold     = var.verification_failures_per_minute / 60
      group_by      = []
      documentation = <<-EOT
        **What it means.** More than ${var.verification_failures_per_minute} webhooks a minute are refused with 401 (bad or missing signature, timestamp outside ±300 s, malformed headers); the `reason` label and the dashboard's "Verification failures by reason" chart say which. Replicate signs every webhook with your account's secret, so either the secret in Secret Manager (`${var.webhook_secret_id}`) is not Replicate's (a rotation done halfway, another account's secret), or someone is sending forged requests to the public URL (each client is answered 429 after 20 failures).

        **What to do.**
        1. The receiver's logs: `jsonPayload.outcome="rejected"` lines show `reason` and the client; Replicate's requests come from its own addresses, a probe from anywhere.
        2. If real webhooks fail, jobs stop moving: `relay status` (time since the last event) and `relay jobs list --stuck`.
        3. Compare the secret with Replicate's (`GET https://api.replicate.com/v1/webhooks/default/secret`), add a version that holds the right one (both, space-separated, during a rotation: docs/DEPLOY.md) and start new receiver instances: `gcloud run services update receiver --update-labels=rotated=$(date +%s)`.
        4. Final webhooks refused meanwhile are not lost for good: Replicate retries them for about a minute, then the reconciler recovers their jobs within `RELAY_RECONCILE_QUIET_SECONDS` (10 min).
      EOT
    }
    reconciler_recovered = {
      display_name  = "Relay: reconciler recovering jobs (webhooks lost)"
      condition     = "jobs recovered by the reconciler in 1 h > ${var.reconciler_recovered_per_hour}"
      filter        = "metric.type = \"workload.googleapis.com/relay.reconciler.recovered\" AND ${local.otel_resource}"
      window        = "3600s"
      aligner       = "ALIGN_DELTA"
      threshold     = var.reconciler_recovered_per_hour
      group_by      = []
      documentation = <<-EOT
        **What it means.** The reconciler found jobs that had been quiet for 10 minutes although Replicate had already finished their prediction, and published what Replicate knows (`source=reconciler`). Those jobs are now right, but their final webhook never reached a handler: the receiver answered 5xx or was unreachable for longer than Replicate retries (about a minute), webhooks were rejected (see the verification-failure alert), predictions were created with the wrong webhook URL or an events filter without `completed`, or job-status messages were dead-lettered.

        **What to do.**
        1. `relay jobs list --since 2h`, then `relay jobs show <job>` on a recovered one: its events show which webhooks arrived and the final one from `reconciler`.
        2. The receiver's logs: `jsonPayload.outcome="unavailable"` (503, Pub/Sub publish failed or timed out) and `"rejected"` lines; Cloud Run's request log for 5xx and 429.
        3. The submitting application: `RELAY_WEBHOOK_URL` must equal `terraform output -raw webhook_url`, and `RELAY_WEBHOOK_EVENTS` must include `completed`.
        4. `relay status` for dead-letter backlogs; replay them with `relay replay --from <dead-letter subscription>`.

        Succeeded predictions recovered more than an hour after they completed cannot be archived (`output_expired`).
      EOT
    }
    not_stored = {
      display_name  = "Relay: jobs Firestore refused as Replicate sent them"
      condition     = "job writes made without the prediction's values in 1 h > ${var.not_stored_per_hour}"
      filter        = "metric.type = \"workload.googleapis.com/relay.jobs.not_stored\" AND ${local.otel_resource}"
      window        = "3600s"
      aligner       = "ALIGN_DELTA"
      threshold     = var.not_stored_per_hour
      group_by      = []
      documentation = <<-EOT
        **What it means.** Firestore refused a job document as the prediction had it (InvalidArgument: a document over 1 MiB, too many fields or index entries, or a value the client library cannot encode). Relay keeps a prediction's input, output, error, metrics and logs as JSON text, the largest in the bucket, so this takes something else that is huge: a `model` or `version` string of megabytes, or thousands of output files. The message was acknowledged and the job written without the prediction's values, in the state Replicate reported, with `error_code` `not_stored` and Firestore's reason in `error`.

        **What to do.**
        1. `relay jobs list --since 2h` and `relay jobs show <job>`: the job's `error` names Firestore's reason.
        2. The handlers' ERROR lines (`jsonPayload.error_code="not_stored"`) carry the prediction id and the refusal.
        3. The prediction itself is still at Replicate for an hour (`GET /v1/predictions/{id}`); its archived files, if any, are in the bucket under `predictions/{id}/`.
      EOT
    }
    archive_failures = {
      display_name  = "Relay: archive failures"
      condition     = "${local.archive_service} permanent failures in 10 min > ${var.archive_failures_per_10_minutes}"
      filter        = "metric.type = \"logging.googleapis.com/user/${google_logging_metric.archive_failures.name}\" AND resource.type = \"cloud_run_revision\""
      window        = "600s"
      aligner       = "ALIGN_DELTA"
      threshold     = var.archive_failures_per_10_minutes
      group_by      = ["metric.labels.error_code", "metric.labels.reason"]
      documentation = <<-EOT
        **What it means.** The ${local.archive_service} handler ended jobs `failed` because of their outputs, or dropped a message it could not read. By `error_code`: `output_expired`, the file was gone (404/410) because Replicate deletes outputs an hour after completion and archiving came later (a handler outage or backlog, a late or recovered succeeded event); `output_refused`, the output URL is not https, not on an allowed host (`RELAY_DOWNLOAD_ALLOWED_HOSTS`, default `replicate.delivery`) or resolves to a private address; `archive_conflict`, an object of that name already holds other content. With `reason` and no `error_code`: a message dropped as undeliverable (`outcome=permanent_failure`), acknowledged and not retried.

        **What to do.**
        1. `relay jobs list --state failed --since 1h`, then `relay jobs show <job>`: the job's error, and for each output its gs:// URI or why it was not archived (for a refusal, which URL and why).
        2. The handler's ERROR lines (`severity>=ERROR` on the ${local.archive_service} service) carry the prediction id, the job id and `error_code` or `reason`.
        3. `output_expired`: find why archiving was late: the "${local.archive_service} falling behind" and dead-letter alerts, `relay status`. The files are gone at Replicate; run the prediction again if it matters.
        4. `output_refused`: a host Replicate really uses belongs in `RELAY_DOWNLOAD_ALLOWED_HOSTS`; anything else is a prediction whose output should not be fetched.
      EOT
    }
  }
}

resource "google_monitoring_alert_policy" "metric" {
  for_each              = local.metric_alerts
  display_name          = each.value.display_name
  combiner              = "OR"
  notification_channels = local.notification_channels

  conditions {
    display_name = each.value.condition
    condition_threshold {
      filter          = each.value.filter
      comparison      = "COMPARISON_GT"
      threshold_value = each.value.threshold
      duration        = "0s"
      aggregations {
        alignment_period     = each.value.window
        per_series_aligner   = each.value.aligner
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = each.value.group_by
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = each.value.documentation
  }
}
