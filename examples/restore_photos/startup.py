"""What the example's scripts answer when they cannot start: a usage, configuration or credentials error."""

from __future__ import annotations

from google.auth.exceptions import DefaultCredentialsError

from examples.restore_photos.photos import UsageError
from replicate_relay import ConfigError

# Nothing was submitted when one of these is raised: the script prints why and exits with 2.
STARTUP_ERRORS = (UsageError, ConfigError, DefaultCredentialsError)


def why_not(prog: str, error: Exception) -> str:
    """The line a script prints on stderr for one of STARTUP_ERRORS."""
    if isinstance(error, DefaultCredentialsError):
        return f"{prog}: no Google credentials ({error}); locally, export the dev stack's variables"
    return f"{prog}: {error}"
