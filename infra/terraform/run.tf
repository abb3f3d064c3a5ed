# The six Cloud Run services, all from the one image; FUNCTION_SOURCE / FUNCTION_TARGET pick the
# function (Dockerfile). Cloud Build deploys new images; Terraform owns everything else.
#
# Who may reach each one is two settings: `ingress` (where requests may come from) and `public`
# (whether they need a run.invoker identity token at all; iam.tf grants allUsers only where true).

locals {
  common_env = {
    RELAY_PROJECT           = var.project_id
    RELAY_LOG_LEVEL         = var.log_level
    FUNCTION_SIGNATURE_TYPE = "http"
    # Traces to Cloud Trace, metrics to Cloud Monitoring (workload.googleapis.com/relay.*, read by
    # monitoring.tf). OTEL_SERVICE_NAME (per service, below) becomes the metrics' resource label
    # `job` (generic_task) and the traces' service name.
    RELAY_GCP_TELEMETRY = "true"
  }

  handler_env = {
    RELAY_BUCKET               = google_storage_bucket.outputs.name
    RELAY_EVENTS_TOPIC         = google_pubsub_topic.topic[local.events_topic].name
    RELAY_JOB_EVENTS_TOPIC     = google_pubsub_topic.topic[local.job_events_topic].name
    RELAY_EVENT_RETENTION_DAYS = tostring(var.event_retention_days)
  }

  # CPU allocation (cpu_idle). OpenTelemetry exports metrics every 60 s from a background thread;
  # with cpu_idle = true Cloud Run throttles the CPU outside requests, so that export waits for the
  # next request or for shutdown (SIGTERM gets CPU; the SDK flushes at exit). The metrics are
  # cumulative, so a late export loses nothing, it only arrives late. Always-allocated CPU is
  # billed for the instance's whole life (instance-based billing), including up to ~15 idle
  # minutes before Cloud Run stops it: about 50 USD a month per instance kept alive (1 vCPU).
  # - receiver: always allocated. It has a warm instance anyway (billed at the idle rate
  #   otherwise), the webhook metrics drive the verification-failure alert, and Replicate's
  #   requests do not wait for their spans to be exported (RELAY_TELEMETRY_FLUSH_EACH_REQUEST false).
  # - handlers: throttled by default. No alert waits on their metrics (dead letters and archive
  #   failures alert from Pub/Sub's own metrics and from logs), and a trickle of messages would
  #   keep an always-allocated instance billed around the clock. Set
  #   handlers_cpu_always_allocated = true once traffic is steady: busy instances cost less under
  #   instance-based billing and the dashboard is then current to the minute.
  # - reconciler: throttled. Scheduler calls it every 5 minutes, so its instance never idles long
  #   enough to stop: always-allocated CPU would bill it 24/7 for seconds of work. Its recovered
  #   count is exported during the next run at the latest, inside the alert's one-hour window.
  # - status-page: throttled. It records no metrics, and it is idle but for an operator's visit.
  handler_cpu_idle = !var.handlers_cpu_always_allocated

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
        ingress     = "INGRESS_TRAFFIC_ALL"
        public      = true
        concurrency = 80
        timeout     = 30
        min         = var.receiver_min_instances
        max         = var.max_instances
        memory      = "512Mi"
        cpu_idle    = false
        env = {
          RELAY_EVENTS_TOPIC       = google_pubsub_topic.topic[local.events_topic].name
          RELAY_TRUSTED_PROXY_HOPS = "1" # Cloud Run's front end appends one X-Forwarded-For hop
          # Webhook bodies too large for a Pub/Sub message go there (replicate_relay/bodies.py).
          RELAY_BUCKET = google_storage_bucket.outputs.name
        }
      }
      # Private, called by Cloud Scheduler every 5 minutes. One run at a time per instance and
      # one instance: runs must not overlap; its own concurrency setting bounds Replicate calls.
      reconciler = {
        source      = "handlers/main.py"
        target      = "reconcile"
        asgi        = false
        ingress     = "INGRESS_TRAFFIC_INTERNAL_ONLY" # Cloud Scheduler counts as internal
        public      = false
        concurrency = 1
        timeout     = 300
        min         = 0
        max         = 1
        memory      = "512Mi"
        cpu_idle    = true
        # The reconciler checks Scheduler's OIDC token in code too (handlers/auth.py): signed by
        # Google for its own URL (from the Host header), e-mail relay-scheduler's (scheduler.tf).
        env = merge(local.handler_env, { RELAY_RECONCILE_INVOKER = local.scheduler_email })
      }
      # Private, the operators' status page (replicate_relay/ops/statuspage.py; docs/OPERATIONS.md): read-only,
      # opened with `gcloud run services proxy status-page`, which runs on the operator's machine
      # and sends each request to the service's URL with the operator's identity token. So its
      # ingress is ALL (internal-only ingress would refuse the proxy from outside the VPC) and IAM
      # is what keeps it private: run.invoker only for var.status_page_viewers (iam.tf). Nothing
      # but the URL's existence is exposed to a caller without a token (Cloud Run answers 403).
      # One instance, billed only while a page is served: a few viewers refreshing every 10 s need
      # no more (each refresh reads Firestore and Cloud Monitoring); 4 at a
      # time (THREADS = 4, so none waits for a thread), 60 s for the 5 s-bounded API calls of a
      # refresh. 512Mi: the smallest size both Cloud Run execution environments accept.
      "status-page" = {
        source      = "replicate_relay/ops/statuspage.py"
        target      = "status_page"
        asgi        = false
        ingress     = "INGRESS_TRAFFIC_ALL"
        public      = false
        concurrency = 4
        timeout     = 60
        min         = 0
        max         = 1
        memory      = "512Mi"
        cpu_idle    = true
        # RELAY_PROJECT comes from common_env and the topology from infra/topology.yaml in the
        # image; the stuck-job threshold is the reconciler's default (RELAY_RECONCILE_QUIET_SECONDS
        # is set on neither service), so both judge "stuck" alike.
        # var.price_table: the cost estimates of relay jobs and the status page (docs/OPERATIONS.md).
        env = merge({ THREADS = "4" }, var.price_table == "" ? {} : { RELAY_PRICE_TABLE = var.price_table })
      }

      # Private, the apps' HTTP API (api/main.py, docs/API.md): submit and read jobs from any
      # language. Ingress ALL, private through IAM like the status page: an app outside Google
      # Cloud (the first user's Next.js app may run anywhere) can reach only an ALL-ingress service,
      # and an app on Cloud Run counts as internal only when its egress goes through a VPC (Direct
      # VPC egress or a connector), which Relay cannot assume. run.invoker goes to
      # var.api_invokers alone (iam.tf), and the service checks the caller's ID token itself
      # against the same list (RELAY_API_INVOKERS). Flask under gunicorn threads: each request
      # blocks on Firestore and Replicate; concurrency 8 = THREADS, 60 s covers Replicate's 30 s
      # client timeout. RELAY_WEBHOOK_URL is the receiver's deterministic URL
      # (https://SERVICE-PROJECT_NUMBER.REGION.run.app): its `uri` attribute would make the
      # for_each resource depend on itself.
      api = {
        source      = "api/main.py"
        target      = "api"
        asgi        = false
        ingress     = "INGRESS_TRAFFIC_ALL"
        public      = false
        concurrency = 8
        timeout     = 60
        min         = 0
        max         = var.max_instances
        memory      = "512Mi"
        cpu_idle    = true
        env = {
          THREADS            = "8"
          RELAY_BUCKET       = google_storage_bucket.outputs.name
          RELAY_WEBHOOK_URL  = "https://receiver-${data.google_project.this.number}.${var.region}.run.app/"
          RELAY_API_INVOKERS = join(" ", [for member in var.api_invokers : split(":", member)[1]])
          # relay verify's account reads the job it made, which no app submitted: an operator (iam.tf)
          RELAY_API_OPERATORS = join(" ", concat([for member in local.api_operators : split(":", member)[1]], [local.verifier_email]))
        }
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
        ingress     = "INGRESS_TRAFFIC_INTERNAL_ONLY" # Pub/Sub push counts as internal
        public      = false
        concurrency = 8
        timeout     = sub.ack_deadline_seconds
        min         = 0
        max         = var.max_instances
        memory      = "1Gi"
        cpu_idle    = local.handler_cpu_idle
        env = merge(
          local.handler_env,
          {
            THREADS = "8"
            # The account whose OIDC token Pub/Sub pushes with (pubsub.tf, oidc_token): the
            # handlers accept no other (RELAY_PUSH_AUTH, default oidc). The token's audience is
            # the service's own URL, which the handler derives from the Host header, so the URI
            # is not passed here (it would make each service depend on itself).
            RELAY_PUSH_SERVICE_ACCOUNT = google_service_account.push.email
          },
          # google-cloud-storage's own OpenTelemetry spans (uploads, object lookups), read when the
          # library is imported, without its background bucket-metadata fetches (replicate_relay/telemetry.py).
          # The image sets both for every service; stated here for the Storage-heavy handler so
          # its traces do not depend on the image's defaults.
          name == local.archive_service ? {
            ENABLE_GCS_PYTHON_CLIENT_OTEL_TRACES           = "true"
            DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA = "true"
          } : {},
        )
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
  # as internal traffic in the same project) and then only with a run.invoker OIDC token; the
  # status page takes them from the internet, and likewise only with a run.invoker token.
  ingress = each.value.ingress

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
        cpu_idle          = each.value.cpu_idle # see the comment on local.handler_cpu_idle
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = merge(local.common_env, each.value.env, {
          FUNCTION_SOURCE   = each.value.source
          FUNCTION_TARGET   = each.value.target
          FUNCTION_USE_ASGI = tostring(each.value.asgi)
          OTEL_SERVICE_NAME = each.key
          # Export a request's spans before answering only where the CPU is throttled after the
          # answer; with CPU always allocated the batch exporter sends them in the background.
          RELAY_TELEMETRY_FLUSH_EACH_REQUEST = tostring(each.value.cpu_idle)
        })
        content {
          name  = env.key
          value = env.value
        }
      }

      # The secrets this service reads (secrets.tf), each as one environment variable.
      dynamic "env" {
        for_each = { for key, secret in local.secrets : secret.env => google_secret_manager_secret.secret[key].secret_id if contains(secret.services, each.key) }
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = env.value
              version = "latest" # resolved when an instance starts; see docs/DEPLOY.md, rotating the secret
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
    google_secret_manager_secret_iam_member.reader,
  ]
}
