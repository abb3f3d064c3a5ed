"""The steps of `relay deploy`, each of which looks at the real state first, so that a rerun resumes.

No local state is kept: Terraform's plan says whether an apply is needed, Secret Manager's latest enabled
version whether a secret version is, Cloud Build's successful CI builds whether this commit's image was
tested and pushed, and the image each Cloud Run service runs whether that digest is deployed.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from replicate_relay.config import ConfigError
from replicate_relay.deploy import checks
from replicate_relay.deploy.runner import INDENT, Runner, StepNote, Steps
from replicate_relay.devstack.terraform_env import local_computed, service_environments
from replicate_relay.errors import DeployError, OpsError
from replicate_relay.verify import Target
from replicate_relay.verify import verify as run_verify

TERRAFORM_DIR = Path("infra/terraform")
PHASE_ONE_TARGET = "google_secret_manager_secret.secret"

TITLES = (
    "gcloud installed and signed in",
    "Terraform installed and recent enough",
    "your permissions on the project",
    "the APIs Terraform needs first",
    "Replicate token and webhook signing secret",
    "terraform init",
    "Terraform phase 1: the secret containers",
    "secret versions: signing secret and API token",
    "Terraform phase 2: everything else",
    "image tested by Cloud Build, deployed by digest",
    "webhook and API URLs",
    "relay verify",
)
CHECKS = 5  # the first steps only read; nothing is changed unless all of them pass


@dataclass(frozen=True)
class DeployOptions:
    """What `relay deploy`'s flags say."""

    project: str
    region: str
    root: Path  # the checkout holding infra/terraform and cloudbuild.yaml
    variables: tuple[tuple[str, str], ...] = ()  # --var NAME=VALUE, in order
    var_file: Path | None = None
    alert_email: str | None = None
    webhook_secret_file: Path | None = None
    tag: str | None = None
    plan: bool = False
    verify: bool = True
    retire_old_secrets: bool = False  # the signing secret alone, once the previous one is no longer needed


VerifyFunction = Callable[[Target, TextIO], bool]


def deploy(
    options: DeployOptions,
    *,
    environ: Mapping[str, str],
    out: TextIO,
    verify: VerifyFunction = run_verify,
) -> None:
    """Run every step, printing the numbered list. Raises OpsError (a ConfigError) when a prerequisite
    is missing, before anything changed; DeployError naming the step when one fails."""
    env = {**environ, "TF_IN_AUTOMATION": "1", "TF_INPUT": "0"}
    runner = Runner(out, plan=options.plan, cwd=options.root, environ=env)
    steps = Steps(out, TITLES)
    mode = "--plan: prints what it would change and changes nothing" if options.plan else "deploying"
    print(f"relay deploy: project {options.project}, region {options.region} ({mode})", file=out, flush=True)
    if options.plan:
        print(
            "  Read-only calls still run: the checks, terraform init (local files only), terraform plan, "
            "reading secret versions and services.",
            file=out,
        )
    try:
        account, webhook_secret, token = _checks(options, runner, steps)
        variables = _variable_args(options, account)
        _terraform_and_release(
            options, runner, steps, variables, webhook_secret=webhook_secret, token=token, verify=verify
        )
    finally:
        steps.summary()
    if options.plan:
        print(f"\n{len(runner.would_run)} command(s) would change something; nothing was changed.", file=out)


def _checks(options: DeployOptions, runner: Runner, steps: Steps) -> tuple[str, str, str]:
    """The signed-in account, the signing secret and the token, once every check passed."""
    problems: list[checks.Problem] = []

    def report(note: StepNote, found: list[checks.Problem], summary: str) -> None:
        problems.extend(found)
        note.problems = [str(problem) for problem in found]
        note.summary = summary

    with steps.step(TITLES[0]) as note:
        account, found = checks.check_gcloud(runner)
        report(note, found, f"signed in as {account}" if account else "")
    with steps.step(TITLES[1]) as note:
        version, found = checks.check_terraform(runner, options.root / TERRAFORM_DIR / "versions.tf")
        report(note, found, f"terraform {version}" if version else "")
    signed_in = account is not None
    with steps.step(TITLES[2]) as note:
        if signed_in:
            report(note, checks.check_permissions(runner, options.project, account), "all granted")
        else:
            note.skipped, note.summary = True, "needs gcloud signed in"
    with steps.step(TITLES[3]) as note:
        if signed_in:
            report(note, checks.check_apis(runner, options.project), ", ".join(checks.REQUIRED_APIS) + " enabled")
        else:
            note.skipped, note.summary = True, "needs gcloud signed in"
    with steps.step(TITLES[4]) as note:
        token = runner.environ.get("REPLICATE_API_TOKEN", "").strip()
        secret: str | checks.Problem
        if not token:
            secret = checks.Problem("REPLICATE_API_TOKEN is not set", f"export it (a token from {checks.TOKEN_PAGE})")
        elif options.webhook_secret_file is not None:
            secret = checks.read_secret_file(options.webhook_secret_file)
        else:
            base_url = checks.replicate_base_url(runner.environ)
            print(f"{INDENT}GET {base_url}/v1/webhooks/default/secret", file=runner.out, flush=True)
            secret = checks.fetch_signing_secret(token, base_url)
        source = "from --webhook-secret-file" if options.webhook_secret_file else "fetched from Replicate"
        report(note, [secret] if isinstance(secret, checks.Problem) else [], f"token set; signing secret {source}")
    if problems:
        raise OpsError(
            f"{len(problems)} prerequisite(s) missing, nothing was changed:\n"
            + "\n".join(f"  - {problem}" for problem in problems)
        )
    assert isinstance(secret, str)  # noqa: S101 - a Problem was reported above
    assert account is not None  # noqa: S101 - likewise
    return account, secret, token


def _terraform_and_release(
    options: DeployOptions,
    runner: Runner,
    steps: Steps,
    variables: list[str],
    *,
    webhook_secret: str,
    token: str,
    verify: VerifyFunction,
) -> None:
    chdir = f"-chdir={TERRAFORM_DIR}"
    with steps.step(TITLES[5]) as note:
        runner.run(["terraform", chdir, "init", "-input=false", "-no-color"], stream=True)
        note.summary = "providers ready (infra/terraform/.terraform)"
    with tempfile.TemporaryDirectory(prefix="relay-deploy-") as plans:
        with steps.step(TITLES[6]) as note:
            _apply(runner, chdir, [f"-target={PHASE_ONE_TARGET}", *variables], Path(plans) / "phase1.tfplan", note)
        with steps.step(TITLES[7]) as note:
            outputs = _outputs(runner, chdir)
            ids = [
                (_value(options, outputs, "webhook_secret_id"), webhook_secret, True),
                (_value(options, outputs, "replicate_token_secret_id"), token, False),
            ]
            added = [
                secret_id
                for secret_id, value, rotation in ids
                if _put_secret(
                    runner, options.project, secret_id, value, rotation=rotation, retire=options.retire_old_secrets
                )
            ]
            verb = "would add" if runner.plan else "added"
            note.summary = f"{verb} a version to {', '.join(added)}" if added else "both up to date"
        with steps.step(TITLES[8]) as note:
            _apply(runner, chdir, variables, Path(plans) / "phase2.tfplan", note)
    with steps.step(TITLES[9]) as note:
        outputs = _outputs(runner, chdir)
        _release(options, runner, outputs, note, changed_secrets=added)
    with steps.step(TITLES[10]) as note:
        if "webhook_url" not in outputs:
            note.skipped, note.summary = True, "known after the apply"
        else:
            print(
                f"{INDENT}webhook URL  {outputs['webhook_url']}   (Replicate's webhook=…, RELAY_WEBHOOK_URL)",
                file=runner.out,
            )
            print(f"{INDENT}API URL      {outputs['api_url']}", file=runner.out)
            note.summary = str(outputs["webhook_url"])
    with steps.step(TITLES[11]) as note:
        if options.plan:
            note.skipped, note.summary = True, "not run under --plan"
        elif not options.verify:
            note.skipped, note.summary = True, "skipped (--no-verify); run `relay verify` to check the deployment"
        else:
            deployed = Target(
                receiver_url=str(outputs["webhook_url"]),
                api_url=str(outputs["api_url"]),
                project=options.project,
                bucket=str(outputs["bucket"]),
                webhook_secret=webhook_secret.split(maxsplit=1)[0],
                api_identity=outputs.get("verifier_service_account"),
            )
            if not verify(deployed, runner.out):
                raise DeployError("relay verify failed (its checklist above names the hop and how to look)")
            note.summary = "every hop answered"


def _variable_args(options: DeployOptions, account: str) -> list[str]:
    """Terraform's -var-file and -var flags; later ones win, so the explicit flags come last. Unless
    `verifiers` is given, the account running the deploy becomes the one that may run `relay verify`."""
    args = [f"-var-file={options.var_file.resolve()}"] if options.var_file else []
    args += [f"-var=project_id={options.project}", f"-var=region={options.region}"]
    if options.alert_email is not None:
        args.append(f"-var=alert_email={options.alert_email}")
    given = {name for name, _ in options.variables}
    in_file = options.var_file is not None and "verifiers" in options.var_file.read_text(encoding="utf-8")
    if "verifiers" not in given and not in_file:
        kind = "serviceAccount" if account.endswith(".gserviceaccount.com") else "user"
        args.append(f'-var=verifiers=["{kind}:{account}"]')
    return args + [f"-var={name}={value}" for name, value in options.variables]


def _apply(runner: Runner, chdir: str, args: list[str], plan_file: Path, note: StepNote) -> None:
    """terraform plan, then apply exactly that plan when it has changes."""
    planned = runner.run(
        ["terraform", chdir, "plan", "-input=false", "-no-color", "-detailed-exitcode", f"-out={plan_file}", *args],
        stream=True,
        check=False,
    )
    if planned.returncode == 0:
        note.summary = "no changes"
        return
    if planned.returncode != 2:
        raise DeployError(f"terraform plan exited {planned.returncode} (its output is above)")
    runner.run(["terraform", chdir, "apply", "-input=false", "-no-color", str(plan_file)], mutating=True, stream=True)
    note.summary = "would apply the changes above" if runner.plan else "applied"


def _outputs(runner: Runner, chdir: str) -> dict[str, Any]:
    """`terraform output -json` as {name: value}; empty before the first apply."""
    result = runner.run(["terraform", chdir, "output", "-json"], check=not runner.plan)
    try:
        document = json.loads(result.stdout or "{}")
    except ValueError:
        raise DeployError("terraform output -json is not JSON") from None
    return {name: output.get("value") for name, output in document.items() if isinstance(output, dict)}


def _value(options: DeployOptions, outputs: Mapping[str, Any], name: str) -> str:
    """A Terraform output, else the variable of that name: --var, --var-file, then variables.tf's default."""
    if isinstance(outputs.get(name), str):
        return str(outputs[name])
    for given, value in reversed(options.variables):
        if given == name:
            return value
    if options.var_file is not None:
        text = options.var_file.read_text(encoding="utf-8")
        if options.var_file.name.endswith(".json"):
            value = json.loads(text).get(name)
            if isinstance(value, str):
                return value
        elif found := re.search(rf'^\s*{name}\s*=\s*"([^"]*)"', text, re.MULTILINE):
            return found.group(1)
    variables = (options.root / TERRAFORM_DIR / "variables.tf").read_text(encoding="utf-8")
    block = re.search(rf'variable "{name}" {{(.*?)\n}}', variables, re.DOTALL)
    default = re.search(r'^\s*default\s*=\s*"([^"]*)"', block.group(1), re.MULTILINE) if block else None
    if default is None:
        raise ConfigError(f"no value for {name}: pass --var {name}=…")
    return default.group(1)


def _put_secret(runner: Runner, project: str, secret_id: str, value: str, *, rotation: bool, retire: bool) -> bool:
    """Add a version of `secret_id` unless the latest enabled one already holds what it should. True when a
    version is (or would be) added.

    For the signing secrets (`rotation`), a version holds the current secret first, then the one before
    it, space-separated, as the receiver reads them: when Replicate's secret changes, the new version
    keeps the previous secret too, so webhooks Replicate signed before and retries later still verify.
    With `retire`, the version holds the current secret alone."""
    listed = runner.run(
        [
            "gcloud", "secrets", "versions", "list", secret_id, f"--project={project}",
            "--filter=state:ENABLED", "--sort-by=~createTime", "--limit=1", "--format=value(name.basename())",
        ],
        check=not runner.plan,
    )  # fmt: skip
    current: str | None = None
    if listed.returncode != 0:
        print(f"{INDENT}(cannot read {secret_id} yet: phase 1 creates it)", file=runner.out)
    elif version := listed.stdout.strip():
        accessed = runner.run(
            [
                "gcloud", "secrets", "versions", "access", version, f"--secret={secret_id}", f"--project={project}",
                "--format=get(payload.data)",
            ],
            secret_output=True,
        )  # fmt: skip
        current = _decoded(accessed.stdout.strip(), secret_id)
    wanted = _wanted_secret(value, current, rotation=rotation, retire=retire)
    if wanted is None:
        print(f"{INDENT}{secret_id}: version {version} already holds it", file=runner.out)
        return False
    if rotation and current is not None and len(wanted.split()) > 1:
        print(
            f"{INDENT}{secret_id}: the signing secret changed; the new version keeps the previous one too",
            file=runner.out,
        )
    runner.run(
        ["gcloud", "secrets", "versions", "add", secret_id, f"--project={project}", "--data-file=-"],
        mutating=True,
        stdin=wanted,
    )
    return True


def _wanted_secret(value: str, current: str | None, *, rotation: bool, retire: bool) -> str | None:
    """What the next version of a secret should hold, or None when the current one is right."""
    if current is None:
        return value
    if not rotation:
        return None if current == value else value
    held = current.split()
    if retire:
        return None if held == [value] else value
    if value in held:  # up to date, or a rotation list someone wrote: kept as it is
        return None
    return f"{value} {held[0]}"


def _decoded(payload: str, secret_id: str) -> str:
    """gcloud's payload.data: URL-safe base64."""
    try:
        return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        raise DeployError(f"the latest version of {secret_id} did not decode as text") from None


def _release(
    options: DeployOptions, runner: Runner, outputs: Mapping[str, Any], note: StepNote, *, changed_secrets: list[str]
) -> None:
    """The CI build of this tag (cloudbuild.ci.yaml, as relay-ci: build, push, test), unless one already
    succeeded; then the deploy build (cloudbuild.yaml, as relay-deployer) of the digest that build pushed,
    unless every Cloud Run service runs it already. Then the services reading a secret that got a new
    version start a new revision, since an instance reads a secret's `latest` version when it starts (a
    deploy build deploys every service, which does the same)."""
    tag = options.tag or _commit_tag(runner)
    repository = outputs.get("image_repository") or (
        f"{options.region}-docker.pkg.dev/{options.project}/{_value(options, outputs, 'artifact_repository')}"
    )
    substitutions = f"_REGION={options.region},_REPOSITORY={str(repository).rsplit('/', 1)[-1]}"
    tested = _tested_build(runner, options, tag, f"{repository}/relay@sha256:")
    if tested is None:
        runner.run(
            ["gcloud", "builds", "submit", f"--project={options.project}", "--config=cloudbuild.ci.yaml",
             f"--substitutions={substitutions},_TAG={tag}", "."],
            mutating=True,
            stream=True,
        )  # fmt: skip
        tested = None if runner.plan else _tested_build(runner, options, tag, f"{repository}/relay@sha256:")
        if tested is None and not runner.plan:
            raise DeployError(
                f"the CI build of relay:{tag} succeeded, yet no successful CI build of it records an image"
            )
    build, image = tested or ("(the CI build above)", "")
    services = sorted(outputs.get("service_urls") or {})
    running = _running_images(runner, options) if services and tested else {}
    stale = [service for service in services if running.get(service) != image]
    if services and tested and not stale:
        note.summary = f"every service already runs relay:{tag}, tested, by digest ({_short(image)})"
        rolled = _roll_secret_readers(options, runner, image, changed_secrets)
        if rolled:
            verb = "would start" if runner.plan else "started"
            note.summary += f"; {verb} new revisions of {', '.join(rolled)} for the new secret versions"
        return
    if services and tested:
        print(f"{INDENT}not yet on relay:{tag} ({_short(image)}): {', '.join(stale)}", file=runner.out)
    runner.run(
        ["gcloud", "builds", "submit", f"--project={options.project}", "--config=cloudbuild.yaml", "--no-source",
         f"--substitutions={substitutions},_CI_BUILD={build}"],
        mutating=True,
        stream=True,
    )  # fmt: skip
    if tested is None:  # --plan, before the CI build: its digest is not known yet
        note.summary = f"would test relay:{tag}, then deploy the digest its CI build records"
    else:
        verb = "would deploy" if runner.plan else "deployed"
        note.summary = f"{verb} relay:{tag}, tested, by digest ({_short(image)})"


def _tested_build(runner: Runner, options: DeployOptions, tag: str, prefix: str) -> tuple[str, str] | None:
    """The newest successful CI build of `tag` and the image@sha256 its push step recorded (the build's
    results.buildStepOutputs[1], set before its tests ran), or None when there is none."""
    listed = runner.run(
        ["gcloud", "builds", "list", f"--project={options.project}",
         f"--filter=status=SUCCESS AND tags:relay-ci AND substitutions._TAG={tag}", "--sort-by=~createTime",
         "--limit=1", "--format=value(name,results.buildStepOutputs[1])"],
        check=not runner.plan,
    )  # fmt: skip
    name, _, output = listed.stdout.strip().partition("\t")
    if listed.returncode != 0 or not name:
        return None
    image = _step_output(output.strip())
    if not (image.startswith(prefix) and re.fullmatch(r"[0-9a-f]{64}", image.removeprefix(prefix))):
        raise DeployError(
            f"CI build {name} recorded {image!r}, not an image of {prefix.removesuffix('@sha256:')} by digest"
        )
    return name.strip(), image


def _step_output(output: str) -> str:
    """A build step's output as gcloud prints it: base64 (the field is bytes), or already the text."""
    try:
        return base64.b64decode(output, validate=True).decode("utf-8").strip()
    except (binascii.Error, UnicodeDecodeError):
        return output


def _short(image: str) -> str:
    """relay@sha256:0123456789ab…, for a summary line."""
    return image.rsplit("/", 1)[-1][: len("relay@sha256:") + 12] + "…"


def _roll_secret_readers(options: DeployOptions, runner: Runner, image: str, changed_secrets: list[str]) -> list[str]:
    """A new revision, on the same image, of every service reading one of `changed_secrets`. gcloud sets only
    what Terraform ignores (the image, the client annotations), so the next apply changes nothing."""
    if not changed_secrets:
        return []
    environments = service_environments(
        options.root / TERRAFORM_DIR,
        variables={
            "project_id": options.project,
            "region": options.region,
            **{name: value for name, value in options.variables if name.endswith("_secret_id")},
        },
        resources=local_computed(options.project),
    )
    readers = sorted(name for name, env in environments.items() if set(env.secrets.values()) & set(changed_secrets))
    for service in readers:
        runner.run(
            ["gcloud", "run", "deploy", service, f"--image={image}", f"--project={options.project}",
             f"--region={options.region}", "--quiet"],
            mutating=True,
            stream=True,
        )  # fmt: skip
    return readers


def _running_images(runner: Runner, options: DeployOptions) -> dict[str, str]:
    """The image each Cloud Run service of the region runs, by name."""
    listed = runner.run(
        ["gcloud", "run", "services", "list", f"--project={options.project}", f"--region={options.region}",
         "--format=value(metadata.name,spec.template.spec.containers[0].image)"],
        check=not runner.plan,
    )  # fmt: skip
    pairs = (line.split("\t") for line in listed.stdout.splitlines() if "\t" in line)
    return {name.strip(): image.strip() for name, image in pairs}


def _commit_tag(runner: Runner) -> str:
    """The checkout's short commit, the image tag when --tag is not given."""
    if shutil.which("git", path=runner.environ.get("PATH")) is None:
        raise DeployError("git is not on PATH to name the image after the commit: pass --tag")
    commit = runner.run(["git", "rev-parse", "--short", "HEAD"], check=False)
    if commit.returncode != 0:
        raise DeployError("cannot name the image after the commit (not a git checkout?): pass --tag")
    if runner.run(["git", "status", "--porcelain", "--untracked-files=no"], quiet=True).stdout.strip():
        print(
            f"{INDENT}note: uncommitted changes go into the image tagged {commit.stdout.strip()}, and a rerun "
            "at this commit will not rebuild; commit them, or pass --tag",
            file=runner.out,
        )
    return commit.stdout.strip()
