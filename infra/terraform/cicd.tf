# Continuous delivery on Cloud Build: test and push on the protected branch as relay-ci, then deploy
# that image, by digest, as relay-deployer (the accounts and their grants: iam.tf).
#
#   push to var.ci_branch ──▶ trigger "relay-ci": cloudbuild.ci.yaml as relay-ci
#                              build → push (records image@sha256 as its step output) → make test
#   build SUCCESS ──▶ Pub/Sub "cloud-builds" ──▶ trigger "relay-deploy": cloudbuild.yaml as relay-deployer
#                              reads that CI build, checks it, deploys the digest to each service
#
# `relay deploy` runs the same two builds with `gcloud builds submit`. Without var.ci_repository
# (a Cloud Build repository connection, made once in the console or with gcloud) neither trigger
# exists; the logs bucket and the accounts still do, for `relay deploy`.

locals {
  ci_enabled = var.ci_repository != ""
  # projects/P/locations/REGION/connections/C/repositories/R: a trigger lives in its connection's region.
  ci_location = local.ci_enabled ? split("/", var.ci_repository)[3] : var.region
  # The deploy build exactly as cloudbuild.yaml states it, so that the trigger fetches no source.
  deploy_build = yamldecode(file("${path.module}/../../cloudbuild.yaml"))
}

# relay-ci's build logs (cloudbuild.ci.yaml, logsBucket): a bucket of their own, so that the account
# needs no logging role on the project. Cloud Build writes the logs as the build's account.
resource "google_storage_bucket" "ci_logs" {
  # checkov:skip=CKV_GCP_62: build logs need no access log of their own; Data Access audit logs cover reads
  # checkov:skip=CKV_GCP_78: each build writes its own log objects once; they expire below
  name                        = "${var.project_id}-relay-ci-logs"
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  versioning {
    enabled = false
  }

  lifecycle_rule {
    condition {
      age = var.ci_log_retention_days
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# Create objects (no overwrite, no delete) and read the bucket's metadata, which Cloud Build checks
# before a build starts: on this bucket only.
resource "google_storage_bucket_iam_member" "ci_writes_logs" {
  for_each = toset(["roles/storage.objectCreator", "roles/storage.legacyBucketReader"])
  bucket   = google_storage_bucket.ci_logs.name
  role     = each.value
  member   = google_service_account.ci.member
}

resource "google_cloudbuild_trigger" "ci" {
  count           = local.ci_enabled ? 1 : 0
  name            = "relay-ci"
  location        = local.ci_location
  description     = "Tests, builds and pushes Relay's image on every push to ${var.ci_branch} (cloudbuild.ci.yaml, as relay-ci)"
  filename        = "cloudbuild.ci.yaml"
  service_account = google_service_account.ci.id

  repository_event_config {
    repository = var.ci_repository
    push {
      branch = var.ci_branch
    }
  }

  substitutions = {
    _REGION     = var.region
    _REPOSITORY = google_artifact_registry_repository.relay.repository_id
    _TAG        = "$SHORT_SHA"
  }

  depends_on = [google_artifact_registry_repository_iam_member.ci_pushes, google_storage_bucket_iam_member.ci_writes_logs]
}

# Cloud Build publishes every build's status changes to the topic named cloud-builds, when it exists.
resource "google_pubsub_topic" "cloud_builds" {
  # checkov:skip=CKV_GCP_83: build status messages hold no secret; Google-managed encryption suffices
  count = local.ci_enabled ? 1 : 0
  name  = "cloud-builds"

  depends_on = [google_project_service.apis]
}

resource "google_cloudbuild_trigger" "deploy" {
  count           = local.ci_enabled ? 1 : 0
  name            = "relay-deploy"
  location        = local.ci_location
  description     = "Deploys the digest a successful relay-ci build pushed (cloudbuild.yaml, as relay-deployer)"
  service_account = google_service_account.deployer.id

  pubsub_config {
    topic = google_pubsub_topic.cloud_builds[0].id
  }

  # The message's data is the Build resource; only a successful build of the CI trigger deploys.
  substitutions = {
    _REGION     = var.region
    _REPOSITORY = google_artifact_registry_repository.relay.repository_id
    _CI_BUILD   = "$(body.message.data.name)"
    _CI_STATUS  = "$(body.message.data.status)"
    _CI_TRIGGER = "$(body.message.data.buildTriggerId)"
  }
  filter = "_CI_STATUS == \"SUCCESS\" && _CI_TRIGGER == \"${google_cloudbuild_trigger.ci[0].trigger_id}\""

  build {
    timeout = local.deploy_build.timeout
    dynamic "step" {
      for_each = local.deploy_build.steps
      content {
        id         = step.value.id
        name       = step.value.name
        entrypoint = step.value.entrypoint
        args       = step.value.args
        wait_for   = try(step.value.waitFor, null)
      }
    }
    substitutions = { for name, value in local.deploy_build.substitutions : name => value if !contains(["_REGION", "_REPOSITORY", "_CI_BUILD"], name) }
    options {
      logging = local.deploy_build.options.logging
      # _CI_STATUS and _CI_TRIGGER serve the filter only; the steps do not name them.
      substitution_option = "ALLOW_LOOSE"
    }
  }

  depends_on = [google_project_iam_member.deployer_deploys, google_service_account_iam_member.deployer_acts_as_runtime]
}
