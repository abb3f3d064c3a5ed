# Applications' own pull subscriptions on job-events (var.app_pull_subscriptions), read with
# relay.consumer.JobEventsConsumer: each with a retry backoff for nacked messages, a dead-letter
# topic kept for a week, and roles/pubsub.subscriber for its app's members on it alone.

locals {
  app_subscriptions = var.app_pull_subscriptions
  app_subscribers = merge([
    for name, members in var.app_pull_subscriptions : {
      for member in members : "${name} ${member}" => { subscription = name, member = member }
    }
  ]...)
}

resource "google_pubsub_subscription" "app" {
  for_each = local.app_subscriptions
  name     = each.key
  topic    = google_pubsub_topic.topic[local.job_events_topic].id
  # Streaming pull extends the lease of a message while its callback runs; this bounds how long
  # a consumer that died holding one keeps it from everyone else.
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s" # the maximum, 7 days: an app down for days misses nothing
  retain_acked_messages      = false

  # A nacked message (the app's callback raised) comes back after a growing pause, not at once.
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.app_dead_letter[each.key].id
    max_delivery_attempts = var.app_subscription_max_delivery_attempts
  }

  expiration_policy {
    ttl = "" # never expires, however long the app stays away
  }

  depends_on = [google_pubsub_topic_iam_member.pubsub_agent_publishes_app_dead_letters]
}

resource "google_pubsub_topic" "app_dead_letter" {
  # checkov:skip=CKV_GCP_83: Google-managed encryption, as for the other topics
  for_each                   = local.app_subscriptions
  name                       = "${each.key}-dead-letter"
  message_retention_duration = "604800s"
  depends_on                 = [google_project_service.apis]
}

# Keeps what an app could not handle after every attempt, for a week, to look at and re-publish.
resource "google_pubsub_subscription" "app_dead_letter" {
  for_each                   = local.app_subscriptions
  name                       = "${each.key}-dead-letter"
  topic                      = google_pubsub_topic.app_dead_letter[each.key].id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}

# Without these Pub/Sub cannot move a message to the dead-letter topic.
resource "google_pubsub_topic_iam_member" "pubsub_agent_publishes_app_dead_letters" {
  for_each = local.app_subscriptions
  topic    = google_pubsub_topic.app_dead_letter[each.key].id
  role     = "roles/pubsub.publisher"
  member   = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_forwards_from_app" {
  for_each     = local.app_subscriptions
  subscription = google_pubsub_subscription.app[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# Each app consumes its own subscription and no other: subscriber on that subscription only.
resource "google_pubsub_subscription_iam_member" "app_consumes" {
  for_each     = local.app_subscribers
  subscription = google_pubsub_subscription.app[each.value.subscription].id
  role         = "roles/pubsub.subscriber"
  member       = each.value.member
}
