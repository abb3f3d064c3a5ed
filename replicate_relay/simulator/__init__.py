"""A local stand-in for Replicate's API: predictions whose lifecycle, webhooks and faults tests can steer.

Start it with `python -m replicate_relay.simulator --port P --secret whsec_...`; point the official client at it
with `replicate.Client(api_token="any", base_url="http://127.0.0.1:P")`.
"""

from __future__ import annotations

from replicate_relay.simulator.app import create_app
from replicate_relay.simulator.settings import Clock, SimConfig
from replicate_relay.simulator.state import Simulator

__all__ = ["Clock", "SimConfig", "Simulator", "create_app"]
