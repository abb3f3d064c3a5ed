# The four Cloud Run services, all from the one image; FUNCTION_SOURCE / FUNCTION_TARGET pick the
# function (Dockerfile). Cloud Build deploys new images; Terraform owns everything else.

locals {
  common_env = {
    RELAY_PROJECT           = var.project_id
    RELAY_LOG_LEVEL         = var.log_level
    FUNCTION_SIGNATURE_TYPE = "http"
  }

  handler_env = {
    RELAY_BUCKET               = google_storage_bucket.outputs.name
    RELAY_EVENTS_TOPIC         = google_pubsub_topic.topic[local.events_topic].name
    RELAY_JOB_EVENTS_TOPIC     = google_pubsub_topic.topic[local.job_events_topic].name
    RELAY_EVENT_RETENTION_DAYS = tostring(var.event_retention_days)
  }

  services = merge(
    {
      # Public, Replicate's webhook endpoint. ASGI: each request mostly awaits Pub/Sub's ack, so
      # one instance serves many at once (80). 30 s timeout: the publish deadline is 5 s and
      # Replicate gives up long before. At least one warm instance: Replicate retries for only
      # about a minute, a cold start must not eat it.
      receiver = {
        source      = "receiver/main.py"
        target      = "receive"
        asgi        = true
        public      = true
        concurrency = 80
        timeout     = 30
        min         = var.receiver_min_instances
        max         = var.max_instances
        memory      = "512Mi"
        env = {
          RELAY_EVENTS_TOPIC       = google_pubsub_topic.topic[local.events_topic].name
          RELAY_TRUSTED_PROXY_HOPS = "1" # Cloud Run's front end appends one X-Forwarded-For hop
        }
        secrets = { RELAY_WEBHOOK_SECRETS = google_secret_manager_secret.webhook.secret_id }
      }
      # Private, called by Cloud Scheduler every 5 minutes. One run at a time per instance and
      # one instance: runs must not overlap; its own concurrency setting bounds Replicate calls.
      reconciler = {
        source      = "handlers/main.py"
        target      = "reconcile"
        asgi        = false
        public      = false
        concurrency = 1
        timeout     = 300
        min         = 0
        max         = 1
        memory      = "512Mi"
        env         = local.handler_env
        secrets     = { REPLICATE_API_TOKEN = google_secret_manager_secret.replicate_token.secret_id }
      }
    },
    {
      # Private, Pub/Sub push handlers (Flask under gunicorn threads: blocking Firestore and
      # Storage calls). Concurrency 8 = THREADS, so no request waits for a thread; an archive
      # streams in ~48 MiB, 8 at a time fit in 1 GiB. Timeout = the subscription's ack deadline:
      # Pub/Sub stops waiting then anyway (300 s for archive-outputs, enough to copy a large file).
      for name, sub in local.handler_services : name => {
        source      = "handlers/main.py"
        target      = replace(name, "-", "_")
        asgi        = false
        public      = false
        concurrency = 8
        timeout     = sub.ack_deadline_seconds
        min         = 0
        max         = var.max_instances
        memory      = "1Gi"
        env         = merge(local.handler_env, { THREADS = "8" })
        secrets     = {}
      }
    },
  )
}

resource "google_cloud_run_v2_service" "service" {
  for_each            = local.services
  name                = each.key
  location            = var.region
  deletion_protection = var.deletion_protection
  # Handlers and the reconciler take requests only from Pub/Sub and Cloud Scheduler (both count
  # as internal traffic in the same project) and then only with a run.invoker OIDC token.
  ingress = each.value.public ? "INGRESS_TRAFFIC_ALL" : "INGRESS_TRAFFIC_INTERNAL_ONLY"

  template {
    service_account                  = google_service_account.service[each.key].email
    max_instance_request_concurrency = each.value.concurrency
    timeout                          = "${each.value.timeout}s"

    scaling {
      min_instance_count = each.value.min
      max_instance_count = each.value.max
    }

    containers {
      image = var.image

      resources {
        limits = {
          cpu    = "1"
          memory = each.value.memory
        }
        cpu_idle          = true
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = merge(local.common_env, each.value.env, {
          FUNCTION_SOURCE   = each.value.source
          FUNCTION_TARGET   = each.value.target
          FUNCTION_USE_ASGI = tostring(each.value.asgi)
        })
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = each.value.secrets
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = env.value
              version = "latest" # resolved when an instance starts; see README, rotating the secret
            }
          }
        }
      }
    }
  }

  lifecycle {
    # cloudbuild.yaml deploys each new image with gcloud; Terraform must not roll it back.
    ignore_changes = [
      template[0].containers[0].image,
      client,
      client_version,
    ]
  }

  depends_on = [
    google_project_service.apis,
    google_secret_manager_secret_iam_member.receiver_reads_webhook_secret,
    google_secret_manager_secret_iam_member.reconciler_reads_replicate_token,
  ]
}
