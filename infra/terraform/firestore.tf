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
