"""Pub/Sub push subscribers and scheduled jobs that act on `replicate-events`."""
