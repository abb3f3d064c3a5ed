# The archive bucket: "<project>-<topology.bucket.name_suffix>", private, objects expire.

resource "google_storage_bucket" "outputs" {
  # checkov:skip=CKV_GCP_62: reads and writes are in Cloud Audit Logs (Data Access, audit.tf), not legacy bucket access logs
  # checkov:skip=CKV_GCP_78: objects are written once under deterministic names (if_generation_match=0); soft delete covers mistakes
  name                        = local.bucket_name
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  # Objects are written once, with if_generation_match=0, under deterministic names; there is
  # nothing to version. Soft delete still protects against mistaken deletes for 7 days.
  versioning {
    enabled = false
  }

  soft_delete_policy {
    retention_duration_seconds = 604800
  }

  lifecycle_rule {
    condition {
      age = var.output_retention_days
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}
