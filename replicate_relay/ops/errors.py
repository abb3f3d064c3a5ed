"""Operator mistakes and unreachable services, each turned into one sentence and exit status 2."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions

# Defined in the one exception tree, replicate_relay/errors.py; still importable from here.
from replicate_relay.errors import OpsError as OpsError  # noqa: PLC0414 - re-export

NO_CREDENTIALS = "no Google credentials: run gcloud auth application-default login or set the *_EMULATOR_HOST variables"


@contextmanager
def google_errors(service: str, emulator_variable: str, *, timeout: float) -> Iterator[None]:
    """Turn a Google client's failure to authenticate or to reach `service` into an OpsError."""
    try:
        yield
    except auth_exceptions.DefaultCredentialsError:
        raise OpsError(NO_CREDENTIALS) from None
    except (google_exceptions.ServiceUnavailable, google_exceptions.DeadlineExceeded, google_exceptions.RetryError):
        raise OpsError(unreachable(service, emulator_variable, timeout=timeout)) from None
    except google_exceptions.PermissionDenied as error:
        raise OpsError(f"{service} refused the request: permission denied ({error.message})") from None


def unreachable(service: str, emulator_variable: str, *, timeout: float) -> str:
    host = os.environ.get(emulator_variable, "").strip()
    if host:
        return f"cannot reach the {service} emulator at {host} ({emulator_variable}) in {timeout:g} s: is it running?"
    return f"cannot reach {service} within {timeout:g} s: check the network, the project and your credentials"
