output "webhook_url" {
  description = "The receiver's URL: give it to Replicate as the prediction webhook (RELAY_WEBHOOK_URL)."
  value       = google_cloud_run_v2_service.service["receiver"].uri
}

output "service_urls" {
  description = "URL of every Cloud Run service, by name."
  value       = { for name, service in google_cloud_run_v2_service.service : name => service.uri }
}

output "api_url" {
  description = "The API's URL (docs/API.md): callers listed in api_invokers send ID tokens with this audience."
  value       = google_cloud_run_v2_service.service["api"].uri
}

output "bucket" {
  description = "The archive bucket (RELAY_BUCKET)."
  value       = google_storage_bucket.outputs.name
}

output "image_repository" {
  description = "Artifact Registry path images are pushed to (cloudbuild.yaml's _REGION and _REPOSITORY)."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.relay.repository_id}"
}

output "deployer_service_account" {
  description = "Service account cloudbuild.yaml (the deploy build) runs as."
  value       = google_service_account.deployer.email
}

output "webhook_secret_id" {
  description = "Secret Manager secret to add Replicate's signing secret to."
  value       = google_secret_manager_secret.secret["webhook"].secret_id
}

output "replicate_token_secret_id" {
  description = "Secret Manager secret to add the Replicate API token to."
  value       = google_secret_manager_secret.secret["replicate_token"].secret_id
}

output "status_page_command" {
  description = "Opens the private status page on http://localhost:8084 (as the dev stack does) as your gcloud account (project owner, or listed in status_page_viewers)."
  value       = "gcloud run services proxy ${google_cloud_run_v2_service.service["status-page"].name} --region=${var.region} --project=${var.project_id} --port=8084"
}

output "app_pull_subscriptions" {
  description = "Each app pull subscription on job-events, by name: the path JobEventsConsumer takes (projects/PROJECT/subscriptions/NAME)."
  value       = { for name, subscription in google_pubsub_subscription.app : name => subscription.id if length(subscription.push_config) == 0 }
}

output "app_event_push_subscriptions" {
  description = "Each app push subscription on job-events, by name: its path, the URL it pushes to, the OIDC audience the app checks, and the pull subscription keeping what the app never accepted."
  value = {
    for name, subscription in google_pubsub_subscription.app : name => {
      subscription = subscription.id
      endpoint     = one(subscription.push_config).push_endpoint
      audience     = one(one(subscription.push_config).oidc_token).audience
      dead_letter  = google_pubsub_subscription.app_dead_letter[name].id
    } if length(subscription.push_config) > 0
  }
}

output "app_event_push_service_account" {
  description = "The e-mail an app's push endpoint checks in the OIDC token (claim email, email_verified true); grant it roles/run.invoker on an app on Cloud Run that requires authentication."
  value       = google_service_account.app_push.email
}

output "verifier_service_account" {
  description = "The account `relay verify` calls the API as (--api-identity); var.verifiers may mint its ID token."
  value       = google_service_account.verifier.email
}

output "ci_service_account" {
  description = "Service account cloudbuild.ci.yaml (tests, image build and push) runs as: no role on the project."
  value       = google_service_account.ci.email
}

output "ci_logs_bucket" {
  description = "Where the CI build's logs go (cloudbuild.ci.yaml's logsBucket)."
  value       = google_storage_bucket.ci_logs.name
}
