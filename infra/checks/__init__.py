"""Offline checks of the deployment layer that run as programs (`make check-terraform`)."""
