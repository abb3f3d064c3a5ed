# Data Access audit logs for what Relay keeps private: who read or wrote an object in the bucket
# (archived outputs, large values, large webhook bodies) and who read a secret's value. Admin
# Activity logs (IAM policies, bucket and secret settings, new secret versions) are always on and
# cannot be turned off; ADMIN_READ (reading IAM policies and settings, listing) is on by default
# and listed here so that this file states all of it.
#
# - Secret Manager DATA_READ: each access of a secret version. Cloud Run resolves the secrets when
#   an instance starts (run.tf), so a few entries per instance start.
# - Cloud Storage DATA_READ: each object read or listed (the handlers read back what they wrote on
#   redelivery, the API, the handlers and `relay jobs show` read large values back).
# - Cloud Storage DATA_WRITE: each object created, overwritten or deleted, by whom. Relay's own
#   accounts can only create (storage.objectCreator, iam.tf), so an entry for anyone else, or any
#   delete by a principal, is someone acting outside Relay; the lifecycle rule's expiry is not logged.
#
# Cost: Data Access entries go to the _Default log bucket and count as Cloud Logging ingestion
# (free up to 50 GiB a project a month, then billed per GiB). An entry is about 1-2 KiB and a job
# costs a handful: its archived outputs written and, on redelivery, read back, plus large values and
# bodies when there are any. 100,000 jobs a month at 5 entries each is about 0.5-1 GiB.
#
# A google_project_iam_audit_config owns the project's whole audit config for its service; no member
# is exempted.

locals {
  data_access_audit = {
    "storage.googleapis.com"       = ["ADMIN_READ", "DATA_READ", "DATA_WRITE"]
    "secretmanager.googleapis.com" = ["ADMIN_READ", "DATA_READ"]
  }
}

resource "google_project_iam_audit_config" "data_access" {
  for_each = local.data_access_audit
  project  = var.project_id
  service  = each.key

  dynamic "audit_log_config" {
    for_each = each.value
    content {
      log_type = audit_log_config.value
    }
  }
}
