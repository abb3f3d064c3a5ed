# Applications' own subscriptions on job-events: pull subscriptions (var.app_pull_subscriptions),
# read with replicate_relay.consumer.JobEventsConsumer, and push subscriptions (var.app_event_endpoints) to
# an app's HTTPS URL, signed with an OIDC token of relay-app-push. Both kinds are one resource
# over one map, so they share everything but push_config: a retry backoff for nacked (pull) or
# non-2xx (push) deliveries, a dead-letter topic and subscription kept for a week, and the Pub/Sub
# service agent's grants to dead-letter. Pull subscribers get roles/pubsub.subscriber on their
# subscription alone; a push app needs no Pub/Sub grant at all.

locals {
  # name => its push endpoint, null for a pull subscription. A name in both variables is refused
  # by the precondition below rather than one silently replacing the other.
  app_subscriptions = merge(
    { for name, _ in var.app_pull_subscriptions : name => { push_endpoint = null } },
    { for name, url in var.app_event_endpoints : name => { push_endpoint = url } },
  )
  app_subscribers = merge([
    for name, members in var.app_pull_subscriptions : {
      for member in members : "${name} ${member}" => { subscription = name, member = member }
    }
  ]...)
  # The API's operators (RELAY_API_OPERATORS, run.tf): var.api_operators, or with none given and a
  # single app in api_invokers, that app, which so keeps reading every job as before apps were kept apart.
  api_operators = length(var.api_operators) == 0 && length(var.api_invokers) == 1 ? var.api_invokers : var.api_operators
}

# Keeps apps apart on job-events: publishers set the `app` attribute to the job's app (the e-mail
# the API authenticated, replicate_relay/jobevents.py), and a subscription named in
# var.app_subscription_apps takes only that app's messages. replicate_relay/topology.py's app_filter
# writes the same expression for the local stack (tests/unit/test_app_endpoints.py keeps them equal).

resource "google_pubsub_subscription" "app" {
  for_each = local.app_subscriptions
  name     = each.key
  topic    = google_pubsub_topic.topic[local.job_events_topic].id
  # Pull: streaming pull extends the lease of a message while its callback runs; this bounds how
  # long a consumer that died holding one keeps it from everyone else. Push: how long Pub/Sub
  # waits for the app's answer before it counts the delivery as failed.
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s" # the maximum, 7 days: an app down for days misses nothing
  retain_acked_messages      = false
  filter                     = contains(keys(var.app_subscription_apps), each.key) ? "attributes.app = \"${var.app_subscription_apps[each.key]}\"" : null

  dynamic "push_config" {
    for_each = each.value.push_endpoint == null ? [] : [each.value.push_endpoint]
    content {
      push_endpoint = push_config.value

      # The app checks the token's e-mail against this account and its audience against its own
      # URL, exactly as given (the audience Pub/Sub would default to), so a token minted for one
      # app is refused by every other.
      oidc_token {
        service_account_email = google_service_account.app_push.email
        audience              = push_config.value
      }
    }
  }

  # A nacked message (the app's callback raised) or a push the app did not answer with 2xx comes
  # back after a growing pause, not at once.
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

  lifecycle {
    precondition {
      condition = (
        length(setintersection(keys(var.app_pull_subscriptions), keys(var.app_event_endpoints))) == 0
        && length(setsubtract(keys(var.app_subscription_apps), keys(local.app_subscriptions))) == 0
      )
      error_message = "A name is in both app_pull_subscriptions and app_event_endpoints (each subscription is either pulled or pushed), or app_subscription_apps names a subscription that is in neither."
    }
  }

  depends_on = [
    google_pubsub_topic_iam_member.pubsub_agent_publishes_app_dead_letters,
    google_service_account_iam_member.pubsub_agent_mints_app_push_tokens,
  ]
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

# The API's operators read every app's jobs (api/auth.py): they call it as themselves, so they need
# run.invoker like the apps (iam.tf grants it to var.api_invokers; an operator listed there too
# keeps that one binding).
resource "google_cloud_run_v2_service_iam_member" "api_operators" {
  for_each = setsubtract(toset(var.api_operators), toset(var.api_invokers))
  name     = google_cloud_run_v2_service.service["api"].name
  location = var.region
  role     = "roles/run.invoker"
  member   = each.value
}
