"""`relay deploy`'s orchestration, against stand-in `gcloud` and `terraform` executables.

gcloud and terraform cannot reach Google here, so the tests put stand-ins first on PATH
(fixtures/deploy/standin.py, run by two small executables written into tmp_path) that record every
call and answer from a small world in a JSON file that their calls change as Google would (an apply
creates what its plan said, a secret version is added, a build puts its image on every service). For
the same reason a local HTTP server answers Resource Manager's projects.testIamPermissions as Google
does (RELAY_RESOURCE_MANAGER_URL points at it): the same kind of stand-in. Replicate's
`GET /v1/webhooks/default/secret` is answered by the repository's own Replicate simulator. `relay
verify` needs real Google, so each test injects a recording function in its place.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from replicate_relay.config import ConfigError
from replicate_relay.deploy import add_deploy_command, run_deploy
from replicate_relay.deploy.checks import PERMISSIONS, REQUIRED_APIS, required_terraform_version, satisfies
from replicate_relay.deploy.deployment import TITLES
from replicate_relay.deploy.runner import INDENT
from replicate_relay.simulator import SimConfig, Simulator, create_app
from replicate_relay.verify import Target
from tests.unit.test_simulator import Served

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures" / "deploy"
PROJECT = "relay-test"
REGION = "us-central1"
TAG = "abc1234"
# What the stand-in CI build pushes for TAG: the image by digest, which is what gets deployed.
IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/relay/relay@sha256:{(TAG.encode().hex() * 64)[:64]}"
SIGNING_SECRET = "whsec_" + base64.b64encode(b"deploy-test-signing-secret-32byt").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"a-secret-given-in-a-file-32bytes").decode()
API_TOKEN = "r8_deploy-test-token-never-printed"
DENIED = {"run.services.create", "resourcemanager.projects.setIamPolicy"}
ACCESS_TOKEN = "ya29.stand-in-token"  # what the stand-in gcloud prints for print-access-token
# A first deploy's changes, in order: each appears once across any number of runs.
FIRST_DEPLOY = [
    "apply phase1",
    "add relay-webhook-secrets",
    "add relay-replicate-api-token",
    "apply phase2",
    "ci build",
    "deploy build",
]


@pytest.fixture(scope="module")
def replicate_url() -> Iterator[str]:
    served = Served(create_app(Simulator(secrets=[SIGNING_SECRET], config=SimConfig(seed=1))))
    served.start()
    yield served.url
    served.stop()


@dataclass
class ResourceManager:
    """Answers POST /v3/projects/{id}:testIamPermissions as Resource Manager does: the asked permissions
    the caller holds; 403 for a project it cannot see."""

    denied: set[str] = field(default_factory=set)
    tokens: list[str] = field(default_factory=list)
    url: str = ""

    def answer(self, path: str, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.tokens.append(token)
        if path != f"/v3/projects/{PROJECT}:testIamPermissions":
            return 403, {"error": {"code": 403, "status": "PERMISSION_DENIED"}}
        granted = [permission for permission in body["permissions"] if permission not in self.denied]
        return 200, {"permissions": granted} if granted else {}


@pytest.fixture(scope="module")
def resource_manager() -> Iterator[ResourceManager]:
    state = ResourceManager()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            status, answer = state.answer(self.path, token, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Run:
    code: int
    out: str
    err: str
    verified: list[Target]


@dataclass
class World:
    """The stand-ins' world, their call log, and `relay deploy` run against them."""

    tmp: Path
    resource_manager: ResourceManager
    env: dict[str, str]
    last_calls: list[dict[str, Any]] = field(default_factory=list)  # those of the latest deploy

    @property
    def path(self) -> Path:
        return self.tmp / "world.json"

    def state(self) -> dict[str, Any]:
        return dict(json.loads(self.path.read_text()))

    def update(self, **changes: Any) -> None:
        self.path.write_text(json.dumps({**self.state(), **changes}))

    def fail(self, *match: str, times: int = 1) -> None:
        self.update(fail=[{"match": list(match), "times": times}])

    def calls(self) -> list[dict[str, Any]]:
        log = self.tmp / "calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def remove(self, tool: str) -> None:
        (self.tmp / "bin" / tool).unlink()

    def deploy(self, *flags: str, tag: str | None = TAG, verify_answer: bool = True) -> Run:
        """`relay deploy --project relay-test --region us-central1 [--tag TAG] FLAGS` in this world."""
        parser = argparse.ArgumentParser(prog="relay")
        add_deploy_command(parser.add_subparsers())
        tagged = ["--tag", tag] if tag else []
        args = parser.parse_args(["deploy", "--project", PROJECT, "--region", REGION, *tagged, *flags])
        verified: list[Target] = []

        def verify(deployed: Target, out: Any) -> bool:
            verified.append(deployed)
            print("relay verify (recorded by the test)", file=out)
            return verify_answer

        out, err = io.StringIO(), io.StringIO()
        before = len(self.calls())
        try:
            code = run_deploy(args, environ=self.env, out=out, err=err, verify=verify)
        finally:
            self.last_calls = self.calls()[before:]
        return Run(code, out.getvalue(), err.getvalue(), verified)


@pytest.fixture
def world(tmp_path: Path, replicate_url: str, resource_manager: ResourceManager) -> World:
    resource_manager.denied.clear()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gcloud", "terraform"):
        executable = bin_dir / tool
        executable.write_text(
            f"#!{sys.executable} -IS\nimport sys\nsys.path.insert(0, {str(FIXTURES)!r})\n"
            f"from standin import main\nmain({tool!r})\n"
        )
        executable.chmod(0o755)
    (tmp_path / "world.json").write_text(
        json.dumps(
            {
                "account": "deployer@example.com",
                "adc": True,
                "terraform_version": "1.9.5",
                "enabled_apis": [*REQUIRED_APIS, "storage.googleapis.com"],
                "applied": [],
                "secrets": {},
                "services": {},
                "builds": [],
                "fail": [],
            }
        )
    )
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "REPLICATE_API_TOKEN": API_TOKEN,
        "REPLICATE_BASE_URL": replicate_url,
        "RELAY_RESOURCE_MANAGER_URL": resource_manager.url,
        "RELAY_STANDIN_WORLD": str(tmp_path / "world.json"),
        "RELAY_STANDIN_LOG": str(tmp_path / "calls.jsonl"),
    }
    return World(tmp_path, resource_manager, env)


def changes(calls: list[dict[str, Any]]) -> list[str]:
    """The mutating calls among `calls`, named as in FIRST_DEPLOY."""
    named = []
    for call in calls:
        argv = call["argv"]
        if call["tool"] == "terraform" and "apply" in argv:
            named.append("apply " + Path(argv[-1]).stem)
        elif argv[:3] == ["secrets", "versions", "add"]:
            named.append(f"add {argv[3]}")
        elif argv[:2] == ["builds", "submit"]:
            named.append("ci build" if "--config=cloudbuild.ci.yaml" in argv else "deploy build")
        elif argv[:2] == ["run", "deploy"]:
            named.append(f"roll {argv[2]}")
    return named


def step_lines(out: str) -> list[str]:
    return [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("[")]


# ---- a first deploy, a second one, --plan ----------------------------------------------------------


def test_first_deploy_checks_then_provisions_adds_secrets_builds_and_verifies(world: World) -> None:
    world.resource_manager.tokens.clear()

    run = world.deploy("--alert-email", "ops@example.com")

    assert run.code == 0, run.err
    assert step_lines(run.out) == list(TITLES)
    assert world.resource_manager.tokens == [ACCESS_TOKEN]  # testIamPermissions asked with gcloud's token
    assert len(PERMISSIONS) == len(set(PERMISSIONS)) <= 100  # at most 100 per testIamPermissions call
    assert "signing secret fetched from Replicate" in run.out
    assert changes(world.last_calls) == FIRST_DEPLOY
    # nothing mutating (not even terraform init) before every check has passed
    first_init = next(i for i, call in enumerate(world.last_calls) if "init" in call["argv"])
    assert not changes(world.last_calls[:first_init])
    state = world.state()
    assert state["secrets"]["relay-webhook-secrets"] == [{"data": SIGNING_SECRET, "state": "ENABLED"}]
    assert state["secrets"]["relay-replicate-api-token"] == [{"data": API_TOKEN, "state": "ENABLED"}]
    assert set(state["services"].values()) == {IMAGE}
    assert "https://receiver-x2b4c6d8ea-uc.a.run.app" in run.out
    assert "https://api-x2b4c6d8ea-uc.a.run.app" in run.out
    assert run.verified == [
        Target(
            project=PROJECT,
            receiver_url="https://receiver-x2b4c6d8ea-uc.a.run.app",
            api_url="https://api-x2b4c6d8ea-uc.a.run.app",
            bucket="relay-test-relay-outputs",
            webhook_secret=SIGNING_SECRET,
            api_identity="relay-verify@relay-test.iam.gserviceaccount.com",
        )
    ]
    plans = [call["argv"] for call in world.last_calls if "plan" in call["argv"]]
    assert [arg for arg in plans[0] if arg.startswith("-target")] == ["-target=google_secret_manager_secret.secret"]
    for argv in plans:
        assert {f"-var=project_id={PROJECT}", f"-var=region={REGION}", "-var=alert_email=ops@example.com"} <= {*argv}
        assert '-var=verifiers=["user:deployer@example.com"]' in argv  # who deploys may run relay verify
    ci, deployed = [call["argv"][2:] for call in world.last_calls if call["argv"][:2] == ["builds", "submit"]]
    # the CI build gets the checkout; the deploy build no source at all, only the CI build to take the digest of
    assert ci == [
        "--project=relay-test",
        "--config=cloudbuild.ci.yaml",
        "--substitutions=_REGION=us-central1,_REPOSITORY=relay,_TAG=abc1234",
        ".",
    ]
    assert deployed == [
        "--project=relay-test",
        "--config=cloudbuild.yaml",
        "--no-source",
        "--substitutions=_REGION=us-central1,_REPOSITORY=relay,_CI_BUILD=projects/relay-test/locations/global/builds/00000001",
    ]


def test_second_deploy_changes_nothing(world: World) -> None:
    assert world.deploy().code == 0

    again = world.deploy()

    assert again.code == 0, again.err
    assert changes(world.last_calls) == []
    assert "no changes" in again.out
    assert "both up to date" in again.out
    assert f"every service already runs relay:{TAG}, tested, by digest" in again.out
    assert len(again.verified) == 1
    planned = world.deploy("--plan")
    assert "would run" not in planned.out
    assert "0 command(s) would change something" in planned.out


def test_plan_prints_every_change_and_makes_none(world: World) -> None:
    run = world.deploy("--plan")

    assert run.code == 0, run.err
    assert changes(world.last_calls) == []
    assert world.state()["applied"] == []
    assert world.state()["secrets"] == {}
    assert "Plan: 15 to add" in run.out  # phase 1's plan, streamed
    assert "Plan: 96 to add" in run.out  # phase 2's
    would = [line.split("would run: ", 1)[1] for line in run.out.splitlines() if "would run: " in line]
    assert [command.split()[1:3] for command in would] == [
        ["-chdir=infra/terraform", "apply"],
        ["secrets", "versions"],
        ["secrets", "versions"],
        ["-chdir=infra/terraform", "apply"],
        ["builds", "submit"],
        ["builds", "submit"],
    ]
    added = "gcloud secrets versions add relay-webhook-secrets --project=relay-test --data-file=- < (secret on stdin)"
    assert added in run.out
    assert run.verified == []
    assert "not run under --plan" in run.out
    assert "--config=cloudbuild.yaml --no-source" in would[-1]
    assert "6 command(s) would change something; nothing was changed." in run.out


# ---- resuming ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "step"),
    [
        (("terraform", "init"), 6),
        (("terraform", "apply", "phase1"), 7),
        (("secrets", "versions", "add", "relay-webhook-secrets"), 8),
        (("secrets", "versions", "add", "relay-replicate-api-token"), 8),
        (("terraform", "apply", "phase2"), 9),
        (("terraform", "output"), 8),
        (("builds", "submit", "--config=cloudbuild.ci.yaml"), 10),
        (("builds", "list"), 10),
        (("builds", "submit", "--config=cloudbuild.yaml"), 10),
    ],
)
def test_a_rerun_after_a_failed_step_resumes_without_redoing_finished_work(
    world: World, match: tuple[str, ...], step: int
) -> None:
    world.fail(*match)

    failed = world.deploy()
    first = world.last_calls
    resumed = world.deploy()

    assert failed.code == 1
    assert f"relay: deploy failed at step {step}. {TITLES[step - 1]}" in failed.err
    assert "injected failure" in failed.out + failed.err
    assert failed.verified == []
    assert resumed.code == 0, resumed.err
    attempts = changes(first) + changes(world.last_calls)
    failing = [call for call in first if all(part in " ".join([call["tool"], *call["argv"]]) for part in match)]
    for name in changes(failing):
        attempts.remove(name)  # the one attempt that failed; everything else happens exactly once
    assert attempts == FIRST_DEPLOY
    assert len(resumed.verified) == 1


def test_a_failed_verify_exits_1_naming_it_and_a_rerun_only_verifies(world: World) -> None:
    failed = world.deploy(verify_answer=False)
    again = world.deploy()

    assert failed.code == 1
    assert "step 12. relay verify" in failed.err
    assert again.code == 0
    assert changes(world.last_calls) == []


def test_no_verify_skips_it_and_says_so(world: World) -> None:
    run = world.deploy("--no-verify")

    assert run.code == 0
    assert run.verified == []
    assert "skipped (--no-verify)" in run.out


def test_a_service_on_another_image_gets_the_tested_digest_without_testing_again(world: World) -> None:
    world.deploy()
    services = world.state()["services"]
    world.update(services={**services, "api": f"{REGION}-docker.pkg.dev/{PROJECT}/relay/relay:{TAG}"})

    run = world.deploy()

    assert changes(world.last_calls) == ["deploy build"]
    assert "not yet on relay:abc1234 (relay@sha256:616263313233…): api" in run.out
    assert set(world.state()["services"].values()) == {IMAGE}


def test_a_failed_ci_build_deploys_nothing_and_a_rerun_tests_again(world: World) -> None:
    world.fail("builds", "submit", "--config=cloudbuild.ci.yaml")

    failed = world.deploy()

    assert failed.code == 1
    assert "step 10. image tested by Cloud Build, deployed by digest" in failed.err
    assert "deploy build" not in changes(world.last_calls)
    assert set(world.state()["services"].values()) == {"us-docker.pkg.dev/cloudrun/container/hello"}
    assert world.deploy().code == 0
    assert changes(world.last_calls) == ["ci build", "deploy build"]


def test_a_ci_build_recording_an_image_of_another_repository_is_refused(world: World) -> None:
    elsewhere = "evil.example/relay/relay@sha256:" + "0" * 64
    world.update(
        builds=[{"name": "projects/x/locations/global/builds/1", "tag": TAG, "status": "SUCCESS", "image": elsewhere}]
    )

    run = world.deploy()

    assert run.code == 1
    assert f"recorded {elsewhere!r}, not an image of {REGION}-docker.pkg.dev/{PROJECT}/relay/relay by digest" in run.err
    assert "deploy build" not in changes(world.last_calls)


# ---- prerequisites -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrange", "missing", "fix"),
    [
        (lambda w: w.remove("gcloud"), "gcloud is not on PATH", "install the Google Cloud CLI"),
        (lambda w: w.update(account=""), "gcloud has no active account", "gcloud auth login"),
        (
            lambda w: w.update(adc=False),
            "Terraform has no Application Default Credentials",
            "gcloud auth application-default login",
        ),
        (lambda w: w.remove("terraform"), "terraform is not on PATH", "install Terraform >= 1.6"),
        (lambda w: w.update(terraform_version="1.5.7"), "terraform 1.5.7 is older than", "install Terraform >= 1.6"),
        (
            lambda w: w.resource_manager.denied.update(DENIED),
            "lack 2 permission(s) on relay-test: resourcemanager.projects.setIamPolicy, run.services.create",
            "ask for roles/owner on the project (gcloud projects add-iam-policy-binding relay-test "
            "--member=user:deployer@example.com --role=roles/owner)",
        ),
        (
            lambda w: w.update(enabled_apis=["storage.googleapis.com"]),
            "not enabled on relay-test: cloudresourcemanager.googleapis.com, serviceusage.googleapis.com",
            f"gcloud services enable {' '.join(REQUIRED_APIS)} --project=relay-test",
        ),
        (lambda w: w.env.pop("REPLICATE_API_TOKEN"), "REPLICATE_API_TOKEN is not set", "export it"),
        (
            lambda w: w.env.update(REPLICATE_API_TOKEN=" "),
            "REPLICATE_API_TOKEN is not set",
            "https://replicate.com/account/api-tokens",
        ),
    ],
    ids=[
        "no-gcloud",
        "not-signed-in",
        "no-adc",
        "no-terraform",
        "old-terraform",
        "permissions",
        "apis",
        "no-token",
        "blank-token",
    ],
)
def test_a_missing_prerequisite_is_named_with_its_fix_and_nothing_changes(
    world: World, arrange: Any, missing: str, fix: str
) -> None:
    arrange(world)

    with pytest.raises(ConfigError) as raised:
        world.deploy()

    assert f"{missing}" in raised.value.message
    assert fix in raised.value.message
    assert "nothing was changed" in raised.value.message
    tools = {(call["tool"], call["argv"][1] if len(call["argv"]) > 1 else "") for call in world.last_calls}
    assert not any(name in {"init", "plan", "apply", "output"} for _, name in tools)
    assert changes(world.last_calls) == []


def test_a_project_the_caller_cannot_see_is_named(world: World) -> None:
    parser = argparse.ArgumentParser(prog="relay")
    add_deploy_command(parser.add_subparsers())
    args = parser.parse_args(["deploy", "--project", "someone-elses", "--region", REGION, "--tag", TAG])

    unseen = "project someone-elses does not exist or deployer@example.com cannot see it"
    with pytest.raises(ConfigError, match=re.escape(unseen)):
        run_deploy(args, environ=world.env, out=io.StringIO(), err=io.StringIO())

    assert changes(world.calls()) == []


# Versions each constraint of versions.tf's kinds accepts (True) or refuses (False).
CONSTRAINTS = {
    ">= 1.6": {"1.6.0": True, "1.5.7": False, "1.11.4": True},
    "~> 1.6": {"1.9.0": True, "2.0.0": False},
    "~> 1.6.2": {"1.6.9": True, "1.7.0": False, "1.6.1": False},
    ">= 1.6, < 1.8": {"1.8.0": False, "1.7.5": True},
    "= 1.6.0": {"1.6.0": True},
    "!= 1.6.0": {"1.6.0": False},
}


@pytest.mark.parametrize(
    ("version", "constraint", "expected"),
    [(version, constraint, ok) for constraint, cases in CONSTRAINTS.items() for version, ok in cases.items()],
)
def test_terraform_version_constraints(version: str, constraint: str, expected: bool) -> None:
    assert satisfies(version, constraint) is expected


def test_the_required_terraform_version_is_read_from_versions_tf() -> None:
    assert required_terraform_version(ROOT / "infra/terraform/versions.tf") == ">= 1.6"


# ---- the signing secret, and secrets kept out of sight ---------------------------------------------------


def test_a_webhook_secret_file_is_used_instead_of_replicate(world: World) -> None:
    secret_file = world.tmp / "secret.txt"
    secret_file.write_text(OTHER_SECRET + "\n")
    world.env["REPLICATE_BASE_URL"] = "http://127.0.0.1:9"  # fetching would fail: nothing listens there

    run = world.deploy("--webhook-secret-file", str(secret_file))

    assert run.code == 0, run.out
    assert world.state()["secrets"]["relay-webhook-secrets"][-1]["data"] == OTHER_SECRET
    assert run.verified[0].webhook_secret == OTHER_SECRET


def test_a_webhook_secret_file_without_a_secret_is_refused_without_quoting_it(world: World) -> None:
    secret_file = world.tmp / "secret.txt"
    secret_file.write_text("not-a-secret-at-all!")

    with pytest.raises(ConfigError, match="is not a webhook signing secret") as raised:
        world.deploy("--webhook-secret-file", str(secret_file))

    assert "not-a-secret-at-all" not in raised.value.message


def test_a_rotation_holding_the_secret_and_a_disabled_latest_version_are_respected(world: World) -> None:
    world.deploy()
    world.update(
        secrets={
            # mid-rotation: the latest version holds the old and the new secret: kept as it is
            "relay-webhook-secrets": [{"data": f"{OTHER_SECRET} {SIGNING_SECRET}", "state": "ENABLED"}],
            # the newest version is disabled; the latest enabled one holds an older token: a version is added
            "relay-replicate-api-token": [
                {"data": "r8_old", "state": "ENABLED"},
                {"data": API_TOKEN, "state": "DISABLED"},
            ],
        }
    )

    run = world.deploy()

    # the services reading the token start a new revision (on the image they run) to read its new version
    assert changes(world.last_calls) == ["add relay-replicate-api-token", "roll api", "roll reconciler"]
    assert run.verified[0].webhook_secret == SIGNING_SECRET
    assert set(world.state()["services"].values()) == {IMAGE}
    assert world.state()["secrets"]["relay-replicate-api-token"][-1] == {"data": API_TOKEN, "state": "ENABLED"}


def test_a_new_signing_secret_keeps_the_previous_one_until_retired_and_rolls_the_receiver(world: World) -> None:
    """Replicate's secret changed (OTHER_SECRET was the account's before): the new version holds the new one
    first and the previous one after it, so webhooks signed before still verify; --retire-old-secrets then
    writes the new one alone. Each time the receiver starts a new revision to read it."""
    world.deploy("--webhook-secret-file", str(_secret_file(world, OTHER_SECRET)))

    rotated = world.deploy()

    assert changes(world.last_calls) == ["add relay-webhook-secrets", "roll receiver"]
    assert "keeps the previous one too" in rotated.out
    assert world.state()["secrets"]["relay-webhook-secrets"][-1]["data"] == f"{SIGNING_SECRET} {OTHER_SECRET}"
    assert rotated.verified[-1].webhook_secret == SIGNING_SECRET

    world.deploy()
    assert changes(world.last_calls) == []  # nothing more until told to retire

    world.deploy("--retire-old-secrets")
    assert changes(world.last_calls) == ["add relay-webhook-secrets", "roll receiver"]
    assert world.state()["secrets"]["relay-webhook-secrets"][-1]["data"] == SIGNING_SECRET


def _secret_file(world: World, secret: str) -> Path:
    path = world.tmp / "signing-secret.txt"
    path.write_text(secret)
    return path


def test_secrets_are_never_on_a_command_line_nor_printed(world: World) -> None:
    first = world.deploy()
    world.update(secrets={"relay-webhook-secrets": [], "relay-replicate-api-token": []})
    second = world.deploy("--plan")
    secrets = [SIGNING_SECRET, API_TOKEN, ACCESS_TOKEN, "ya29.adc-stand-in-token"]

    for call in world.calls():
        assert not any(secret in arg for secret in secrets for arg in call["argv"])
    for text in (first.out, first.err, second.out, second.err):
        assert not any(secret in text for secret in secrets)
    adds = [call for call in world.calls() if call["argv"][:3] == ["secrets", "versions", "add"]]
    assert [call["stdin_chars"] for call in adds] == [len(SIGNING_SECRET), len(API_TOKEN)]
    assert "Target(" in repr(first.verified[0])
    assert SIGNING_SECRET not in repr(first.verified[0])


# ---- flags -------------------------------------------------------------------------------------------


def test_variables_and_a_var_file_reach_both_terraform_phases(world: World) -> None:
    var_file = world.tmp / "prod.tfvars"
    var_file.write_text('webhook_secret_id = "prod-webhook-secrets"\n')

    run = world.deploy("--var-file", str(var_file), "--var", "max_instances=5", "--plan")

    plans = [call["argv"] for call in world.last_calls if "plan" in call["argv"]]
    assert len(plans) == 2
    for argv in plans:
        assert f"-var-file={var_file}" in argv
        assert argv.index(f"-var-file={var_file}") < argv.index("-var=max_instances=5")
    adds = [line for line in run.out.splitlines() if "versions add" in line]
    assert "prod-webhook-secrets" in adds[0]  # the secret id follows the var file while no output names it


def test_given_verifiers_replace_the_deploying_account(world: World) -> None:
    run = world.deploy("--var", 'verifiers=["group:relay-ops@example.com"]', "--plan")

    assert run.code == 0, run.err
    plans = [call["argv"] for call in world.last_calls if "plan" in call["argv"]]
    for argv in plans:
        assert [arg for arg in argv if arg.startswith("-var=verifiers=")] == [
            '-var=verifiers=["group:relay-ops@example.com"]'
        ]


@pytest.mark.parametrize("flag", ["project_id=other", "region=europe-west1", "alert_email=a@example.com"])
def test_a_variable_with_its_own_flag_is_refused(world: World, flag: str) -> None:
    with pytest.raises(ConfigError, match="is set by --"):
        world.deploy("--var", flag)


def test_the_image_is_tagged_with_the_commit_without_tag(world: World) -> None:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    (world.tmp / "bin" / "git").symlink_to(git)
    commit = subprocess.run(  # noqa: S603 - git, found on PATH above
        [git, "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()

    run = world.deploy("--plan", tag=None)

    assert run.code == 0, run.err
    assert f"{INDENT}$ git rev-parse --short HEAD" in run.out.splitlines()
    assert f"_TAG={commit}" in run.out
