# Inputs. Only project_id is required; the rest have production defaults.

variable "project_id" {
  description = "Google Cloud project id to deploy Relay into."
  type        = string
}

variable "region" {
  description = "Region of the Cloud Run services, the bucket, Artifact Registry and Cloud Scheduler."
  type        = string
  default     = "us-central1"
}

variable "firestore_location" {
  description = "Firestore location (a region such as us-central1, or a multi-region such as nam5). Defaults to var.region. Cannot change after creation."
  type        = string
  default     = null
}

variable "artifact_repository" {
  description = "Artifact Registry (Docker) repository the Cloud Build run pushes the image to; cloudbuild.yaml's _REPOSITORY."
  type        = string
  default     = "relay"
}

variable "image" {
  description = "Image the Cloud Run services start with. Cloud Build deploys the real image afterwards (Terraform ignores later image changes), so the public placeholder is fine for the first apply."
  type        = string
  default     = "us-docker.pkg.dev/cloudrun/container/hello"
}

variable "webhook_secret_id" {
  description = "Secret Manager secret holding Replicate's webhook signing secret(s), whsec_..., space-separated during a rotation. Value added out of band."
  type        = string
  default     = "relay-webhook-secrets"
}

variable "replicate_token_secret_id" {
  description = "Secret Manager secret holding the Replicate API token the reconciler uses. Value added out of band."
  type        = string
  default     = "relay-replicate-api-token"
}

variable "output_retention_days" {
  description = "Archived outputs are deleted from the bucket this many days after upload (lifecycle rule)."
  type        = number
  default     = 90

  validation {
    condition     = var.output_retention_days >= 1
    error_message = "output_retention_days must be at least 1."
  }
}

variable "event_retention_days" {
  description = "RELAY_EVENT_RETENTION_DAYS: per-event dedup records expire (Firestore TTL on events.expire_at) after this many days."
  type        = number
  default     = 30

  validation {
    condition     = var.event_retention_days >= 1 && var.event_retention_days <= 3650
    error_message = "event_retention_days must be between 1 and 3650."
  }
}

variable "receiver_min_instances" {
  description = "Warm receiver instances. At least 1: Replicate retries a webhook for only about a minute."
  type        = number
  default     = 1

  validation {
    condition     = var.receiver_min_instances >= 1
    error_message = "receiver_min_instances must be at least 1 (Replicate retries for only about a minute)."
  }
}

variable "max_instances" {
  description = "Upper bound of instances per receiver/handler service."
  type        = number
  default     = 20
}

variable "log_level" {
  description = "RELAY_LOG_LEVEL of every service."
  type        = string
  default     = "INFO"
}

variable "handlers_cpu_always_allocated" {
  description = "Keep CPU allocated outside requests on the push handlers (cpu_idle = false, instance-based billing), so their metrics are exported on time. Cheaper than the default once traffic is steady; see run.tf."
  type        = bool
  default     = false
}

variable "status_page_viewers" {
  description = "IAM members (user:..., group:..., serviceAccount:..., domain:...) who may open the private status-page service, with `gcloud run services proxy status-page`: roles/run.invoker on that service only. Project owners may already."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for member in var.status_page_viewers : can(regex("^(user|group|serviceAccount|domain):[^:\\s]+$", member))])
    error_message = "status_page_viewers takes user:, group:, serviceAccount: or domain: members; the status page is never public (no allUsers or allAuthenticatedUsers)."
  }
}

variable "api_invokers" {
  description = "Who may call the private api service (docs/API.md): serviceAccount:... members (an app's runtime account) or user:... (a developer trying it with an impersonated token). Each gets roles/run.invoker on that service only, and the service accepts ID tokens of exactly these e-mails (RELAY_API_INVOKERS). Empty: nobody."
  type        = list(string)
  default     = []

  validation {
    # Only members whose ID token names them: the service compares the token's e-mail, so a
    # group: or domain: member would pass Cloud Run's check and then be refused in code.
    condition     = alltrue([for member in var.api_invokers : can(regex("^(serviceAccount|user):[^:\\s@]+@[^:\\s@]+$", member))])
    error_message = "api_invokers takes serviceAccount: or user: members with an e-mail; never allUsers or allAuthenticatedUsers, and no group: or domain: (the service checks the caller's own e-mail)."
  }
}

variable "api_operators" {
  description = "Who may read every app's jobs through the api service (docs/API.md, \"Apps kept apart\"): serviceAccount:... or user:... members, e.g. an on-call engineer's user. Each gets roles/run.invoker on that service, and the service lets them read and list all jobs (RELAY_API_OPERATORS); every other caller reads only the jobs it submitted. Empty with exactly one api_invokers member: that member is the operator, so a single app reads every job as it always has."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for member in var.api_operators : can(regex("^(serviceAccount|user):[^:\\s@]+@[^:\\s@]+$", member))])
    error_message = "api_operators takes serviceAccount: or user: members with an e-mail (the service checks the caller's own e-mail)."
  }
}

variable "verifiers" {
  description = "Who may run `relay verify` against this deployment: members (user:, group:, serviceAccount:) allowed to mint relay-verify's ID token for the API. `relay deploy` adds the account it runs as when this is not given."
  type        = list(string)
  default     = []
}

variable "price_table" {
  description = "USD per second of Replicate's predict_time, by model and by deployment, as RELAY_PRICE_TABLE's JSON (docs/OPERATIONS.md): the status page then shows cost estimates. Empty: no cost shown."
  type        = string
  default     = ""
}

variable "alert_email" {
  description = "Where alerts are sent. Empty: no e-mail channel is created."
  type        = string
  default     = ""
}

variable "notification_channels" {
  description = "Ids of existing Cloud Monitoring notification channels (projects/PROJECT/notificationChannels/ID) every alert policy notifies, in addition to alert_email. Empty: the policies open incidents in the console only."
  type        = list(string)
  default     = []
}

variable "unacked_age_threshold_seconds" {
  description = "Alert when a push subscription's oldest unacknowledged message has been older than this for 5 minutes. Outputs expire at Replicate one hour after completion."
  type        = number
  default     = 900

  validation {
    condition     = var.unacked_age_threshold_seconds >= 60
    error_message = "unacked_age_threshold_seconds must be at least 60 (Pub/Sub reports the age once a minute)."
  }
}

variable "verification_failures_per_minute" {
  description = "Alert when webhooks fail signature or timestamp verification faster than this, averaged over 5 minutes."
  type        = number
  default     = 10

  validation {
    condition     = var.verification_failures_per_minute > 0
    error_message = "verification_failures_per_minute must be positive."
  }
}

variable "reconciler_recovered_per_hour" {
  description = "Alert when the reconciler recovers more jobs than this in an hour (their final webhook never arrived). 0: any recovery."
  type        = number
  default     = 0

  validation {
    condition     = var.reconciler_recovered_per_hour >= 0
    error_message = "reconciler_recovered_per_hour must not be negative."
  }
}

variable "not_stored_per_hour" {
  description = "Alert when more job writes than this in an hour are refused by Firestore and made without the prediction's values (error_code not_stored). 0: any."
  type        = number
  default     = 0

  validation {
    condition     = var.not_stored_per_hour >= 0
    error_message = "not_stored_per_hour must not be negative."
  }
}

variable "archive_failures_per_10_minutes" {
  description = "Alert when more archive-outputs messages than this end in a permanent failure (output_expired, output_refused, undecodable message, ...) within 10 minutes. 0: any."
  type        = number
  default     = 0

  validation {
    condition     = var.archive_failures_per_10_minutes >= 0
    error_message = "archive_failures_per_10_minutes must not be negative."
  }
}

variable "deletion_protection" {
  description = "Protect the Cloud Run services and the Firestore database from terraform destroy."
  type        = bool
  default     = true
}

variable "app_pull_subscriptions" {
  description = "Pull subscriptions on job-events for applications (replicate_relay.consumer.JobEventsConsumer), by subscription name, each with the IAM members (serviceAccount:..., group:..., user:...) given roles/pubsub.subscriber on that subscription alone. Each also gets a dead-letter topic and subscription named <name>-dead-letter. Empty: none."
  type        = map(list(string))
  default     = {}

  validation {
    # Pub/Sub's name rules, leaving room for the "-dead-letter" suffix; "goog" is reserved.
    condition     = alltrue([for name, _ in var.app_pull_subscriptions : can(regex("^[a-zA-Z][-a-zA-Z0-9_.~+%]{2,241}$", name)) && !startswith(lower(name), "goog")])
    error_message = "app_pull_subscriptions names start with a letter, have 3 to 242 of letters, digits and - _ . ~ + %, and do not start with goog."
  }

  validation {
    condition     = alltrue(flatten([for _, members in var.app_pull_subscriptions : [for member in members : can(regex("^(user|group|serviceAccount|domain):[^:\\s]+$", member))]]))
    error_message = "app_pull_subscriptions members are user:, group:, serviceAccount: or domain: members; never allUsers or allAuthenticatedUsers."
  }
}

variable "app_event_endpoints" {
  description = "Push subscriptions on job-events for applications, by subscription name: the app's HTTPS URL each job-events message is POSTed to, with an OIDC token signed as the relay-app-push service account (output app_event_push_service_account) for the audience of that same URL. Each also gets a dead-letter topic and subscription named <name>-dead-letter. Names must differ from app_pull_subscriptions'. Empty: none."
  type        = map(string)
  default     = {}

  validation {
    # As app_pull_subscriptions: Pub/Sub's name rules, room for "-dead-letter", no "goog".
    condition     = alltrue([for name, _ in var.app_event_endpoints : can(regex("^[a-zA-Z][-a-zA-Z0-9_.~+%]{2,241}$", name)) && !startswith(lower(name), "goog")])
    error_message = "app_event_endpoints names start with a letter, have 3 to 242 of letters, digits and - _ . ~ + %, and do not start with goog."
  }

  validation {
    # https only: the OIDC token is a bearer credential for the app, never sent in the clear. No
    # user:password@ (a credential in the subscription, readable by anyone who may view it), no
    # #fragment (never sent, so the audience would differ from what the app sees).
    condition     = alltrue([for _, url in var.app_event_endpoints : can(regex("^https://[a-zA-Z0-9.-]+(:[0-9]{1,5})?(/[^\\s#]*)?$", url))])
    error_message = "app_event_endpoints URLs are https://host[:port][/path][?query], without user info or #fragment."
  }
}

variable "app_subscription_apps" {
  description = "Which app each subscription of app_pull_subscriptions or app_event_endpoints belongs to, by subscription name: the e-mail the app calls the api with (its api_invokers member without \"serviceAccount:\"). That subscription gets the filter attributes.app = \"<e-mail>\", so it receives the job-events of that app's jobs only. A subscription not named here receives every job-event (as with a single app). Pub/Sub cannot change a subscription's filter: adding, changing or removing an entry replaces that subscription, dropping the messages it held."
  type        = map(string)
  default     = {}

  validation {
    # An e-mail: it goes between the filter's double quotes, so no quote or backslash.
    condition     = alltrue([for _, app in var.app_subscription_apps : can(regex("^[^\"\\\\\\s@:]+@[^\"\\\\\\s@:]+$", app))])
    error_message = "app_subscription_apps values are e-mails (no serviceAccount: prefix), as the api sees the caller."
  }
}

variable "app_subscription_max_delivery_attempts" {
  description = "Deliveries of a job-events message to an app subscription (its callback raising, or its push endpoint not answering 2xx, each time) before it goes to that subscription's dead-letter topic."
  type        = number
  default     = 10

  validation {
    condition     = var.app_subscription_max_delivery_attempts >= 5 && var.app_subscription_max_delivery_attempts <= 100
    error_message = "app_subscription_max_delivery_attempts must be between 5 and 100 (Pub/Sub's limits)."
  }
}

variable "ci_repository" {
  description = "Cloud Build repository (2nd gen) to test and deploy from on every push to ci_branch: projects/PROJECT/locations/REGION/connections/CONNECTION/repositories/NAME, connected once in the console or with `gcloud builds repositories create`. Empty: no trigger; `relay deploy` runs the same builds."
  type        = string
  default     = ""

  validation {
    condition     = var.ci_repository == "" || can(regex("^projects/[^/]+/locations/[^/]+/connections/[^/]+/repositories/[^/]+$", var.ci_repository))
    error_message = "ci_repository is empty or projects/PROJECT/locations/REGION/connections/CONNECTION/repositories/NAME."
  }
}

variable "ci_branch" {
  description = "The protected branch (a regular expression, as Cloud Build matches it) whose pushes are tested and deployed when ci_repository is set."
  type        = string
  default     = "^main$"
}

variable "ci_log_retention_days" {
  description = "The CI build's logs (its own bucket, PROJECT-relay-ci-logs) are deleted this many days after they are written."
  type        = number
  default     = 90

  validation {
    condition     = var.ci_log_retention_days >= 1
    error_message = "ci_log_retention_days must be at least 1."
  }
}
