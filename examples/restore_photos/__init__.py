"""Restoring a folder of old photos through Relay, and the polling worker it replaces."""
