# One service account per service, each with only what it needs, granted on the resource
# itself wherever Google allows it. Firestore has no per-database IAM, so datastore.user is
# granted on the project to the three services that read and write jobs.

locals {
  runtime_accounts = {
    receiver   = "Relay receiver: publishes verified webhooks"
    reconciler = "Relay reconciler: asks Replicate about quiet jobs"
  }
  # job-status / archive-outputs, named after the topology's push handlers
  handler_accounts = { for name, _ in local.handler_services : name => "Relay ${name} push handler" }
}

resource "google_service_account" "service" {
  for_each     = merge(local.runtime_accounts, local.handler_accounts)
  account_id   = "relay-${each.key}"
  display_name = each.value
}

resource "google_service_account" "push" {
  account_id   = "relay-push"
  display_name = "Relay Pub/Sub push identity (OIDC tokens to the handlers)"
}

resource "google_service_account" "scheduler" {
  account_id   = "relay-scheduler"
  display_name = "Relay Cloud Scheduler identity (OIDC token to the reconciler)"
}

resource "google_service_account" "deployer" {
  account_id   = "relay-deployer"
  display_name = "Relay Cloud Build deployer (cloudbuild.yaml)"
}

# ---- receiver: publish to the events topic, read its signing secret ----

resource "google_pubsub_topic_iam_member" "receiver_publishes_events" {
  topic  = google_pubsub_topic.topic[local.events_topic].id
  role   = "roles/pubsub.publisher"
  member = google_service_account.service["receiver"].member
}

resource "google_secret_manager_secret_iam_member" "receiver_reads_webhook_secret" {
  secret_id = google_secret_manager_secret.webhook.id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.service["receiver"].member
}

# ---- handlers: Firestore, the bucket (create + read back by name), announce on job-events ----

resource "google_project_iam_member" "handler_firestore" {
  for_each = local.handler_services
  project  = var.project_id
  role     = "roles/datastore.user"
  member   = google_service_account.service[each.key].member
}

resource "google_storage_bucket_iam_member" "handler_creates_objects" {
  for_each = local.handler_services
  bucket   = google_storage_bucket.outputs.name
  role     = "roles/storage.objectCreator"
  member   = google_service_account.service[each.key].member
}

resource "google_storage_bucket_iam_member" "handler_reads_objects" {
  for_each = local.handler_services
  bucket   = google_storage_bucket.outputs.name
  role     = "roles/storage.objectViewer"
  member   = google_service_account.service[each.key].member
}

resource "google_pubsub_topic_iam_member" "handler_publishes_job_events" {
  for_each = local.handler_services
  topic    = google_pubsub_topic.topic[local.job_events_topic].id
  role     = "roles/pubsub.publisher"
  member   = google_service_account.service[each.key].member
}

# ---- reconciler: Firestore, publish recovered events and aborted jobs, the Replicate token ----

resource "google_project_iam_member" "reconciler_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.service["reconciler"].member
}

resource "google_pubsub_topic_iam_member" "reconciler_publishes" {
  for_each = toset([local.events_topic, local.job_events_topic])
  topic    = google_pubsub_topic.topic[each.value].id
  role     = "roles/pubsub.publisher"
  member   = google_service_account.service["reconciler"].member
}

resource "google_secret_manager_secret_iam_member" "reconciler_reads_replicate_token" {
  secret_id = google_secret_manager_secret.replicate_token.id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.service["reconciler"].member
}

# ---- callers: Scheduler invokes the reconciler only; Pub/Sub push invokes the handlers only ----

resource "google_cloud_run_v2_service_iam_member" "scheduler_invokes_reconciler" {
  name     = google_cloud_run_v2_service.service["reconciler"].name
  location = var.region
  role     = "roles/run.invoker"
  member   = google_service_account.scheduler.member
}

resource "google_cloud_run_v2_service_iam_member" "push_invokes_handler" {
  for_each = local.handler_services
  name     = google_cloud_run_v2_service.service[each.key].name
  location = var.region
  role     = "roles/run.invoker"
  member   = google_service_account.push.member
}

# The receiver is Replicate's webhook endpoint: public by design, authenticated by signature.
resource "google_cloud_run_v2_service_iam_member" "receiver_public" {
  name     = google_cloud_run_v2_service.service["receiver"].name
  location = var.region
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# ---- Pub/Sub service agent: mint the push OIDC tokens, dead-letter undeliverable messages ----

resource "google_service_account_iam_member" "pubsub_agent_mints_push_tokens" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
  depends_on         = [google_project_service.apis]
}

resource "google_pubsub_topic_iam_member" "pubsub_agent_publishes_dead_letters" {
  for_each = local.dead_letters
  topic    = google_pubsub_topic.dead_letter[each.key].id
  role     = "roles/pubsub.publisher"
  member   = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_forwards_from_source" {
  for_each     = local.subscriptions
  subscription = google_pubsub_subscription.push[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# ---- Cloud Build deployer: push the image, deploy revisions running as the runtime accounts ----

resource "google_artifact_registry_repository_iam_member" "deployer_pushes" {
  location   = google_artifact_registry_repository.relay.location
  repository = google_artifact_registry_repository.relay.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.deployer.member
}

# run.admin rather than run.developer: `gcloud run deploy --[no-]allow-unauthenticated` reads and
# sets the services' IAM policy.
resource "google_project_iam_member" "deployer_deploys" {
  for_each = toset(["roles/run.admin", "roles/logging.logWriter"])
  project  = var.project_id
  role     = each.value
  member   = google_service_account.deployer.member
}

resource "google_service_account_iam_member" "deployer_acts_as_runtime" {
  for_each           = google_service_account.service
  service_account_id = each.value.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.deployer.member
}
