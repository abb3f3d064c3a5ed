# Firestore (native mode), the reconciler's composite indexes and the TTL on event records,
# all from infra/firestore.indexes.json.

resource "google_firestore_database" "default" {
  name                              = "(default)"
  location_id                       = coalesce(var.firestore_location, var.region)
  type                              = "FIRESTORE_NATIVE"
  concurrency_mode                  = "PESSIMISTIC"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = var.deletion_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy                   = var.deletion_protection ? "ABANDON" : "DELETE"
  depends_on                        = [google_project_service.apis]
}

resource "google_firestore_index" "composite" {
  for_each = {
    for index in local.indexes.indexes :
    "${index.collectionGroup}:${join(",", [for f in index.fields : f.fieldPath])}" => index
  }
  database    = google_firestore_database.default.name
  collection  = each.value.collectionGroup
  query_scope = each.value.queryScope

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value.fieldPath
      order      = fields.value.order
    }
  }
}

# TTL (e.g. events.expire_at): Firestore deletes a document some time after that timestamp.
# An empty index_config drops the field's single-field indexes, as the JSON's "indexes": [] says.
resource "google_firestore_field" "ttl" {
  for_each = {
    for o in local.indexes.fieldOverrides : "${o.collectionGroup}.${o.fieldPath}" => o if try(o.ttl, false)
  }
  database   = google_firestore_database.default.name
  collection = each.value.collectionGroup
  field      = each.value.fieldPath

  ttl_config {}
  index_config {}
}

# Firestore's security rules, which apply only to Firebase's client SDKs (web and mobile apps
# calling Firestore with a Firebase Auth user, or none). Relay's services are server clients
# authenticated by IAM (iam.tf: datastore.user and datastore.viewer), which rules never apply to,
# so the rules deny everything: a later "test mode" set in the Firebase console, or a Firebase app
# added to the project, cannot open the jobs to the internet. Terraform owns the release, so a
# change made in the console is reverted at the next apply.
#
# The Firebase Rules API refuses end-user credentials without a quota project: apply as a service
# account, or with GOOGLE_BILLING_PROJECT=<project> and USER_PROJECT_OVERRIDE=true (docs/DEPLOY.md).
resource "google_firebaserules_ruleset" "firestore" {
  source {
    files {
      name    = "firestore.rules"
      content = <<-RULES
        rules_version = '2';
        service cloud.firestore {
          match /databases/{database}/documents {
            match /{document=**} {
              allow read, write: if false;
            }
          }
        }
      RULES
    }
  }

  depends_on = [google_project_service.apis, google_firestore_database.default]
}

# "cloud.firestore" is the (default) database's release (a named database's would be
# "cloud.firestore/<database>"). A ruleset cannot be changed, only replaced: a new one replaces
# the release with it.
resource "google_firebaserules_release" "firestore" {
  name         = "cloud.firestore"
  ruleset_name = "projects/${var.project_id}/rulesets/${google_firebaserules_ruleset.firestore.name}"

  lifecycle {
    replace_triggered_by = [google_firebaserules_ruleset.firestore]
  }
}
