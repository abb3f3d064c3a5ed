"""What `relay deploy` checks before it changes anything; each problem names what is missing and the fix.

All of it is read-only: gcloud's account, Terraform's version, the caller's permissions on the project
(Resource Manager's `projects.testIamPermissions`), the APIs Terraform needs before it can enable the
rest, and the Replicate token (by fetching the webhook signing secret with it).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
from replicate.client import Client as ReplicateClient
from replicate.exceptions import ReplicateError

from replicate_relay.config import ConfigError
from replicate_relay.deploy.runner import INDENT, Runner, tail
from replicate_relay.replicate_api import DEFAULT_BASE_URL
from replicate_relay.webhooks import parse_secret

TERRAFORM_INSTALL = "https://developer.hashicorp.com/terraform/install"
GCLOUD_INSTALL = "https://cloud.google.com/sdk/docs/install"
TOKEN_PAGE = "https://replicate.com/account/api-tokens"  # noqa: S105 - a web page, not a token

# gcloud has no command for projects.testIamPermissions, so the REST method is called with gcloud's
# token; the tests point this variable at a local server answering as Resource Manager does.
RESOURCE_MANAGER_URL_VARIABLE = "RELAY_RESOURCE_MANAGER_URL"
RESOURCE_MANAGER_URL = "https://cloudresourcemanager.googleapis.com"

# Enabled by hand once: Terraform needs them to read the project and to enable every other API
# (google_project_service in main.tf enables the rest, Cloud Build's and Secret Manager's included).
REQUIRED_APIS = ("cloudresourcemanager.googleapis.com", "serviceusage.googleapis.com")

# What infra/terraform creates and `relay deploy` does, as permissions on the project. roles/owner
# holds them all; editor lacks the IAM ones (setIamPolicy).
PERMISSIONS = (
    # data.google_project; google_project_iam_member (the services' and the deployer's roles)
    "resourcemanager.projects.get",
    "resourcemanager.projects.getIamPolicy",
    "resourcemanager.projects.setIamPolicy",
    # google_project_service; gcloud calls billed to the project
    "serviceusage.services.enable",
    "serviceusage.services.get",
    "serviceusage.services.list",
    "serviceusage.services.use",
    # google_service_account and its IAM members; Cloud Run and Cloud Build run as them
    "iam.serviceAccounts.create",
    "iam.serviceAccounts.get",
    "iam.serviceAccounts.getIamPolicy",
    "iam.serviceAccounts.setIamPolicy",
    "iam.serviceAccounts.actAs",
    # google_project_iam_custom_role: the deploy build's one-permission build reader
    "iam.roles.create",
    "iam.roles.get",
    # google_artifact_registry_repository and the deployer's push grant
    "artifactregistry.repositories.create",
    "artifactregistry.repositories.get",
    "artifactregistry.repositories.getIamPolicy",
    "artifactregistry.repositories.setIamPolicy",
    # google_secret_manager_secret and its readers; the versions relay deploy compares and adds
    "secretmanager.secrets.create",
    "secretmanager.secrets.get",
    "secretmanager.secrets.getIamPolicy",
    "secretmanager.secrets.setIamPolicy",
    "secretmanager.versions.list",
    "secretmanager.versions.access",
    "secretmanager.versions.add",
    # google_pubsub_topic, google_pubsub_subscription and their IAM members
    "pubsub.topics.create",
    "pubsub.topics.get",
    "pubsub.topics.getIamPolicy",
    "pubsub.topics.setIamPolicy",
    "pubsub.subscriptions.create",
    "pubsub.subscriptions.get",
    "pubsub.subscriptions.getIamPolicy",
    "pubsub.subscriptions.setIamPolicy",
    # google_storage_bucket and its IAM member; gcloud builds submit uploads the source
    "storage.buckets.create",
    "storage.buckets.get",
    "storage.buckets.getIamPolicy",
    "storage.buckets.setIamPolicy",
    "storage.objects.create",
    # google_firestore_database, google_firestore_index, google_firestore_field (the TTL policy)
    "datastore.databases.create",
    "datastore.databases.get",
    "datastore.indexes.create",
    "datastore.indexes.update",
    # google_cloud_run_v2_service and its invokers; relay deploy reads which image each runs
    "run.services.create",
    "run.services.get",
    "run.services.list",
    "run.services.update",
    "run.services.getIamPolicy",
    "run.services.setIamPolicy",
    # google_cloud_scheduler_job
    "cloudscheduler.jobs.create",
    # google_monitoring_notification_channel, _alert_policy, _dashboard; google_logging_metric
    "monitoring.notificationChannels.create",
    "monitoring.alertPolicies.create",
    "monitoring.dashboards.create",
    "logging.logMetrics.create",
    # gcloud builds submit (the CI build, then the deploy build); gcloud builds list (a CI build of the tag)
    "cloudbuild.builds.create",
    "cloudbuild.builds.get",
    "cloudbuild.builds.list",
)


@dataclass(frozen=True)
class Problem:
    """One missing prerequisite and the command or step that fixes it."""

    missing: str
    fix: str

    def __str__(self) -> str:
        return f"{self.missing} — fix: {self.fix}"


def check_gcloud(runner: Runner) -> tuple[str | None, list[Problem]]:
    """gcloud on PATH with an active account (returned), and credentials for Terraform (ADC)."""
    if shutil.which("gcloud", path=runner.environ.get("PATH")) is None:
        return None, [Problem("gcloud is not on PATH", f"install the Google Cloud CLI: {GCLOUD_INSTALL}")]
    listed = runner.run(["gcloud", "auth", "list", "--filter=status:ACTIVE", "--format=value(account)"], check=False)
    account = listed.stdout.strip().splitlines()[0] if listed.returncode == 0 and listed.stdout.strip() else None
    problems = [] if account else [Problem("gcloud has no active account", "gcloud auth login")]
    # Terraform's Google provider signs in with Application Default Credentials, not gcloud's account.
    if not any(runner.environ.get(name) for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_OAUTH_ACCESS_TOKEN")):
        adc = runner.run(
            ["gcloud", "auth", "application-default", "print-access-token"], secret_output=True, check=False
        )
        if adc.returncode != 0:
            problems.append(
                Problem("Terraform has no Application Default Credentials", "gcloud auth application-default login")
            )
    return account, problems


def check_terraform(runner: Runner, versions_tf: Path) -> tuple[str | None, list[Problem]]:
    """terraform on PATH and as recent as `required_version` in versions.tf; returns its version."""
    required = required_terraform_version(versions_tf)
    install = f"install Terraform {required}: {TERRAFORM_INSTALL}"
    if shutil.which("terraform", path=runner.environ.get("PATH")) is None:
        return None, [Problem("terraform is not on PATH", install)]
    result = runner.run(["terraform", "version", "-json"], check=False)
    try:
        version = str(json.loads(result.stdout)["terraform_version"])
    except (ValueError, KeyError, TypeError):
        return None, [Problem(f"`terraform version -json` gave no version{tail(result)}", install)]
    if not satisfies(version, required):
        return version, [Problem(f"terraform {version} is older than versions.tf requires ({required})", install)]
    return version, []


def required_terraform_version(versions_tf: Path) -> str:
    """The `required_version` constraint of infra/terraform/versions.tf, such as ">= 1.6"."""
    found = re.search(r'^\s*required_version\s*=\s*"([^"]+)"', versions_tf.read_text(encoding="utf-8"), re.MULTILINE)
    if found is None:
        raise ConfigError(f"{versions_tf} has no required_version")
    return found.group(1)


def satisfies(version: str, constraint: str) -> bool:
    """Whether `version` meets a Terraform version constraint (=, !=, >, >=, <, <=, ~>, comma-separated).

    Written here because Terraform's `~>` is not PEP 440's and the grammar is a few lines."""
    have = _numbers(version)
    for part in constraint.split(","):
        found = re.fullmatch(r"\s*(>=|<=|!=|~>|>|<|=)?\s*v?(\d+(?:\.\d+)*)\s*", part)
        if found is None:
            raise ConfigError(f"cannot read the Terraform version constraint {constraint!r}")
        operator, wanted = found.group(1) or "=", _numbers(found.group(2))
        width = max(len(have), len(wanted))
        mine, theirs = have + (0,) * (width - len(have)), wanted + (0,) * (width - len(wanted))
        if operator == "~>":
            # ~> 1.6 allows 1.x from 1.6; ~> 1.6.2 allows 1.6.x from 1.6.2: only the last given part moves.
            kept = wanted[: max(len(wanted) - 1, 1)]
            if not (mine >= theirs and have[: len(kept)] == kept):
                return False
        elif not {
            "=": mine == theirs,
            "!=": mine != theirs,
            ">": mine > theirs,
            ">=": mine >= theirs,
            "<": mine < theirs,
            "<=": mine <= theirs,
        }[operator]:
            return False
    return True


def _numbers(version: str) -> tuple[int, ...]:
    found = re.match(r"v?(\d+(?:\.\d+)*)", version.strip())
    return tuple(int(part) for part in found.group(1).split(".")) if found else (0,)


def check_permissions(runner: Runner, project: str, account: str | None) -> list[Problem]:
    """The PERMISSIONS the caller lacks on the project, by Resource Manager's testIamPermissions."""
    token = runner.run(["gcloud", "auth", "print-access-token"], secret_output=True, check=False)
    if token.returncode != 0 or not token.stdout.strip():
        return [Problem(f"gcloud gave no access token{tail(token)}", "gcloud auth login")]
    base = runner.environ.get(RESOURCE_MANAGER_URL_VARIABLE) or RESOURCE_MANAGER_URL
    url = f"{base.rstrip('/')}/v3/projects/{project}:testIamPermissions"
    print(
        f"{INDENT}POST {url}  ({len(PERMISSIONS)} permissions; token from gcloud auth print-access-token)",
        file=runner.out,
    )
    try:
        response = httpx.post(
            url,
            json={"permissions": list(PERMISSIONS)},
            headers={"Authorization": f"Bearer {token.stdout.strip()}"},
            timeout=30,
        )
    except httpx.HTTPError as error:
        return [
            Problem(f"cannot reach Resource Manager ({type(error).__name__})", f"check the network, then retry ({url})")
        ]
    if response.status_code in (403, 404):
        return [
            Problem(
                f"project {project} does not exist or {account or 'your account'} cannot see it",
                "check --project against `gcloud projects list`",
            )
        ]
    try:
        granted = set(response.json().get("permissions", [])) if response.status_code == 200 else None
    except ValueError:
        granted = None
    if granted is None:
        return [Problem(f"Resource Manager answered {response.status_code} to testIamPermissions", "retry later")]
    missing = [permission for permission in PERMISSIONS if permission not in granted]
    if not missing:
        return []
    member = f"user:{account}" if account and "gserviceaccount.com" not in account else f"serviceAccount:{account}"
    return [
        Problem(
            f"{account or 'you'} lack {len(missing)} permission(s) on {project}: {', '.join(missing)}",
            f"ask for roles/owner on the project (gcloud projects add-iam-policy-binding {project} "
            f"--member={member} --role=roles/owner)",
        )
    ]


def check_apis(runner: Runner, project: str) -> list[Problem]:
    """REQUIRED_APIS that are not enabled on the project."""
    listed = runner.run(
        ["gcloud", "services", "list", "--enabled", f"--project={project}", "--format=value(config.name)"], check=False
    )
    if listed.returncode != 0:
        return [Problem(f"cannot list the APIs enabled on {project}{tail(listed)}", "check --project and your access")]
    enabled = set(listed.stdout.split())
    missing = [api for api in REQUIRED_APIS if api not in enabled]
    if not missing:
        return []
    return [
        Problem(
            f"not enabled on {project}: {', '.join(missing)}",
            f"gcloud services enable {' '.join(missing)} --project={project}",
        )
    ]


def replicate_base_url(environ: dict[str, str]) -> str:
    """REPLICATE_BASE_URL as Replicate's client reads it, else the dev stack's RELAY_REPLICATE_BASE_URL."""
    return environ.get("REPLICATE_BASE_URL") or environ.get("RELAY_REPLICATE_BASE_URL") or DEFAULT_BASE_URL


def fetch_signing_secret(token: str, base_url: str) -> str | Problem:
    """The account's webhook signing secret (`GET /v1/webhooks/default/secret`), or why it could not be had."""
    client = ReplicateClient(api_token=token, base_url=base_url, timeout=httpx.Timeout(30.0))
    fix = f"set REPLICATE_API_TOKEN to a token from {TOKEN_PAGE}, or pass --webhook-secret-file"
    try:
        key = str(client.webhooks.default.secret().key)
    except ReplicateError as error:
        return Problem(f"Replicate refused to give the webhook signing secret ({error.status})", fix)
    except httpx.HTTPError as error:
        return Problem(
            f"cannot reach Replicate at {base_url} ({type(error).__name__})", "check the network, then retry"
        )
    finally:
        client._client.close()  # the client has no close method of its own
    return checked_secret(key, "the signing secret Replicate gave")


def read_secret_file(path: Path) -> str | Problem:
    """The signing secret in --webhook-secret-file, checked."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        return Problem(f"cannot read --webhook-secret-file {path} ({error.strerror})", "pass a readable file")
    return checked_secret(text, f"--webhook-secret-file {path}")


def checked_secret(secret: str, where: str) -> str | Problem:
    """`secret` when every space-separated whsec_ secret in it decodes; never quoted in the problem."""
    try:
        for each in secret.split() or [""]:
            parse_secret(each)
    except ConfigError as error:
        return Problem(f"{where} is not a webhook signing secret ({error.message})", "give Replicate's whsec_… secret")
    return secret
