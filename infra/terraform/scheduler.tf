# Cloud Scheduler calls the reconciler every 5 minutes with an OIDC token for its service
# account, which may invoke the reconciler and nothing else. Cloud Run's IAM checks the token
# (run.invoker, iam.tf), and so does the reconciler itself: audience its own URL, e-mail this
# account's (RELAY_RECONCILE_INVOKER, run.tf).

resource "google_cloud_scheduler_job" "reconcile" {
  name             = "relay-reconcile"
  description      = "Replicate Relay: recover predictions whose final webhook never came"
  region           = var.region
  schedule         = "*/5 * * * *"
  time_zone        = "Etc/UTC"
  attempt_deadline = "320s" # the reconciler's 300 s timeout and some slack

  retry_config {
    retry_count = 0 # the next run in 5 minutes is the retry
  }

  http_target {
    http_method = "POST"
    uri         = google_cloud_run_v2_service.service["reconciler"].uri

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloud_run_v2_service.service["reconciler"].uri
    }
  }

  depends_on = [google_project_service.apis]
}
