# Topics, push subscriptions and dead letters, all read from infra/topology.yaml (see main.tf):
# the local stack provisions the same file on the emulator, so the two cannot drift.

resource "google_pubsub_topic" "topic" {
  # checkov:skip=CKV_GCP_83: Google-managed encryption; a CMEK key ring is a per-organisation choice, not Relay's
  for_each                   = toset(local.topology.topics)
  name                       = each.value
  message_retention_duration = "86400s" # a day of replay for new subscribers or seek
  depends_on                 = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  # checkov:skip=CKV_GCP_83: Google-managed encryption, as for the source topics
  for_each                   = local.dead_letters
  name                       = each.value.topic
  message_retention_duration = "604800s"
  depends_on                 = [google_project_service.apis]
}

# Each dead-letter topic has a pull subscription that keeps messages for `relay replay`.
resource "google_pubsub_subscription" "dead_letter" {
  for_each                   = local.dead_letters
  name                       = each.value.subscription
  topic                      = google_pubsub_topic.dead_letter[each.key].id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s" # the maximum, 7 days
  retain_acked_messages      = false

  expiration_policy {
    ttl = "" # never expires, however long it stays idle
  }
}

resource "google_pubsub_subscription" "push" {
  for_each             = local.subscriptions
  name                 = each.key
  topic                = google_pubsub_topic.topic[each.value.topic].id
  ack_deadline_seconds = each.value.ack_deadline_seconds
  filter               = try(each.value.filter, null)

  push_config {
    push_endpoint = google_cloud_run_v2_service.service[each.value.push_handler].uri

    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = google_cloud_run_v2_service.service[each.value.push_handler].uri
    }
  }

  retry_policy {
    minimum_backoff = "${each.value.retry_policy.minimum_backoff_seconds}s"
    maximum_backoff = "${each.value.retry_policy.maximum_backoff_seconds}s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter[each.key].id
    max_delivery_attempts = each.value.dead_letter.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  # Without these Pub/Sub cannot forward to the dead-letter topic (messages would retry forever).
  depends_on = [
    google_pubsub_topic_iam_member.pubsub_agent_publishes_dead_letters,
    google_service_account_iam_member.pubsub_agent_mints_push_tokens,
  ]
}
