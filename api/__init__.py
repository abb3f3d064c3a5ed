"""The HTTP API: submit and read jobs from apps in any language (docs/API.md)."""
