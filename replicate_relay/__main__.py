"""`relay`: the Replicate Relay command line (`python -m replicate_relay`, and the `relay` console script)."""

from __future__ import annotations

import sys


def main() -> int:
    """The command line; one sentence instead of a traceback where the `dev` extra is not installed."""
    try:
        from replicate_relay.cli import main as command_line  # noqa: PLC0415 - may need what the plain install lacks
    except ModuleNotFoundError as missing:
        if (missing.name or "").startswith("replicate_relay"):
            raise
        print(
            f"relay: the command line needs the dev extra (no module named {missing.name!r}): "
            "pip install 'replicate-relay[dev]'",
            file=sys.stderr,
        )
        return 2
    return command_line()


if __name__ == "__main__":
    sys.exit(main())
