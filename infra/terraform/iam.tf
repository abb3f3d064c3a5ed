# One service account per service, each with only what it needs, granted on the resource
# itself wherever Google allows it. Project-level grants are the exceptions Google leaves no
# narrower scope for: Firestore has no per-database IAM, and the Telemetry API (traces) and Cloud
# Monitoring take writes per project.

locals {
  # Known at plan time (the account's e-mail is computed only once it exists).
  verifier_email = "relay-verify@${var.project_id}.iam.gserviceaccount.com"
  # The reconciler's one caller (RELAY_RECONCILE_INVOKER, run.tf): the account below.
  scheduler_email = "relay-scheduler@${var.project_id}.iam.gserviceaccount.com"

  runtime_accounts = {
    receiver      = "Relay receiver: publishes verified webhooks"
    reconciler    = "Relay reconciler: asks Replicate about quiet jobs"
    "status-page" = "Relay status page: reads jobs and metrics, writes nothing"
    api           = "Relay API: submits predictions and reads jobs for apps"
  }
  # job-status / archive-outputs, named after the topology's push handlers
  handler_accounts = { for name, _ in local.handler_services : name => "Relay ${name} push handler" }
  service_accounts = merge(local.runtime_accounts, local.handler_accounts)

  # Every account exports traces and metrics (RELAY_GCP_TELEMETRY, run.tf); those that keep jobs
  # in Firestore also get datastore.user. Spans go through the Telemetry API (telemetry.traces.write
  # only; cloudtrace.agent would add the Cloud Trace API's write, which nothing uses),
  # metrics to Cloud Monitoring.
  telemetry_roles = ["roles/telemetry.tracesWriter", "roles/monitoring.metricWriter"]
  # The API writes jobs and idempotency keys; it publishes nothing (a submission Replicate refuses
  # is announced by the reconciler).
  firestore_users = concat(keys(local.handler_services), ["reconciler", "api"])
  # The status page only reads: jobs in Firestore (counts by state, stuck jobs, the latest) and,
  # in Cloud Monitoring (time series), every subscription's backlog, dead letters included, and
  # the receiver's verification failures. It holds nothing on Pub/Sub (below).
  status_page_roles = ["roles/datastore.viewer", "roles/monitoring.viewer"]
  project_grants = merge(
    {
      for pair in setproduct(keys(local.service_accounts), local.telemetry_roles) :
      "${pair[0]} ${pair[1]}" => { account = pair[0], role = pair[1] }
    },
    {
      for account in local.firestore_users :
      "${account} roles/datastore.user" => { account = account, role = "roles/datastore.user" }
    },
    { for role in local.status_page_roles : "status-page ${role}" => { account = "status-page", role = role } },
  )

  # Who publishes where: the receiver and the reconciler into the events topic, the handlers and
  # the reconciler (jobs it aborts) announce on job-events.
  topic_publishers = merge(
    { "receiver ${local.events_topic}" = { account = "receiver", topic = local.events_topic } },
    { for topic in [local.events_topic, local.job_events_topic] : "reconciler ${topic}" => { account = "reconciler", topic = topic } },
    { for name in keys(local.handler_services) : "${name} ${local.job_events_topic}" => { account = name, topic = local.job_events_topic } },
  )

  # Handlers write outputs under deterministic names and read them back by name on redelivery.
  # Handlers and the API also keep there the prediction values too large for a job document
  # (jobs/{job_id}/…, replicate_relay/values.py): the API writes a large input at submit and reads values back.
  # The receiver and the reconciler store event bodies too large for a Pub/Sub message
  # (bodies/…, replicate_relay/bodies.py), which the handlers read back.
  bucket_roles = merge(
    {
      for pair in setproduct(concat(keys(local.handler_services), ["api"]), ["roles/storage.objectCreator", "roles/storage.objectViewer"]) :
      "${pair[0]} ${pair[1]}" => { account = pair[0], role = pair[1] }
    },
    { for account in ["receiver", "reconciler"] : "${account} roles/storage.objectCreator" => { account = account, role = "roles/storage.objectCreator" } },
  )
}

resource "google_service_account" "service" {
  for_each     = local.service_accounts
  account_id   = "relay-${each.key}"
  display_name = each.value
}

resource "google_service_account" "push" {
  account_id   = "relay-push"
  display_name = "Relay Pub/Sub push identity (OIDC tokens to the handlers)"
}

# Signs the OIDC token of every push to an app (var.app_event_endpoints, apps.tf), apart from
# relay-push: apps check the token's e-mail against this account, which holds no grant anywhere,
# so granting it run.invoker on an app's Cloud Run service lets Pub/Sub into that app without
# letting it into Relay's handlers, and the handlers refuse tokens of this account.
resource "google_service_account" "app_push" {
  account_id   = "relay-app-push"
  display_name = "Relay Pub/Sub push identity for apps (OIDC tokens on job-events pushes)"
}

resource "google_service_account" "scheduler" {
  account_id   = "relay-scheduler"
  display_name = "Relay Cloud Scheduler identity (OIDC token to the reconciler)"
}

# `relay verify`'s caller of the API: its only grant is run.invoker on the api (below), and the
# service lists it among its operators, RELAY_API_OPERATORS (run.tf): the job `relay verify`
# makes is no app's, so only an operator may read it. The members of var.verifiers may impersonate it
# (gcloud's --impersonate-service-account takes an access token before the ID token, so the role is
# Token Creator, not the ID-token-only one); the account can do nothing but read jobs through the API.
resource "google_service_account" "verifier" {
  account_id   = "relay-verify"
  display_name = "Relay verify: calls the API for relay verify's check"
}

resource "google_service_account_iam_member" "verifier_token_creators" {
  for_each           = toset(var.verifiers)
  service_account_id = google_service_account.verifier.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = each.value
}

resource "google_service_account" "deployer" {
  account_id   = "relay-deployer"
  display_name = "Relay Cloud Build deployer (cloudbuild.yaml)"
}

# ---- runtime accounts: project roles, topics, the bucket (secrets: secrets.tf) ----

resource "google_project_iam_member" "service" {
  for_each = local.project_grants
  project  = var.project_id
  role     = each.value.role
  member   = google_service_account.service[each.value.account].member
}

resource "google_pubsub_topic_iam_member" "service_publishes" {
  for_each = local.topic_publishers
  topic    = google_pubsub_topic.topic[each.value.topic].id
  role     = "roles/pubsub.publisher"
  member   = google_service_account.service[each.value.account].member
}

resource "google_storage_bucket_iam_member" "handler_objects" {
  for_each = local.bucket_roles
  bucket   = google_storage_bucket.outputs.name
  role     = each.value.role
  member   = google_service_account.service[each.value.account].member
}

# The status page holds no role on any subscription: it reads the dead-letter backlogs, like the
# push ones, from Cloud Monitoring (monitoring.viewer, above). A role that can pull (subscriber)
# can also acknowledge, which would delete the only copies kept for `relay replay`.

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

# Operators open the status page through `gcloud run services proxy`, as themselves: the only
# callers it has. Project owners may invoke it already; anyone else is listed here.
resource "google_cloud_run_v2_service_iam_member" "status_page_viewers" {
  for_each = toset(var.status_page_viewers)
  name     = google_cloud_run_v2_service.service["status-page"].name
  location = var.region
  role     = "roles/run.invoker"
  member   = each.value
}

# The apps that call the API (docs/API.md), as themselves: its only callers. The service checks
# each caller's ID token against the same list (RELAY_API_INVOKERS, run.tf).
resource "google_cloud_run_v2_service_iam_member" "api_invokers" {
  for_each = toset(var.api_invokers)
  name     = google_cloud_run_v2_service.service["api"].name
  location = var.region
  role     = "roles/run.invoker"
  member   = each.value
}

resource "google_cloud_run_v2_service_iam_member" "verifier_invokes_api" {
  name     = google_cloud_run_v2_service.service["api"].name
  location = var.region
  role     = "roles/run.invoker"
  member   = google_service_account.verifier.member
}

# The services marked public in run.tf, that is the receiver alone: Replicate's webhook endpoint,
# public by design, authenticated by signature.
resource "google_cloud_run_v2_service_iam_member" "receiver_public" {
  for_each = toset([for name, service in local.services : name if service.public])
  name     = google_cloud_run_v2_service.service[each.key].name
  location = var.region
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# A state that holds the receiver's grant as a single resource keeps it in place, not re-created.
moved {
  from = google_cloud_run_v2_service_iam_member.receiver_public
  to   = google_cloud_run_v2_service_iam_member.receiver_public["receiver"]
}

# ---- Pub/Sub service agent: mint the push OIDC tokens, dead-letter undeliverable messages ----

resource "google_service_account_iam_member" "pubsub_agent_mints_push_tokens" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
  depends_on         = [google_project_service.apis]
}

resource "google_service_account_iam_member" "pubsub_agent_mints_app_push_tokens" {
  service_account_id = google_service_account.app_push.name
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

# ---- Cloud Build: relay-ci tests and pushes, relay-deployer deploys (cicd.tf: the builds' triggers) ----
#
# relay-ci runs cloudbuild.ci.yaml, which runs third-party code (PyPI, Debian and npm packages in
# `make test`): it holds no role on the project. It writes its build logs into its own bucket
# (cicd.tf) and pushes images into the Relay repository, both granted on that resource alone.
# relay-deployer runs cloudbuild.yaml, which runs gcloud only: it reads the CI build it was given
# (the digest that build recorded before its tests ran), then deploys that digest to each service
# as that service's own runtime account.

resource "google_service_account" "ci" {
  account_id   = "relay-ci"
  display_name = "Relay Cloud Build tests, builds and pushes the image (cloudbuild.ci.yaml)"
}

resource "google_artifact_registry_repository_iam_member" "ci_pushes" {
  location   = google_artifact_registry_repository.relay.location
  repository = google_artifact_registry_repository.relay.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.ci.member
}

# Deploying needs no access to the repository: Cloud Run's service agent pulls the image.
# run.developer deploys revisions but cannot change a service's IAM policy (invokers are this
# module's, above), so the build sets no --[no-]allow-unauthenticated. logWriter: its build logs
# (CLOUD_LOGGING_ONLY). The custom role reads one build: the CI build whose digest it deploys.
resource "google_project_iam_member" "deployer_deploys" {
  for_each = toset(["roles/run.developer", "roles/logging.logWriter", google_project_iam_custom_role.build_reader.name])
  project  = var.project_id
  role     = each.value
  member   = google_service_account.deployer.member
}

resource "google_project_iam_custom_role" "build_reader" {
  role_id     = "relayBuildReader"
  title       = "Relay build reader"
  description = "Reads a Cloud Build build (its status, account and step outputs): how the deploy build finds the digest a CI build pushed."
  permissions = ["cloudbuild.builds.get"]
}

# actAs on the six runtime accounts only: the accounts its revisions run as. Not on relay-ci,
# relay-push, relay-scheduler or relay-verify.
resource "google_service_account_iam_member" "deployer_acts_as_runtime" {
  for_each           = google_service_account.service
  service_account_id = each.value.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.deployer.member
}
