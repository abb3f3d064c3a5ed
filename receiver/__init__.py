"""The public endpoint: verifies Replicate's signed webhooks and hands them to Pub/Sub."""
