# Secret containers only: values are added out of band (docs/DEPLOY.md), never in state.
# Each secret is read by exactly one service, which gets it as one environment variable (run.tf)
# and is the only account allowed to access it.

locals {
  secrets = {
    webhook = {
      secret_id = var.webhook_secret_id
      service   = "receiver"
      env       = "RELAY_WEBHOOK_SECRETS"
    }
    replicate_token = {
      secret_id = var.replicate_token_secret_id
      service   = "reconciler"
      env       = "REPLICATE_API_TOKEN"
    }
  }
}

resource "google_secret_manager_secret" "secret" {
  for_each  = local.secrets
  secret_id = each.value.secret_id
  labels    = { app = "replicate-relay" }

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_iam_member" "reader" {
  for_each  = local.secrets
  secret_id = google_secret_manager_secret.secret[each.key].id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.service[each.value.service].member
}
