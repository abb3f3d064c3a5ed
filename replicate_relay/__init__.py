"""Replicate Relay: Replicate predictions on Google Cloud, driven by webhooks instead of polling.

The public surface is what this module exports, every name in `__all__`, and nothing else:

- `RelayClient`: submit predictions (of a model, a version or a deployment) and trainings, cancel
  them; get, wait for and watch their jobs;
- `JobEventsConsumer` (with its `ConsumerStats`): the job-events announcements of a pull
  subscription, handed to a callback as typed events;
- the models: `Job`, `JobState`, `JobEvent` (with its `AnnouncedOutput`s) and `StoredValue`;
- the errors an app catches: `JobFailed`, `JobWaitTimeout`, `JobGone`, `ClientClosed`,
  `SubmitFailed`, `JobAlreadyFinal`, `JobNotFound`, `ConfigError`, and `RelayError`, the base of
  every error Relay raises on purpose (the whole tree is drawn in replicate_relay/errors.py).

Import them from here: `from replicate_relay import RelayClient, JobEvent`. Everything else is
internal: every submodule (`replicate_relay.client`, `.jobstore`, `.telemetry`, …) and every name not
in `__all__` belongs to the Cloud Run services and the tooling in this repository, and may change in
any release. The rule: a name is public when it is in `__all__`, and only its documented behaviour is.

The names are loaded on first use (PEP 562): the services import only the submodules they need,
so `import replicate_relay` must not bring in Firestore, Pub/Sub and Replicate's clients for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from replicate_relay.client import RelayClient
    from replicate_relay.consumer import ConsumerStats, JobEventsConsumer
    from replicate_relay.errors import (
        ClientClosed,
        ConfigError,
        JobAlreadyFinal,
        JobFailed,
        JobGone,
        JobNotFound,
        JobWaitTimeout,
        RelayError,
        SubmitFailed,
    )
    from replicate_relay.jobevents import AnnouncedOutput, JobEvent
    from replicate_relay.jobs import Job, JobState
    from replicate_relay.values import StoredValue

# Each public name and the internal module that defines it.
_EXPORTS: dict[str, str] = {
    "RelayClient": "replicate_relay.client",
    "JobEventsConsumer": "replicate_relay.consumer",
    "ConsumerStats": "replicate_relay.consumer",
    "Job": "replicate_relay.jobs",
    "JobState": "replicate_relay.jobs",
    "JobEvent": "replicate_relay.jobevents",
    "AnnouncedOutput": "replicate_relay.jobevents",
    "StoredValue": "replicate_relay.values",
    "RelayError": "replicate_relay.errors",
    "JobFailed": "replicate_relay.errors",
    "JobWaitTimeout": "replicate_relay.errors",
    "JobGone": "replicate_relay.errors",
    "ClientClosed": "replicate_relay.errors",
    "SubmitFailed": "replicate_relay.errors",
    "JobAlreadyFinal": "replicate_relay.errors",
    "JobNotFound": "replicate_relay.errors",
    "ConfigError": "replicate_relay.errors",
}

__all__ = [
    "AnnouncedOutput",
    "ClientClosed",
    "ConfigError",
    "ConsumerStats",
    "Job",
    "JobAlreadyFinal",
    "JobEvent",
    "JobEventsConsumer",
    "JobFailed",
    "JobGone",
    "JobNotFound",
    "JobState",
    "JobWaitTimeout",
    "RelayClient",
    "RelayError",
    "StoredValue",
    "SubmitFailed",
    "__version__",
]

if not TYPE_CHECKING:  # mypy reads the imports above; a module __getattr__ would hide misspelt names from it

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # once loaded, a plain module attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
