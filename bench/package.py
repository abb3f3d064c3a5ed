"""Package benchmark: what an app's `pip install` weighs, and what importing the client costs.

The wheel built from this tree, installed into fresh virtualenvs with no extras and with
`[services]`: sizes, each of IMPORTS timed in fresh interpreters, and where `RelayClient`'s import
time goes by package. Writes bench/results/package.json and the package section of docs/BENCHMARKS.md.

    .venv/bin/python bench/package.py [--rounds 15] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, so sys.path[0] is bench/ (for `common`); the project's packages live one level up.
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import common  # noqa: E402
from common import RESULTS_DIR, check_busy, results_header  # noqa: E402

DISTRIBUTION = "replicate-relay"
# What an app imports, from the cheapest to everything; each timed in a fresh interpreter.
IMPORTS = ["import replicate_relay"]
IMPORTS += [f"from replicate_relay import {name}" for name in ("JobEvent", "RelayClient", "JobEventsConsumer", "*")]
CLIENT = "from replicate_relay import RelayClient"
BASELINE = "python -c pass"
TIMED = "import time\nstarted = time.perf_counter()\n{statement}\nprint(time.perf_counter() - started)\n"
# Per distribution: the files its RECORD lists (pip adds the bytecode it compiled), sized on disk.
SIZES = """
import importlib.metadata as m, json
sizes = {}
for dist in m.distributions():
    total = 0
    for file in dist.files or []:
        path = dist.locate_file(file)
        if path.is_file():
            total += path.stat().st_size
    sizes[dist.metadata["Name"]] = total
print(json.dumps(sizes))
"""


def pip(*argv: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *argv]
    subprocess.run(command, check=True, timeout=600)


def build_wheel(into: Path) -> Path:
    pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(into), str(REPO_ROOT))
    [wheel] = into.glob("*.whl")
    return wheel


def install(wheel: Path, venv: Path, extras: str = "") -> Path:
    """A fresh virtualenv with the wheel (and `extras`) installed; returns its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    target = f"{DISTRIBUTION}[{extras}] @ {wheel.as_uri()}" if extras else str(wheel)
    pip("--python", str(python), "install", "--constraint", str(REPO_ROOT / "requirements.in"), target)
    return python


def python_output(python: Path, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python ARGV…` run to its end; its output captured, an error raised if it fails."""
    return subprocess.run([str(python), *argv], cwd=cwd, capture_output=True, text=True, check=True, timeout=120)


def site_packages(python: Path) -> Path:
    return Path(python_output(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())


def tree_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def sizes(python: Path) -> dict[str, Any]:
    per_distribution: dict[str, int] = json.loads(python_output(python, "-c", SIZES).stdout)
    return {
        "site_packages_bytes": tree_bytes(site_packages(python)),
        "distributions": len(per_distribution),
        "own_bytes": per_distribution.get(DISTRIBUTION, 0),
        "by_distribution_bytes": dict(sorted(per_distribution.items(), key=lambda item: -item[1])),
    }


def timed(python: Path, statement: str | None, cwd: Path) -> float:
    """Seconds `statement` takes in a fresh interpreter; None: the whole `python -c pass`, from outside."""
    if statement is None:
        started = time.perf_counter()
        subprocess.run([str(python), "-c", "pass"], cwd=cwd, check=True, timeout=60)
        return time.perf_counter() - started
    return float(python_output(python, "-c", TIMED.format(statement=statement), cwd=cwd).stdout.strip())


def package_of(module: str) -> str:
    """The package a module belongs to, as a reader would name it: google.cloud.firestore_v1, google.api_core, grpc."""
    parts = module.split(".")
    if parts[:2] == ["google", "cloud"]:
        return ".".join(parts[:3])
    return ".".join(parts[:2]) if parts[0] == "google" else parts[0]


def heaviest_imports(python: Path, statement: str, cwd: Path, count: int = 8) -> list[dict[str, Any]]:
    """Where `statement`'s import time goes: `-X importtime`'s self times summed by package, heaviest first."""
    done = python_output(python, "-X", "importtime", "-c", statement, cwd=cwd)
    by_package: dict[str, int] = {}
    for line in done.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # the header line
        package = package_of(fields[2].strip())
        by_package[package] = by_package.get(package, 0) + int(fields[0])
    ranked = sorted(by_package.items(), key=lambda item: -item[1])
    total = sum(by_package.values())
    return [{"package": name, "ms": us / 1000, "share": us / total} for name, us in ranked[:count]]


def import_times(python: Path, rounds: int, cwd: Path) -> dict[str, Any]:
    statements: dict[str, str | None] = {BASELINE: None, **{statement: statement for statement in IMPORTS}}
    for statement in statements.values():  # warm-up: bytecode read once, files in the page cache
        timed(python, statement, cwd)
    samples: dict[str, list[float]] = {label: [] for label in statements}
    for _ in range(rounds):  # interleaved, so a busy moment of the machine spreads over every row
        for label, statement in statements.items():
            samples[label].append(timed(python, statement, cwd))
    return {
        label: {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times), "max_ms": 1000 * max(times)}
        for label, times in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15, help="fresh interpreters per import statement")
    parser.add_argument("--quick", action="store_true", help="3 rounds, no [services] install: a smoke run")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "package.json")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    busy = check_busy()
    root = Path(tempfile.mkdtemp(prefix="relay-package-"))
    try:
        wheel = build_wheel(root / "dist")
        plain = install(wheel, root / "plain")
        installs = {"plain": sizes(plain)}
        if not args.quick:
            installs["services"] = sizes(install(wheel, root / "services", extras="services"))
        work = root / "cwd"  # not the repository: only the installed package is importable
        work.mkdir()
        imports = import_times(plain, rounds, work)
        heaviest = heaviest_imports(plain, CLIENT, work)
        results = {
            **results_header(busy),
            "settings": {"rounds": rounds, "quick": args.quick},
            "wheel_bytes": wheel.stat().st_size,
            "installs": installs,
            "import_ms": imports,
            "client_heaviest_imports": heaviest,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    common.publish("package", args.results, results, render)
    return 0


def render(document: dict[str, Any]) -> str:
    """The package section: installed sizes, the largest distributions, import times."""
    installs = document["installs"]
    sizes = [
        [
            f"`[{name}]`" if name != "plain" else "plain (the app's side)",
            f"{info['site_packages_bytes'] / 1e6:.1f}",
            str(info["distributions"]),
            f"{info['own_bytes'] / 1e3:.0f}",
        ]
        for name, info in installs.items()
    ]
    largest = list(installs["plain"]["by_distribution_bytes"].items())[:6]
    times = [
        [f"`{label}`", f"{row['median_ms']:.0f}", f"{row['min_ms']:.0f}–{row['max_ms']:.0f}"]
        for label, row in document["import_ms"].items()
    ]
    spent = document["client_heaviest_imports"]
    return "\n".join(
        [
            common.provenance(document) + f" Wheel: {document['wheel_bytes'] / 1e3:.0f} kB.",
            "",
            common.markdown_table(["install", "site-packages MB", "distributions", "replicate-relay kB"], sizes),
            "",
            "Largest in the plain install: " + ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in largest) + ".",
            "",
            common.markdown_table([f"{document['settings']['rounds']} rounds", "median ms", "range ms"], times),
            "",
            "Where `from replicate_relay import RelayClient` spends its time, by package: "
            + ", ".join(f"{row['package']} {row['ms']:.0f} ms ({row['share']:.0%})" for row in spent)
            + ".",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
