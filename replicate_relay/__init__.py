"""Replicate Relay: Replicate predictions on Google Cloud, driven by webhooks instead of polling."""

__version__ = "0.1.0"
