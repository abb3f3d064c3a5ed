"""What the image holds: the Cloud Run services and the code they import, and no tooling.

The dev stack, the Replicate simulator, the trace viewer, the schema checker and test code do not
run on Cloud Run, so the image must not carry them. Read from the image itself: its /app as a
tar, and its virtualenv's installed distributions. Needs no emulators (only `make image`'s image);
that each service still starts from what is left is test_image.py's first test.
"""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import PurePosixPath

import pytest

from replicate_relay.devstack.containers import Engine
from replicate_relay.devstack.stack import REPO_ROOT
from replicate_relay.devstack.terraform_env import local_computed, service_environments
from tests.image.conftest import PROJECT, TERRAFORM

# Paths under /app that are tooling: any file at or under one fails the test.
TOOLING_PATHS = (
    "replicate_relay/devstack",  # the local dev stack, with the HCL evaluator
    "replicate_relay/simulator",  # the Replicate simulator
    "replicate_relay/traceview",  # the trace viewer
    "replicate_relay/schemas.py",  # the schema generator
    "replicate_relay/testing.py",  # test helpers
    "replicate_relay/cli.py",  # the relay command line
    "infra/checks",  # the Terraform schema checker and its data
    "infra/terraform",
    "tests",
    "bench",
    "docs",
    "examples",
    "schemas",
)
# Import names that only the tools use (python-hcl2, fake-gcs-server's wrapper, the plots, the tests,
# the linters, the fuzzer) and the installers: none may be in the virtualenv's site-packages.
TOOLING_IMPORTS = (
    "hcl2",
    "fake_gcs_server",
    "matplotlib",
    "pytest",
    "_pytest",
    "hypothesis",
    "mypy",
    "ruff",
    "schemathesis",
    "jsonschema",
    "pip",
    "setuptools",
    "pkg_resources",
)
# The image's CMD: it loads each service's FUNCTION_SOURCE (Terraform sets it per service).
SERVER_MODULE = "replicate_relay.serve"
FIRST_PARTY = ("replicate_relay", "receiver", "handlers", "api")
# Files /app may hold besides Python modules: what the code reads at run time.
DATA_FILES = ("infra/topology.yaml",)
DATA_FOLDERS = ("replicate_relay/ops/templates",)

LIST_APP = """
import sys, tarfile
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as archive:
    archive.add("/app", arcname=".", filter=lambda info: None if "__pycache__" in info.name else info)
"""
LIST_SITE_PACKAGES = """
import importlib.metadata, json, os, sysconfig
site = sysconfig.get_paths()["purelib"]
print(json.dumps({
    "site": site,
    "entries": sorted(os.listdir(site)),
    "distributions": sorted(d.metadata["Name"] for d in importlib.metadata.distributions()),
}))
"""


def _run_python(engine: Engine, image: str, script: str) -> bytes:
    """`python -c script` in a container of the image (no network), its stdout as bytes."""
    argv = engine.command("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", script)
    done = subprocess.run(argv, env=engine.env, capture_output=True, check=False, timeout=120)  # noqa: S603 - the engine, the test image
    assert done.returncode == 0, f"`python -c` in {image} failed: {done.stderr.decode(errors='replace')[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def app_files(engine: Engine, image: str) -> dict[str, bytes]:
    """Every file under the image's /app (bytecode left out), by path relative to /app."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(_run_python(engine, image, LIST_APP))) as archive:
        for member in archive:
            extracted = archive.extractfile(member) if member.isfile() else None
            if extracted is not None:
                files[str(PurePosixPath(member.name).relative_to("."))] = extracted.read()
    assert "replicate_relay/serve.py" in files, f"no /app/replicate_relay/serve.py in {image}: {sorted(files)[:20]}"
    return files


@pytest.fixture(scope="module")
def site_packages(engine: Engine, image: str) -> dict[str, list[str]]:
    listed: dict[str, list[str]] = json.loads(_run_python(engine, image, LIST_SITE_PACKAGES))
    return listed


def _module_name(path: str) -> str | None:
    """`a/b/c.py` -> `a.b.c`, `a/b/__init__.py` -> `a.b`; None for anything else."""
    if not path.endswith(".py"):
        return None
    parts = list(PurePosixPath(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.Module, package: str) -> Iterator[tuple[str, list[str]]]:
    """(module, names) of every import a module can run: at module level or in a function, but not under
    `if TYPE_CHECKING:`. Relative imports are resolved against `package`."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            yield base, [alias.name for alias in node.names]
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def imported_modules(sources: Mapping[str, bytes], entries: Iterable[str]) -> tuple[set[str], dict[str, list[str]]]:
    """The first-party modules in `sources` (path -> text) that `entries` import, directly or not, and
    each first-party module they import that `sources` lacks (by the module that imports it)."""
    modules = {name: path for path in sources if (name := _module_name(path)) is not None}
    found: set[str] = set()
    missing: dict[str, list[str]] = {}
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:end]) for end in range(1, len(parts)) if ".".join(parts[:end]) in modules]
        path = modules[name]
        package = name if path.endswith("__init__.py") else ".".join(parts[:-1])
        for module, names in _runtime_imports(ast.parse(sources[path]), package):
            if module.split(".")[0] not in FIRST_PARTY:
                continue
            if module not in modules:
                missing.setdefault(module, []).append(name)
                continue
            todo.append(module)
            todo += [f"{module}.{attribute}" for attribute in names if f"{module}.{attribute}" in modules]
    return found, missing


def entry_modules() -> list[str]:
    """The server and every Cloud Run service's FUNCTION_SOURCE, as infra/terraform sets them."""
    environments = service_environments(
        TERRAFORM, variables={"project_id": PROJECT, "image": "unused"}, resources=local_computed(PROJECT)
    )
    sources = {env.values["FUNCTION_SOURCE"] for env in environments.values()}
    names = [name for source in sorted(sources) if (name := _module_name(source)) is not None]
    assert len(names) == len(sources), f"a FUNCTION_SOURCE is not a Python file: {sorted(sources)}"
    return [SERVER_MODULE, *names]


def test_no_tooling_or_test_code_is_in_the_app(app_files: dict[str, bytes]) -> None:
    inside = sorted(
        path
        for path in app_files
        if any(path == tool or path.startswith(f"{tool}/") for tool in TOOLING_PATHS)
        or re.search(r"(^|/)(test_[^/]*|conftest)\.py$", path)
    )
    assert inside == [], f"tooling in the image's /app: {inside}"


def test_every_module_in_the_app_is_imported_by_a_service_and_every_import_is_there(
    app_files: dict[str, bytes],
) -> None:
    """The services' imports, read from the image's own code from the entry points Terraform names: a
    module none of them imports is tooling that has come back (leave it out in .dockerignore); one they
    import that is not there would fail at start, or on the first request that needs it."""
    entries = entry_modules()
    assert {f"{entry.replace('.', '/')}.py" for entry in entries} <= set(app_files), "an entry point is missing"
    imported, missing = imported_modules(app_files, entries)
    in_app = {name for path in app_files if (name := _module_name(path)) is not None}
    unused = sorted(in_app - imported)
    assert unused == [], f"modules in the image that no service imports: {unused}"
    assert missing == {}, f"first-party modules the services import that the image lacks (by importer): {missing}"


def test_the_app_holds_no_data_but_what_the_services_read(app_files: dict[str, bytes]) -> None:
    data = sorted(
        path
        for path in app_files
        if not path.endswith(".py")
        and path not in DATA_FILES
        and not any(path.startswith(f"{folder}/") for folder in DATA_FOLDERS)
    )
    assert data == [], f"files in the image's /app that no service reads: {data}"
    assert set(DATA_FILES) <= set(app_files)


def _requirement_names(path: str) -> set[str]:
    lines = (REPO_ROOT / path).read_text(encoding="utf-8").splitlines()
    return {_normal(found[1]) for line in lines if (found := re.match(r"\s*([A-Za-z0-9._-]+)\s*==", line))}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_virtualenv_holds_no_tool_and_no_installer(site_packages: dict[str, list[str]]) -> None:
    entries = {entry.split(".")[0].split("-")[0] for entry in site_packages["entries"]}
    tools = sorted(entries & set(TOOLING_IMPORTS))
    assert tools == [], f"tools and installers in {site_packages['site']}: {tools}"
    installed = {_normal(name) for name in site_packages["distributions"]}
    dev_only = _requirement_names("requirements-dev.txt") - _requirement_names("requirements.txt")
    extra = sorted(installed & (dev_only | {"pip", "setuptools"}))
    assert extra == [], f"distributions only requirements-dev.txt pins, or installers, in the image: {extra}"
