"""`python -m replicate_relay.simulator --port P --secret whsec_...`: serve the Replicate simulator with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from replicate_relay.config import ConfigError
from replicate_relay.simulator.app import create_app
from replicate_relay.simulator.errors import ApiError
from replicate_relay.simulator.settings import SimConfig
from replicate_relay.simulator.state import Simulator

SECRETS_VARIABLE = "RELAY_SIM_WEBHOOK_SECRETS"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    secrets = args.secret or os.environ.get(SECRETS_VARIABLE, "").split()
    if not secrets:
        print(f"replicate_relay.simulator: pass --secret whsec_... or set {SECRETS_VARIABLE}", file=sys.stderr)
        return 2
    try:
        config = SimConfig().updated(_config_changes(args))
        simulator = Simulator(secrets=secrets, config=config)
    except ApiError as error:
        print(f"replicate_relay.simulator: invalid option: {error.detail}", file=sys.stderr)
        return 2
    except ConfigError as error:
        print(f"replicate_relay.simulator: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(
        create_app(simulator),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        lifespan="on",
        # A create request held by `Prefer: wait` must not delay a SIGTERM for a minute.
        timeout_graceful_shutdown=2,
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m replicate_relay.simulator",
        description="A local Replicate API: predictions, signed webhooks with retries and chaos, output files.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="port to listen on (default 8090)")
    parser.add_argument(
        "--secret",
        action="append",
        help=f"webhook signing secret whsec_...; repeat to sign with several (default: ${SECRETS_VARIABLE})",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    chaos = parser.add_argument_group("switches (also settable at run time with POST /_sim/config)")
    chaos.add_argument("--seed", type=int)
    for name in (
        "duplicate_probability",
        "reorder_probability",
        "reorder_delay_seconds",
        "drop_intermediate_probability",
        "file_ttl_seconds",
        "webhook_timeout_seconds",
        "throttle_seconds",
    ):
        chaos.add_argument("--" + name.replace("_", "-"), dest=name, type=float)
    chaos.add_argument("--timestamp-skew-seconds", type=int)
    chaos.add_argument("--drop-final", action="store_true", default=None, help="never send completed webhooks")
    chaos.add_argument(
        "--retry-delays",
        type=lambda raw: [float(part) for part in raw.split(",") if part.strip()],
        help="comma-separated waits in seconds between attempts of the completed webhook (default 1,2,4,8,16,30)",
    )
    return parser


def _config_changes(args: argparse.Namespace) -> dict[str, Any]:
    names = set(SimConfig().to_json())
    return {name: value for name, value in vars(args).items() if name in names and value is not None}


if __name__ == "__main__":
    raise SystemExit(main())
