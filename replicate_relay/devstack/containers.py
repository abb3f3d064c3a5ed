"""Relay's image on this machine: find a container engine, make a base where none can be pulled, build.

`make image` runs `python -m replicate_relay.devstack.containers build`; the image test runs the result.

- Engine: docker where a daemon answers, else podman (daemonless), with the settings of
  infra/image/containers.conf.
- Base: the Dockerfile's official `python:3.11-slim-bookworm`, at the digest its PYTHON_IMAGE names,
  where it is present or can be pulled. Where no registry can be reached, a stand-in made from
  Debian's own packages with mmdebstrap (bookworm's python3, 3.11), imported once and kept: the
  output says which base was used.
- Build: `--network host`, so that apt and pip inside the build reach their registries as the
  host does, with the host's CA bundle mounted where it exists (podman only: docker build takes
  no volumes, and a docker host reaches registries without one).
Repeated builds reuse the engine's layer cache and the kept base.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from replicate_relay.devstack.processes import ManagedProcess, StackError
from replicate_relay.devstack.terraform_env import ServiceEnv

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO_ROOT / "infra" / "image" / "containers.conf"
DEFAULT_IMAGE = "localhost/replicate-relay:local"
DOCKERFILE = REPO_ROOT / "Dockerfile"
# The Dockerfile's base: a Docker Hub library image by tag and digest.
PYTHON_IMAGE_ARG = re.compile(
    r"^ARG PYTHON_IMAGE=(?:docker\.io/)?(?:library/)?([a-z0-9._-]+):[\w.-]+@(sha256:[0-9a-f]{64})\s*$", re.MULTILINE
)
LOCAL_BASE = "localhost/relay-base:bookworm-python3.11"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What the stand-in base needs to run the Dockerfile as it is: Python with venv, `python` on PATH
# (python-is-python3), and CA certificates for pip and the Google clients.
LOCAL_BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
Say = Callable[[str], None]  # prints one progress line
INSTALL_HINT = "install podman (Debian: apt-get install podman runc mmdebstrap; `make image` does it) or start docker"


@dataclass(frozen=True)
class Engine:
    """A container engine's command line and the environment it runs with."""

    name: str  # "docker" or "podman"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.name == "podman":
            env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
        return env

    def command(self, *args: str) -> list[str]:
        return [self.name, *args]

    def run(self, *args: str, check: bool = True, capture: bool = True, timeout: float | None = None) -> str:
        """Run an engine command; its output (stdout) when captured. A failure names the command."""
        argv = self.command(*args)
        try:
            done = subprocess.run(
                argv,
                env=self.env,
                check=False,
                text=True,
                stdout=subprocess.PIPE if capture else None,
                stderr=subprocess.PIPE if capture else None,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise StackError(f"`{' '.join(argv)}` did not finish in {timeout:g} s") from None
        if check and done.returncode != 0:
            detail = (done.stderr or "").strip().splitlines()[-3:] if capture else []
            raise StackError(f"`{' '.join(argv)}` failed ({done.returncode}): {' | '.join(detail)}")
        return done.stdout or ""

    def image_exists(self, image: str) -> bool:
        command = self.command("image", "inspect", image)
        inspected = subprocess.run(command, check=False, env=self.env, capture_output=True)
        return inspected.returncode == 0


def detect_engine() -> Engine:
    """docker where its daemon answers, else podman; StackError when neither can run containers."""
    if shutil.which("docker"):
        try:
            answered = subprocess.run(["docker", "info"], check=False, capture_output=True, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            answered = False
        if answered:
            return Engine("docker")
    if shutil.which("podman"):
        return Engine("podman")
    raise StackError(f"no container engine: docker's daemon does not answer and podman is missing; {INSTALL_HINT}")


def official_base(dockerfile: Path = DOCKERFILE) -> str:
    """The Dockerfile's PYTHON_IMAGE (`python:TAG@sha256:…`) as Docker Hub's fully qualified reference by
    digest alone (`docker.io/library/python@sha256:…`): podman refuses a tag and a digest together."""
    text = dockerfile.read_text(encoding="utf-8")
    found = re.search(
        r"^ARG PYTHON_IMAGE=(?:docker\.io/)?(?:library/)?([a-z0-9._-]+):[\w.-]+@(sha256:[0-9a-f]{64})\s*$", text, re.M
    )
    if found is None:
        raise StackError(f"{dockerfile} has no ARG PYTHON_IMAGE=NAME:TAG@sha256:DIGEST")
    return f"docker.io/library/{found.group(1)}@{found.group(2)}"


def ensure_base(engine: Engine, *, say: Say) -> str:
    """The base image to build on: the official one if it is here or can be pulled, else the stand-in."""
    official = official_base()
    if engine.image_exists(official):
        say(f"base: {official} (present)")
        return official
    pulled = subprocess.run(
        engine.command("pull", "--quiet", official),
        check=False,
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if pulled.returncode == 0:
        say(f"base: {official} (pulled)")
        return official
    reason = (pulled.stderr.strip().splitlines() or ["no reason given"])[-1]
    if not engine.image_exists(LOCAL_BASE):
        say(f"{official} cannot be pulled ({reason}); making a stand-in from Debian's packages (~30 s)")
        _make_local_base(engine, say=say)
    python = engine.run("run", "--rm", "--network", "none", LOCAL_BASE, "python", "--version").strip()
    say(f"base: {LOCAL_BASE} (Debian bookworm, {python}, made with mmdebstrap: {official} cannot be pulled)")
    return LOCAL_BASE


def _make_local_base(engine: Engine, *, say: Say) -> None:
    if shutil.which("mmdebstrap") is None:
        raise StackError("mmdebstrap is missing: apt-get install mmdebstrap (`make image` installs it)")
    with tempfile.TemporaryDirectory(prefix="relay-base-") as folder:
        rootfs = Path(folder) / "rootfs.tar"
        started = time.monotonic()
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={','.join(LOCAL_BASE_PACKAGES)}",
                "bookworm",
                str(rootfs),
            ],
            check=True,
        )
        engine.run("import", "--change", 'CMD ["python3"]', str(rootfs), LOCAL_BASE)
        say(f"made {LOCAL_BASE} in {time.monotonic() - started:.0f} s")


def build(engine: Engine, image: str, *, say: Say) -> None:
    """Build the Dockerfile into `image`, on the base ensure_base chose."""
    base = ensure_base(engine, say=say)
    args = ["build", "--network", "host", "--build-arg", f"PYTHON_IMAGE={base}", "--tag", image]
    if engine.name == "podman" and HOST_CA_BUNDLE.exists():
        # The stand-in base trusts Debian's CAs; the host's bundle also has whatever CA its network needs.
        args += ["--volume", f"{HOST_CA_BUNDLE}:/etc/ssl/certs/ca-certificates.crt:ro"]
    started = time.monotonic()
    engine.run(*args, str(REPO_ROOT), capture=False)
    size = engine.run("image", "inspect", "--format", "{{.Size}}", image).strip()
    say(f"built {image} with {engine.name} in {time.monotonic() - started:.0f} s ({int(size) / 1e6:.0f} MB)")


def _say(line: str) -> None:
    """A progress line on stderr, prefixed so it stands out from the engine's own output."""
    print(f"make image: {line}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m replicate_relay.devstack.containers", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="build the image (make image)")
    build_parser.add_argument("--image", default=os.environ.get("IMAGE", DEFAULT_IMAGE))
    commands.add_parser("engine", help="print the engine that would be used")
    args = parser.parse_args(argv)
    try:
        engine = detect_engine()
        if args.command == "engine":
            print(engine.name)
        else:
            build(engine, args.image, say=_say)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---- running the image's services against the local stack ----------------------------------------

# What the image test adds to the environment Terraform gives a service: nothing else reaches a
# container. Taken from the local stack's own environment for its functions.
LOCAL_NAMES = (
    "PUBSUB_EMULATOR_HOST",
    "FIRESTORE_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
    "RELAY_REPLICATE_BASE_URL",  # the simulator stands in for api.replicate.com
    "RELAY_DOWNLOAD_LOCAL_HOSTS",  # the loopback host(s) serving output files over plain HTTP
    "RELAY_WEBHOOK_URL",  # the local receiver, where the API's predictions send their webhooks
)
CONTAINER_TELEMETRY_DIR = "/telemetry"


@dataclass(frozen=True)
class ContainerLauncher:
    """Serves each function as a container of `image`, on the host network, as the image's own user,
    with a read-only root and no writable /tmp, and the environment Terraform gives its service.

    Cloud Run's own variables are added as Cloud Run sets them (PORT, K_SERVICE), then only what the
    local stack must change: the emulator hosts and local URLs (LOCAL_NAMES), the secrets' local
    values, and where telemetry goes. Two of Cloud Run's variables are left out on purpose:
    K_REVISION and K_CONFIGURATION, because with them a handler refuses RELAY_PUSH_AUTH=off (and the
    API RELAY_API_AUTH=off), and the Pub/Sub emulator pushes without the OIDC token a handler checks
    in production, as the test calls the API without an ID token.
    """

    engine: Engine
    image: str
    environments: Mapping[str, ServiceEnv]  # by service name, from replicate_relay.devstack.terraform_env
    telemetry_dir: Path  # mounted writable for the span and metric files
    read_only: bool = True

    def __call__(
        self,
        name: str,
        spec: object,
        *,
        host: str,
        port: int,
        env: Mapping[str, str],
        log_path: Path,
        ready: Callable[[Path], bool],
    ) -> ContainerProcess:
        container_env = self.environment(name, host=host, port=port, stack_env=env)
        env_file = log_path.with_suffix(".env")
        env_file.parent.mkdir(parents=True, exist_ok=True)
        env_file.write_text("".join(f"{key}={value}\n" for key, value in sorted(container_env.items())))
        env_file.chmod(0o600)
        self.telemetry_dir.mkdir(parents=True, exist_ok=True)
        # The image's user (uid 10001) appends to the files in it.
        self.telemetry_dir.chmod(0o777)
        args = ["run", "--rm", "--network", "host", "--env-file", str(env_file)]
        args += ["--volume", f"{self.telemetry_dir}:{CONTAINER_TELEMETRY_DIR}"]
        if self.read_only:
            args.append("--read-only")
            if self.engine.name == "podman":  # podman would mount tmpfs on /tmp, /var/tmp and /run
                args.append("--read-only-tmpfs=false")
        return ContainerProcess(
            name,
            self.engine,
            run_args=args,
            image=self.image,
            container_prefix=f"relay-{name}-{port}",
            log_path=log_path,
            ready=ready,
        )

    def environment(self, name: str, *, host: str, port: int, stack_env: Mapping[str, str]) -> dict[str, str]:
        """Terraform's variables for service `name`, and the local additions the class docstring lists."""
        if name not in self.environments:
            raise StackError(f"infra/terraform defines no Cloud Run service named {name!r}")
        service = self.environments[name]
        env = dict(service.values)
        for variable in service.secrets:
            if variable not in stack_env:
                raise StackError(f"the {name} service reads secret {variable}, which the local stack does not set")
            env[variable] = stack_env[variable]
        env.update({key: stack_env[key] for key in LOCAL_NAMES if key in stack_env})
        env.update(
            {
                "PORT": str(port),
                "HOST": host,
                "K_SERVICE": name,
                "RELAY_PUSH_AUTH": "off",
                "RELAY_API_AUTH": "off",  # nothing here can mint Google's ID tokens
                # No Google credentials here: spans and metrics go to files the test reads.
                "RELAY_GCP_TELEMETRY": "false",
                "RELAY_TRACE_FILE": f"{CONTAINER_TELEMETRY_DIR}/spans.jsonl",
                "RELAY_METRICS_FILE": f"{CONTAINER_TELEMETRY_DIR}/metrics.jsonl",
            }
        )
        return env


class ContainerProcess(ManagedProcess):
    """`run` in the foreground: the engine forwards SIGTERM to the container, whose exit it returns.

    Each start is a new container with a name of its own: the engine may still be removing the last
    one when the next starts."""

    def __init__(
        self,
        name: str,
        engine: Engine,
        *,
        run_args: Sequence[str],
        image: str,
        container_prefix: str,
        log_path: Path,
        ready: Callable[[Path], bool],
    ) -> None:
        super().__init__(name, [], log_path=log_path, ready=ready, env=engine.env)
        self.engine = engine
        self._run_args = list(run_args)
        self._image = image
        self._prefix = container_prefix
        self._starts = 0
        self.container = ""

    def start(self) -> None:
        self._starts += 1
        self.container = f"{self._prefix}-{self._starts}"
        self.argv = self.engine.command(*self._run_args, "--name", self.container, self._image)
        super().start()

    def stop(self, timeout: float = 10.0) -> int | None:
        """Cloud Run's contract: SIGTERM, then SIGKILL `timeout` seconds later, both timed by the engine
        (not by this process, whose own start and stop add seconds on a busy machine). Returns the
        container's exit status: 0 when it exited by itself, 137 when the engine had to kill it."""
        if self.alive():
            subprocess.run(
                self.engine.command("stop", "--time", str(round(timeout)), self.container),
                check=False,
                env=self.engine.env,
                capture_output=True,
            )
            self.wait_exit(30.0)  # `run` then exits with the container's status
        status = super().stop(timeout=30.0)
        # The container outlives a killed `run` (its monitor is not in that process group).
        subprocess.run(
            self.engine.command("rm", "--force", self.container), check=False, env=self.engine.env, capture_output=True
        )
        return status
