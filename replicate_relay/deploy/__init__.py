"""`relay deploy`: check, provision (Terraform, both phases), add the secrets, build, deploy and verify Relay.

runner.py runs the commands and prints the steps, checks.py holds the checks made before any change,
deployment.py the steps. Registered in replicate_relay/cli.py by `add_deploy_command`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from replicate_relay.config import ConfigError
from replicate_relay.deploy.deployment import (
    TERRAFORM_DIR,
    DeployOptions,
    VerifyFunction,
    deploy,
)
from replicate_relay.errors import DeployError
from replicate_relay.verify import verify as run_verify

__all__ = [
    "DeployError",
    "DeployOptions",
    "add_deploy_command",
    "deploy",
    "options_from_args",
    "run_deploy",
]

# Set by their own flags, so that one value cannot be given two ways.
_OWN_FLAGS = {"project_id": "--project", "region": "--region", "alert_email": "--alert-email"}


def add_deploy_command(commands: argparse._SubParsersAction[Any]) -> None:
    """Register `relay deploy` on the `commands` subparsers of replicate_relay/cli.py."""
    parser = commands.add_parser(
        "deploy",
        help="deploy Relay to a Google Cloud project in one command, then verify it",
        description="Check gcloud, Terraform, your permissions and the APIs first (nothing changes unless all "
        "pass); then terraform init, phase 1 (the secret containers), the signing secret (fetched from "
        "Replicate with REPLICATE_API_TOKEN) and the token as secret versions, phase 2, the image through "
        "Cloud Build, the URLs, and `relay verify`. Each step looks at the real state first: a rerun changes "
        "nothing that is done, and resumes after a failure.",
    )
    parser.add_argument("--project", required=True, help="Google Cloud project id (Terraform's project_id)")
    parser.add_argument("--region", required=True, help="region of the services, bucket and registry")
    parser.add_argument(
        "--var",
        dest="variables",
        action="append",
        default=[],
        type=_variable,
        metavar="NAME=VALUE",
        help="a Terraform variable of infra/terraform/variables.tf, as terraform's -var; repeatable",
    )
    parser.add_argument("--var-file", type=Path, metavar="PATH", help="a .tfvars or .tfvars.json file for terraform")
    parser.add_argument("--alert-email", metavar="EMAIL", help="where alerts go (Terraform's alert_email)")
    parser.add_argument(
        "--webhook-secret-file",
        type=Path,
        metavar="PATH",
        help="the whsec_… signing secret, instead of fetching it from Replicate",
    )
    parser.add_argument(
        "--retire-old-secrets",
        action="store_true",
        help="keep only the current signing secret (after a rotation, once Replicate's retries of webhooks signed "
        "with the previous one are over)",
    )
    parser.add_argument("--tag", help="image tag (default: the checkout's short commit)")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print every command and Terraform change it would make, and make none",
    )
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="do not run `relay verify` at the end")
    parser.add_argument(
        "--source",
        type=Path,
        metavar="DIR",
        help="the Relay checkout holding infra/terraform and cloudbuild.yaml (default: this one, else the cwd)",
    )
    parser.set_defaults(command=run_deploy)


def options_from_args(args: argparse.Namespace) -> DeployOptions:
    """DeployOptions from the parsed flags; ConfigError names a flag that cannot be used."""
    for name, _ in args.variables:
        if name in _OWN_FLAGS:
            raise ConfigError(f"--var {name}=… is set by {_OWN_FLAGS[name]}")
    if args.var_file is not None and not args.var_file.is_file():
        raise ConfigError(f"--var-file {args.var_file} is not a file")
    given = {name: getattr(args, name) for name in _PASSED_THROUGH}
    return DeployOptions(root=_checkout(args.source), variables=tuple(args.variables), **given)


# The flags DeployOptions takes as they are, by the same name.
_PASSED_THROUGH = (
    "project",
    "region",
    "var_file",
    "alert_email",
    "webhook_secret_file",
    "tag",
    "plan",
    "verify",
    "retire_old_secrets",
)


def run_deploy(
    args: argparse.Namespace,
    *,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    verify: VerifyFunction = run_verify,
) -> int:
    """`relay deploy`: 0 when deployed (or planned), 1 when a step failed (named on stderr). A missing
    prerequisite or a bad flag raises ConfigError, which `relay` reports with exit status 2."""
    options = options_from_args(args)
    try:
        deploy(options, environ=os.environ if environ is None else environ, out=out or sys.stdout, verify=verify)
    except DeployError as error:
        print(
            f"relay: deploy failed at step {error.step}: {error.message}\n"
            "relay: fix it and run the same command again; the steps before it find their work done.",
            file=err or sys.stderr,
        )
        return 1
    return 0


def _variable(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _checkout(source: Path | None) -> Path:
    candidates = [source] if source is not None else [Path(__file__).resolve().parents[2], Path.cwd()]
    for candidate in candidates:
        if (candidate / TERRAFORM_DIR / "versions.tf").is_file() and (candidate / "cloudbuild.yaml").is_file():
            return candidate.resolve()
    where = source if source is not None else "this checkout or the current directory"
    raise ConfigError(f"no infra/terraform and cloudbuild.yaml in {where}: run from a Relay checkout, or pass --source")
