"""What the benchmarks share: processes, cleanup, percentiles, formatting, results and report sections.

Each benchmark runs as a script (sys.path[0] is bench/) with the project root put on sys.path first.
It writes its results to bench/results/NAME.json and its own section of docs/BENCHMARKS.md, between
`<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, plus its plots in docs/bench/. Only light modules
are imported here: archive.py's measuring children load this module too, and their RSS is measured.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from replicate_relay.devstack.processes import ManagedProcess, StackError

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
LOG_DIR = RESULTS_DIR / "logs"
REPORT = REPO_ROOT / "docs" / "BENCHMARKS.md"
PLOTS_DIR = REPO_ROOT / "docs" / "bench"

BUSY_WARNING_PERCENT = 15.0


class BenchError(Exception):
    """The benchmark cannot run or its numbers cannot be trusted; the message says why."""


class Processes:
    """Every process group this run starts; `stop_all()` ends each one, newest first."""

    def __init__(self) -> None:
        self._running: list[ManagedProcess] = []
        self._stops: list[Callable[[], object]] = []

    def on_stop(self, stop: Callable[[], object]) -> None:
        """`stop()` is called by stop_all() too (a local stack, a set of children)."""
        self._stops.append(stop)

    def start(self, process: ManagedProcess, timeout: float) -> ManagedProcess:
        self._running.append(process)
        process.start()
        process.wait_ready(timeout)
        return process

    def stop(self, process: ManagedProcess) -> None:
        process.stop()
        if process in self._running:
            self._running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(self._running):
            with contextlib.suppress(Exception):
                process.stop()
        self._running.clear()
        for stop in reversed(self._stops):
            try:
                stop()
            except Exception as error:  # reported; the other stops still run
                print(f"warning: stopping: {error}", file=sys.stderr)
        self._stops.clear()


def start_emulators(processes: Processes, *names: str, log_dir: Path = LOG_DIR) -> Any:
    """A LocalStack on free ports with only the emulators `names` started (its stop() is registered)."""
    from replicate_relay.devstack.stack import LocalStack, StackConfig  # noqa: PLC0415 - the parent only

    stack = LocalStack(StackConfig.on_free_ports(log_dir=log_dir))
    processes.on_stop(stack.stop)
    for name in names:
        stack.start_emulator(name)
    return stack


def fresh_log_path(name: str) -> Path:
    """bench/results/logs/<name>.log, with any previous run's log removed."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    path = LOG_DIR / f"{name}.log"
    path.unlink(missing_ok=True)
    return path


def project_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment plus `extra`, with the project root first on PYTHONPATH."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return env


def child_result(name: str, argv: Sequence[str], *, env: Mapping[str, str], timeout: float, log: Path) -> Any:
    """The JSON on the last stdout line of a fresh `python ARGV` (stderr appended to `log`), or BenchError.

    subprocess.run kills the child on the way out of any exception, Ctrl-C and SIGTERM included.
    """
    with log.open("ab") as stderr:
        try:
            done = subprocess.run(
                [sys.executable, *argv],
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"the {name} child did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        raise BenchError(f"the {name} child failed ({done.returncode}); its log is {log}")
    try:
        return json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise BenchError(f"the {name} child printed no result: {done.stdout[-300:]!r}") from None


def run_guarded(processes: Processes, body: Callable[[], int]) -> int:
    """`body()`'s exit code; 1 on BenchError or StackError, 130 on Ctrl-C or SIGTERM; then `processes` stopped."""

    def raise_interrupt(signum: int, _: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds like Ctrl-C, so every `finally` runs

    previous = {sig: signal.signal(sig, raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return body()
    except (BenchError, StackError) as error:
        print(f"\nbenchmark failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything this run started", file=sys.stderr)
        return 130
    finally:
        # A second Ctrl-C must not cut the cleanup short; each stop is bounded (SIGKILL after 10 s).
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            processes.stop_all()
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def group_cpu_seconds(pgid: int | None) -> float:
    """CPU seconds (user + system) used so far by the live processes of one process group.

    Every process a benchmark starts leads a group of its own (`ManagedProcess`), so this is the
    server with its workers, or the emulator's gcloud wrapper with its JVM.
    """
    if pgid is None:
        return 0.0
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ..., utime (11), stime (12)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def busy_cpu_percent(seconds: float = 1.0) -> float | None:
    """How busy the machine is before the run starts (other work skews every number here)."""

    def sample() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total_before, idle_before = sample()
        time.sleep(seconds)
        total_after, idle_after = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total_after - total_before
    return round(100 * (1 - (idle_after - idle_before) / total), 1) if total else None


def check_busy() -> float | None:
    """busy_cpu_percent(), with a warning printed when the machine is already busy."""
    busy = busy_cpu_percent()
    if busy is not None and busy > BUSY_WARNING_PERCENT:
        print(f"warning: the machine was {busy:.0f}% busy before the run started; expect low, noisy numbers")
    return busy


def percentile(values: Iterable[float], p: float) -> float | None:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1]


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, mean, p50, p90, p99 and max of `values` (in their unit)."""
    return {
        "count": len(values),
        "mean": round(sum(values) / len(values), 4) if values else None,
        **{f"p{p}": percentile(values, p) for p in (50, 90, 99)},
        "max": max(values) if values else None,
    }


def ms(value: float | None) -> str:
    """Milliseconds, with the digits the size deserves."""
    if value is None:
        return "n/a"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def secs(value: float | None) -> str:
    """Seconds, shown as milliseconds under one second."""
    if value is None:
        return "n/a"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, every column after the first right-aligned."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(headers) - 1)) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def target(limit: str, value: Any, met: bool) -> dict[str, Any]:
    """One target's verdict as the results record it: the limit as text, the value measured, met or not."""
    return {"target": limit, "value": value, "met": met}


def verdict(recorded: Mapping[str, Any]) -> str:
    """ "target LIMIT: met" (or missed) for a target() the results recorded."""
    return f"target {recorded['target']}: {'met' if recorded['met'] else 'missed'}"


def results_header(busy: float | None, **host: Any) -> dict[str, Any]:
    """The start of a results document: when, what code, and on what (`host` adds fields)."""
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": code_version(),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            **host,
            "cpu_busy_before_run_percent": busy,
        },
    }


def code_version() -> dict[str, Any]:
    """The commit measured, and the files that differed from it (a shared tree changes under a long run)."""

    def git(*argv: str) -> str:
        try:
            done = subprocess.run(
                ["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout

    # Porcelain lines are "XY path": the status's leading blank is part of the line, so no strip().
    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or None, "modified": dirty}


def provenance(document: Mapping[str, Any]) -> str:
    """One italic line: when it was measured, how, at what commit, how busy the machine was."""
    settings, code = document.get("settings", {}), document.get("code") or {}
    parts = [f"measured {document.get('generated_at', '?')}", "`--quick`" if settings.get("quick") else "full run"]
    if code.get("commit"):
        modified = len(code.get("modified") or [])
        parts.append(f"commit {code['commit']}" + (f" with {modified} file(s) modified" if modified else ""))
    busy = document.get("host", {}).get("cpu_busy_before_run_percent")
    if busy is not None:
        parts.append(f"CPU {busy:.0f}% busy before the run")
    return "_" + "; ".join(parts) + "._"


def write_section(name: str, text: str, report: Path = REPORT) -> None:
    """Replace what lies between `<!-- bench:name -->` and `<!-- /bench:name -->` in the report with `text`."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    document = report.read_text(encoding="utf-8")
    if begin not in document or end not in document:
        raise BenchError(f"{report.name} has no {begin} … {end} markers for this benchmark's section")
    head, rest = document.split(begin, 1)
    report.write_text(f"{head}{begin}\n{text.strip()}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8")


def publish(name: str, path: Path, document: Mapping[str, Any], render: Callable[[Mapping[str, Any]], str]) -> None:
    """Write the results to `path`, then print the rendered section and put it into the report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    text = render(document)
    print(f"\n{text}\n\nwrote {path.relative_to(REPO_ROOT)} and the {name} section of docs/BENCHMARKS.md")
    write_section(name, text)


def figure(columns: int = 1) -> tuple[Any, Any]:
    """A matplotlib figure (Agg backend: no display needed) and its axes."""
    import matplotlib  # noqa: PLC0415 - only where a benchmark draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt.subplots(1, columns, figsize=(6 * columns, 4), squeeze=columns == 1)


def save(fig: Any, name: str) -> str:
    """Save `fig` as docs/bench/NAME.png; the Markdown image line for it."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    PLOTS_DIR.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(PLOTS_DIR / f"{name}.png", dpi=110)
    plt.close(fig)
    return f"![{name}](bench/{name}.png)"
