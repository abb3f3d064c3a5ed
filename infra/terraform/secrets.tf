# Secret containers only: values are added out of band (README, Deploy), never in state.

resource "google_secret_manager_secret" "webhook" {
  secret_id = var.webhook_secret_id
  labels    = { app = "replicate-relay" }

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret" "replicate_token" {
  secret_id = var.replicate_token_secret_id
  labels    = { app = "replicate-relay" }

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}
