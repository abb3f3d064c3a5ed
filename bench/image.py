"""Image benchmark: the image's size, and each Cloud Run service's start time as a container of it.

Each Cloud Run service starts alone (one after the other, `--rounds` times), with the environment
infra/terraform gives it, read-only, as the image's user, exactly as `make test-image` runs it; start
= from `run` to the first 200 on /health. Nothing it starts needs the emulators: every Google client
is made on first use. The baseline, measured in the same run: the engine running `python -c pass`
in the same image, which is what any container of it costs before our code runs.

Sizes: the image as the engine reports it, and `du` of the virtualenv and of /app (each of /app's
top-level entries too). Writes bench/results/image.json and the image section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# Run as a script, so sys.path[0] is bench/ (for `common`); the project's packages live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common
from common import RESULTS_DIR, check_busy, results_header

from replicate_relay.devstack import stack
from replicate_relay.devstack.containers import DEFAULT_IMAGE, ContainerLauncher, Engine, detect_engine
from replicate_relay.devstack.processes import free_port
from replicate_relay.devstack.terraform_env import local_computed, service_environments
from replicate_relay.serve import HEALTH_PATH

SPECS = {"receiver": stack.RECEIVER, **stack.HANDLERS, "reconciler": stack.RECONCILER, "status-page": stack.STATUS_PAGE}
SPECS["api"] = stack.API
PROJECT = "local-project"
# Addresses nothing listens on: a service must start without reaching any of them.
UNREACHABLE = {
    "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",
    "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9",
    "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9",
    "RELAY_REPLICATE_BASE_URL": "http://127.0.0.1:9",
    "RELAY_WEBHOOK_SECRETS": stack.DEV_WEBHOOK_SECRET,
    "REPLICATE_API_TOKEN": stack.DEV_REPLICATE_TOKEN,
}
START_LIMIT = 60.0


def first_200(url: str, limit: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback http only
                if response.status == 200:
                    return time.monotonic()
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url} gave no 200 within {limit:g} s")


def start_once(launcher: ContainerLauncher, name: str, folder: Path) -> float:
    port = free_port()
    process = launcher(
        name,
        SPECS[name],
        host="127.0.0.1",
        port=port,
        env=UNREACHABLE,
        log_path=folder / f"{name}-{port}.log",
        ready=lambda _: True,
    )
    process.start()
    try:
        assert process.started_at is not None
        return first_200(f"http://127.0.0.1:{port}{HEALTH_PATH}", START_LIMIT) - process.started_at
    finally:
        process.stop()


def engine_baseline(engine: Engine, image: str) -> float:
    started = time.monotonic()
    engine.run("run", "--rm", "--network", "none", image, "python", "-c", "pass")
    return time.monotonic() - started


def sizes(engine: Engine, image: str) -> dict[str, Any]:
    """The image's size, its virtualenv's and /app's (in MB), and each of /app's top-level entries'."""
    total = int(engine.run("image", "inspect", "--format", "{{.Size}}", image).strip())
    script = "du -sk /opt/venv /app; cd /app && du -sk -- *"
    out = engine.run("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", script)
    lines = [line.split("\t", 1) for line in out.splitlines() if line.strip()]
    venv_kib, app_kib = (int(kib) for kib, _ in lines[:2])
    return {
        "image_mb": total / 1e6,
        "venv_mb": venv_kib * 1024 / 1e6,
        "app_mb": app_kib * 1024 / 1e6,
        "app_parts_mb": {name: int(kib) * 1024 / 1e6 for kib, name in lines[2:]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=os.environ.get("RELAY_IMAGE", DEFAULT_IMAGE))
    parser.add_argument("--rounds", type=int, default=5, help="starts per service")
    parser.add_argument("--quick", action="store_true", help="2 rounds: a smoke run")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "image.json", help="where to write the JSON")
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    engine = detect_engine()
    if not engine.image_exists(args.image):
        print(f"error: no image {args.image} in {engine.name}: run `make image` first", file=sys.stderr)
        return 1
    image_id = engine.run("image", "inspect", "--format", "{{.Id}}", args.image).strip()[:12]
    busy = check_busy()
    environments = service_environments(
        stack.REPO_ROOT / "infra" / "terraform",
        variables={"project_id": PROJECT, "image": args.image},
        resources=local_computed(PROJECT),
    )
    results: dict[str, Any] = {
        **results_header(busy, engine=engine.name, image=args.image, image_id=image_id),
        "settings": {"rounds": rounds, "quick": args.quick},
        "sizes": sizes(engine, args.image),
    }
    with tempfile.TemporaryDirectory(prefix="relay-bench-image-") as scratch:
        folder = Path(scratch)
        launcher = ContainerLauncher(engine, args.image, environments=environments, telemetry_dir=folder / "telemetry")
        baseline = [engine_baseline(engine, args.image) for _ in range(rounds)]
        starts = {name: [start_once(launcher, name, folder) for _ in range(rounds)] for name in SPECS}
    results["baseline_seconds"] = baseline
    results["start_seconds"] = starts
    common.publish("image", args.results, results, render)
    return 0


def render(document: dict[str, Any]) -> str:
    """The image's section: sizes, and each service's start against the engine's baseline."""
    size, host = document["sizes"], document["host"]
    rows = [["engine: `run` of `python -c pass` (baseline)", *figures(document["baseline_seconds"])]]
    rows += [[name, *figures(times)] for name, times in document["start_seconds"].items()]
    parts = ", ".join(f"{name}/ {mb:.2f} MB" for name, mb in sorted(size["app_parts_mb"].items()))
    return "\n".join(
        [
            common.provenance(document),
            "",
            f"`{host['image']}` ({host['engine']}): **{size['image_mb']:.0f} MB**, of which {size['venv_mb']:.0f} MB "
            f"the virtualenv and {size['app_mb']:.1f} MB Relay's own code with its bytecode ({parts}).",
            "",
            common.markdown_table(["service", "median s", "max s"], rows),
        ]
    )


def figures(times: list[float]) -> list[str]:
    return [f"{statistics.median(times):.2f}", f"{max(times):.2f}"]


if __name__ == "__main__":
    sys.exit(main())
