# Alerts. Each policy's documentation says what it means and what to do (README, Operate).

resource "google_monitoring_notification_channel" "email" {
  count        = var.alert_email == "" ? 0 : 1
  display_name = "Replicate Relay alerts"
  type         = "email"
  labels       = { email_address = var.alert_email }
  depends_on   = [google_project_service.apis]
}

locals {
  notification_channels = google_monitoring_notification_channel.email[*].id
}

# ---- any dead-lettered message: one condition per dead-letter subscription ----

resource "google_monitoring_alert_policy" "dead_lettered" {
  display_name          = "Relay: message dead-lettered"
  combiner              = "OR"
  notification_channels = local.notification_channels

  dynamic "conditions" {
    for_each = google_pubsub_subscription.dead_letter
    content {
      display_name = "undelivered messages in ${conditions.value.name} > 0"
      condition_threshold {
        filter          = "resource.type = \"pubsub_subscription\" AND resource.label.subscription_id = \"${conditions.value.name}\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\""
        comparison      = "COMPARISON_GT"
        threshold_value = 0
        duration        = "0s"
        aggregations {
          alignment_period   = "60s"
          per_series_aligner = "ALIGN_MAX"
        }
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A handler gave up on a message after max_delivery_attempts. Look at the handler's ERROR logs for the prediction, fix the cause, then `python -m relay replay --from <dead-letter subscription>` (README, Operate)."
  }
}

# ---- oldest unacknowledged message per push subscription ----

resource "google_monitoring_alert_policy" "unacked_age" {
  display_name          = "Relay: push subscription falling behind"
  combiner              = "OR"
  notification_channels = local.notification_channels

  dynamic "conditions" {
    for_each = google_pubsub_subscription.push
    content {
      display_name = "oldest unacked message in ${conditions.value.name} > ${var.unacked_age_threshold_seconds}s"
      condition_threshold {
        filter          = "resource.type = \"pubsub_subscription\" AND resource.label.subscription_id = \"${conditions.value.name}\" AND metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\""
        comparison      = "COMPARISON_GT"
        threshold_value = var.unacked_age_threshold_seconds
        duration        = "300s"
        aggregations {
          alignment_period   = "60s"
          per_series_aligner = "ALIGN_MAX"
        }
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A handler is failing (503s, retried with backoff) or too slow. Check its logs for outcome=retry and Google API errors; outputs expire at Replicate one hour after completion."
  }
}

# ---- log-based metrics from the services' JSON logs ----

resource "google_logging_metric" "archive_failures" {
  name   = "relay/archive_failures"
  filter = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${google_cloud_run_v2_service.service[local.archive_service].name}\" AND jsonPayload.error_code:*"
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    labels {
      key        = "error_code"
      value_type = "STRING"
    }
  }
  label_extractors = { error_code = "EXTRACT(jsonPayload.error_code)" }
}

resource "google_logging_metric" "receiver_rejections" {
  name   = "relay/receiver_rejections"
  filter = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${google_cloud_run_v2_service.service["receiver"].name}\" AND jsonPayload.outcome=\"rejected\""
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    labels {
      key        = "reason"
      value_type = "STRING"
    }
  }
  label_extractors = { reason = "EXTRACT(jsonPayload.reason)" }
}

resource "google_logging_metric" "reconciler_recoveries" {
  name   = "relay/reconciler_recoveries"
  filter = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${google_cloud_run_v2_service.service["reconciler"].name}\" AND jsonPayload.recovered>0"
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
  }
}

locals {
  # The push handler whose subscription carries a filter (status = "succeeded") archives outputs.
  archive_service = one([for s in local.topology.subscriptions : s.push_handler if try(s.filter, null) != null])
}

resource "google_monitoring_alert_policy" "archive_failures" {
  display_name          = "Relay: archive failures"
  combiner              = "OR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "outputs not archived (error_code set) in 10 min > 0"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.archive_failures.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.error_code"]
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Jobs ended failed with output_expired (Replicate deleted the file before it was copied: the handler was down or backlogged for an hour) or output_refused (an output URL outside RELAY_DOWNLOAD_ALLOWED_HOSTS or on a private address: check the URL in the log line). `python -m relay jobs list --state failed`."
  }
}

resource "google_monitoring_alert_policy" "receiver_rejections" {
  display_name          = "Relay: webhook verification failures spike"
  combiner              = "OR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "receiver rejections in 5 min > 50"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.receiver_rejections.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 50
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Many webhooks were rejected (see the `reason` label). bad signature after a secret rotation: the secret in Secret Manager does not match Replicate's (GET /v1/webhooks/default/secret); timestamp: clock skew; otherwise someone is probing the public URL (the limiter answers 429)."
  }
}

resource "google_monitoring_alert_policy" "reconciler_recoveries" {
  display_name          = "Relay: reconciler recovering jobs"
  combiner              = "OR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "reconciler runs that recovered jobs in 1 h > 3"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.reconciler_recoveries.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 3
      duration        = "0s"
      aggregations {
        alignment_period     = "3600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Final webhooks are not arriving: the reconciler keeps finding predictions Replicate finished. Check the receiver's logs (rejections, 503 publish failures) and that the webhook URL given to Replicate is the webhook_url output."
  }
}
