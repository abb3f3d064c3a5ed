"""The distribution's public surface: every name in `__all__` imports, and the examples and the app's
docs import nothing else from replicate_relay.

The wheel itself (built, installed with no extras into a fresh virtualenv, the example run from it)
is tests/integration/test_package.py.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import replicate_relay

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(path for path in (ROOT / "examples").rglob("*.py") if "node_modules" not in path.parts)
APP_PAGES = [ROOT / "README.md", ROOT / "docs" / "APP.md"]
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)


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
