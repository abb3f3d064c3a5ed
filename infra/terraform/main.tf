# The one topology (infra/topology.yaml) and Firestore index file (infra/firestore.indexes.json)
# that the local stack also reads: nothing here repeats a topic, subscription or bucket name.

locals {
  topology = yamldecode(file("${path.module}/../topology.yaml"))
  indexes  = jsondecode(file("${path.module}/../firestore.indexes.json"))

  subscriptions = { for s in local.topology.subscriptions : s.name => s }
  dead_letters  = { for s in local.topology.subscriptions : s.name => s.dead_letter }

  # The topic webhooks are published to is the one the push subscriptions read; job-events is
  # the other topic. one() fails the plan if the topology ever grows past that shape.
  events_topic     = one(distinct([for s in local.topology.subscriptions : s.topic]))
  job_events_topic = one([for t in local.topology.topics : t if t != local.events_topic])

  # Handler services are named by push_handler; their function is the same name in snake case.
  handler_services = { for s in local.topology.subscriptions : s.push_handler => s }
  # The push handler whose subscription carries a filter (status = "succeeded") archives outputs.
  archive_service = one([for s in local.topology.subscriptions : s.push_handler if try(s.filter, null) != null])

  bucket_name = "${var.project_id}-${local.topology.bucket.name_suffix}"

  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

data "google_project" "this" {
  project_id = var.project_id
}

resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudscheduler.googleapis.com",
    # Spans go to the Telemetry API (replicate_relay/telemetry.py), which drops them unless Cloud Trace's API
    # is enabled too; `relay trace --gcp` reads them back through Cloud Trace's API.
    "cloudtrace.googleapis.com",
    # Firestore's security rules (firestore.tf: deny all to Firebase's client SDKs).
    "firebaserules.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
    "telemetry.googleapis.com",
  ])
  service            = each.value
  disable_on_destroy = false
}

resource "google_artifact_registry_repository" "relay" {
  # checkov:skip=CKV_GCP_84: the image holds public code only; Google-managed encryption suffices
  location      = var.region
  repository_id = var.artifact_repository
  format        = "DOCKER"
  description   = "Replicate Relay images, pushed by cloudbuild.yaml"


  depends_on = [google_project_service.apis]
}
