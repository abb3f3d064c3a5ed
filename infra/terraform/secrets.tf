# Secret containers only: values are added out of band (docs/DEPLOY.md), never in state.
# Each secret is read by the services it lists, which get it as one environment variable (run.tf)
# and are the only accounts allowed to access it: the signing secrets by the receiver, the
# Replicate token by the reconciler (GET predictions) and the API (create predictions).

locals {
  secrets = {
    webhook = {
      secret_id = var.webhook_secret_id
      services  = ["receiver"]
      env       = "RELAY_WEBHOOK_SECRETS"
    }
    replicate_token = {
      secret_id = var.replicate_token_secret_id
      services  = ["reconciler", "api"]
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

locals {
  # One grant per (secret, service reading it), keyed "secret service".
  secret_readers = {
    for pair in flatten([
      for key, secret in local.secrets : [for service in secret.services : { secret = key, service = service }]
    ]) : "${pair.secret} ${pair.service}" => pair
  }
}

resource "google_secret_manager_secret_iam_member" "reader" {
  for_each  = local.secret_readers
  secret_id = google_secret_manager_secret.secret[each.value.secret].id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.service[each.value.service].member
}

# A state whose grants are keyed by secret alone (one reader per secret) keeps them in place.
moved {
  from = google_secret_manager_secret_iam_member.reader["webhook"]
  to   = google_secret_manager_secret_iam_member.reader["webhook receiver"]
}

moved {
  from = google_secret_manager_secret_iam_member.reader["replicate_token"]
  to   = google_secret_manager_secret_iam_member.reader["replicate_token reconciler"]
}
