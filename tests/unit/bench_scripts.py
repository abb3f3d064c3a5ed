"""Loading a bench/ script as a module, for the unit tests of its arithmetic."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str, filename: str) -> ModuleType:
    """bench/ scripts import `common` and `e2e` as siblings, so bench/ goes on the path; the module is
    registered under `name`, not its file name (bench/receiver.py would shadow the receiver package)."""
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / filename)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
