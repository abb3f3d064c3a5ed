"""Soak: a steady 2 predictions a second through the whole local stack for 30 minutes, watching for leaks.

Starts the local stack on free ports (`replicate_relay.devstack`: both emulators, fake-gcs-server, the
Replicate simulator, receiver, both handlers, the reconciler called on a schedule as Cloud
Scheduler would, the status page) with the simulator's duplicate and reorder chaos on, then
submits predictions with relay's Submitter at a steady rate for `--minutes`. The mix is fixed by
each prediction's index (`plan()`): most succeed with one or two small files, one in ten fails,
one in fifty loses its final webhook (`sim_drop_final`) so the reconciler has work.

Every `--sample-every` seconds it reads RSS, open file descriptors and threads of every process of
the stack from /proc (each emulator's gcloud wrapper and JVM, fake-gcs-server, the simulator, and
each function's gunicorn master and workers). Once submissions stop it allows a bounded drain,
then checks with bench/e2e.py's helpers that no acknowledged webhook was lost and that every job
ended in the state its inputs steered it to, and reports:

- growth per process over the last 2/3 of the load (least-squares slope, and the median of the
  window's first sixth against its last sixth), against a stated bound for relay's own processes:
  RSS < 5% or < 10 MiB; open fds, which swing by tens with the connections in flight, by their
  floor (each sixth's minimum), < 5% or < 10. The emulators and the simulator are reported and
  judged separately (a JVM heap grows until it collects; the emulators and the simulator keep
  every object, document and prediction by design);
- end-to-end latency per minute (Replicate's `completed_at` → the job final): p50, p99, count,
  for jobs ended by their webhooks, and the reconciled ones apart;
- what explains a slowdown: CPU per process and the machine's CPU busy each round, the
  handlers' slowest requests and outcomes, the reconciler's runs and recoveries, the commit
  measured and the files modified in the tree.

Results: stdout, bench/results/soak.json (every sample, for the plots of bench/report.py), the
stack's logs in bench/results/logs/soak/. Bounded by a global timeout; everything started is
stopped on the way out. Exits 1 if a webhook was lost, a job did not end as steered, or it could
not measure; a missed growth bound is reported, not an exit status (a benchmark prints numbers).

    .venv/bin/python bench/soak.py [--minutes 30] [--rate 2]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, so sys.path[0] is bench/ (for `common` and `e2e`); the project's packages live one level up.
sys.path.insert(0, str(REPO_ROOT))

import common  # noqa: E402
import e2e  # noqa: E402
from common import LOG_DIR, RESULTS_DIR  # noqa: E402

from replicate_relay.devstack.stack import LocalStack, StackConfig  # noqa: E402

RESULTS_JSON = RESULTS_DIR / "soak.json"
STACK_LOG_DIR = LOG_DIR / "soak"

SUBMIT_WORKERS = 8  # 2 a second; a slow submit must not hold the schedule back
PREDICTION_S = 2.0  # each prediction runs this long (Replicate's created_at → completed_at)
FILE_BYTES = 8_192
LOG_LINES = 2
QUIET_S = 10  # RELAY_RECONCILE_QUIET_SECONDS: a job silent this long is checked against Replicate

# The judged window: the last JUDGED_FRACTION of the load; "first" and "last" are its first and
# last EDGE_FRACTION, compared by median so one GC pause or burst does not decide.
JUDGED_FRACTION = 2 / 3
EDGE_FRACTION = 1 / 6
# Relay's own processes are flat when growth over the window stays under either bound.
BOUND_FRACTION = 0.05
BOUND_RSS_BYTES = 10 * 1024 * 1024
BOUND_FDS = 10
MIB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Process groups by what they are: relay's services (every function the stack serves: receiver,
# handlers, reconciler, status page, API, and any added later) are judged against the bound; the
# emulators and the simulator are reported and judged separately (see the module docstring).
EMULATOR_GROUPS = ("pubsub", "firestore", "storage")
SIMULATOR_GROUPS = ("simulator",)
ROLE_NAMES = {"python3": "gcloud", "cloud_firestore": "launcher", "java": "jvm"}  # by /proc comm


# The mix -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    kind: str  # "files", "failed" or "lost-final"
    expected: str  # the job's final state
    files: int  # output files a succeeded job must have archived
    inputs: dict[str, Any]


def plan(index: int) -> Plan:
    """What prediction `index` does: fixed by the index, so a run's mix is exact and repeatable.

    One in fifty loses its final webhook (2%: the reconciler must finish it), one in ten fails, the
    rest succeed with one or two files.
    """
    common_inputs: dict[str, Any] = {
        "input_image": "https://example.com/old-photo.jpg",
        "output_format": "png",
        "sim_duration": PREDICTION_S,
        "sim_file_bytes": FILE_BYTES,
        "sim_logs": LOG_LINES,
    }
    if index % 50 == 25:
        return Plan("lost-final", "succeeded", 1, {**common_inputs, "sim_files": 1, "sim_drop_final": True})
    if index % 10 == 7:
        return Plan(
            "failed", "failed", 0, {**common_inputs, "sim_outcome": "failed", "sim_error": "CUDA out of memory"}
        )
    files = 1 + index % 2
    return Plan("files", "succeeded", files, {**common_inputs, "sim_files": files})


# Growth arithmetic ----------------------------------------------------------------------------------


def linear_slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over t (units of y per second); None with fewer than two distinct times."""
    if len(points) < 2:
        return None
    mean_t = statistics.fmean(t for t, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return sum((t - mean_t) * (y - mean_y) for t, y in points) / spread


def judged_window(load_s: float, fraction: float = JUDGED_FRACTION) -> tuple[float, float]:
    """The last `fraction` of a load of `load_s` seconds: the first third is warm-up (caches, pools, JIT)."""
    return load_s * (1 - fraction), load_s


@dataclass(frozen=True)
class Growth:
    """How one series moved over the judged window."""

    samples: int
    first: float | None  # median of the window's first EDGE_FRACTION
    last: float | None  # median of its last EDGE_FRACTION
    first_to_last: float | None  # last - first
    fitted: float | None  # least-squares slope × the window's length
    per_minute: float | None  # the slope, per minute
    relative: float | None  # the larger of fitted and first_to_last, over first
    floor_growth: float | None = None  # the last sixth's minimum minus the first sixth's


def growth(
    points: Sequence[tuple[float, float]], start: float, end: float, edge_fraction: float = EDGE_FRACTION
) -> Growth:
    """Growth of the samples with start <= t <= end: fitted line and first-vs-last edges."""
    window = sorted((t, y) for t, y in points if start <= t <= end)
    if not window:
        return Growth(0, None, None, None, None, None, None, None)
    edge = (end - start) * edge_fraction
    # At least one sample at each edge, so a short smoke window still compares something.
    first_values = [y for t, y in window if t <= start + edge] or [window[0][1]]
    last_values = [y for t, y in window if t >= end - edge] or [window[-1][1]]
    first, last = statistics.median(first_values), statistics.median(last_values)
    slope = linear_slope(window)
    fitted = slope * (end - start) if slope is not None else None
    worst = max(last - first, fitted if fitted is not None else last - first)
    return Growth(
        samples=len(window),
        first=first,
        last=last,
        first_to_last=last - first,
        fitted=fitted,
        per_minute=slope * 60 if slope is not None else None,
        relative=worst / first if first else None,
        floor_growth=min(last_values) - min(first_values),
    )


def within_bound(grown: Growth, *, fraction: float, absolute: float) -> bool | None:
    """Flat when both the fitted growth and last-vs-first stay under fraction × first or under `absolute`.

    None when there is nothing to judge (fewer than two samples in the window).
    """
    if grown.samples < 2 or grown.first is None or grown.first_to_last is None or grown.fitted is None:
        return None
    allowed = max(fraction * grown.first, absolute)
    return max(grown.fitted, grown.first_to_last) < allowed


def floor_within_bound(grown: Growth, *, fraction: float, absolute: float) -> bool | None:
    """Flat when the floor (each edge's minimum) rose less than fraction × first or `absolute`.

    For open fds: connections in flight make them swing by tens from one sample to the next, which
    a fitted line or a median follows; a leaked descriptor is never closed, so it raises the floor.
    """
    if grown.samples < 2 or grown.first is None or grown.floor_growth is None:
        return None
    return grown.floor_growth < max(fraction * grown.first, absolute)


# Latency per minute ----------------------------------------------------------------------------------


def per_minute(points: Iterable[tuple[float, float]], minutes: int | None = None) -> list[dict[str, Any]]:
    """(t seconds, latency) → one row per minute of t: count, nearest-rank p50 and p99 (None when empty).

    Every minute from 0 to the last (or `minutes`) gets a row, so a minute with no job shows as such.
    """
    by_minute: dict[int, list[float]] = {}
    for t, latency in points:
        if t >= 0:
            by_minute.setdefault(int(t // 60), []).append(latency)
    count = minutes if minutes is not None else (max(by_minute) + 1 if by_minute else 0)
    return [
        {
            "minute": minute,
            "count": len(by_minute.get(minute, [])),
            "p50": e2e.percentile(by_minute.get(minute, []), 50),
            "p99": e2e.percentile(by_minute.get(minute, []), 99),
        }
        for minute in range(max(count, max(by_minute, default=-1) + 1))
    ]


# Processes -------------------------------------------------------------------------------------------


@dataclass
class Series:
    """One process of the stack, sampled over the run."""

    group: str  # the stack's name for its process group: receiver, pubsub, ...
    role: str  # master, worker-1, java, gcloud, fake-gcs-server, ...
    pid: int
    kind: str  # relay, emulator or simulator
    # t, RSS bytes, open fds, threads, CPU seconds used so far (user + system)
    samples: list[tuple[float, int, int, int, float]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.group}/{self.role}"


def kind_of(group: str) -> str:
    if group in EMULATOR_GROUPS:
        return "emulator"
    return "simulator" if group in SIMULATOR_GROUPS else "relay"


def read_proc(pid: int) -> tuple[int, int, int, int, float, str] | None:
    """(pgid, RSS bytes, open fds, threads, CPU seconds, comm) of one process; None once it is gone."""
    base = Path("/proc") / str(pid)
    try:
        stat = (base / "stat").read_text()
        status = (base / "status").read_text()
        fds = len(os.listdir(base / "fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    after = stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, ..., utime (11), stime (12)
    pgid = int(after[2])
    cpu_s = (int(after[11]) + int(after[12])) / CLOCK_TICKS
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    threads = int(fields.get("Threads", "0").strip())
    return pgid, rss, fds, threads, cpu_s, comm


class Sampler:
    """Samples every process of the stack's groups every `every` seconds on a thread of its own."""

    def __init__(self, groups: Mapping[str, int], every: float, origin: float) -> None:
        self.groups = {pgid: name for name, pgid in groups.items()}
        self.every = every
        self.origin = origin  # monotonic time of t = 0 (the first submit)
        self.series: dict[int, Series] = {}
        # The whole machine's CPU busy % since the previous round: other work on these shared cores
        # slows the stack, and this tells such a slowdown from one of relay's own.
        self.machine: list[tuple[float, float | None]] = []
        self._cpu_before = cpu_totals()
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        # Bounded by stop(): the run's global timeout ends everything else, and this thread is a daemon.
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def sample(self) -> None:
        t = round(time.monotonic() - self.origin, 2)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            read = read_proc(int(entry))
            if read is None or read[0] not in self.groups:
                continue
            pgid, rss, fds, threads, cpu_s, comm = read
            series = self.series.get(int(entry))
            if series is None:
                series = self.series[int(entry)] = self._new_series(int(entry), pgid, comm)
            series.samples.append((t, rss, fds, threads, round(cpu_s, 2)))
        now = cpu_totals()
        self.machine.append((t, busy_between(self._cpu_before, now)))
        self._cpu_before = now
        self.rounds += 1

    def _new_series(self, pid: int, pgid: int, comm: str) -> Series:
        group = self.groups[pgid]
        if kind_of(group) == "relay":
            # replicate_relay.serve runs gunicorn in the group's leader; every other process is a worker.
            workers = sum(1 for s in self.series.values() if s.group == group and s.role.startswith("worker"))
            role = "master" if pid == pgid else f"worker-{workers + 1}"
        else:
            # gcloud's Python wrapper and the emulator's shell script sit above each JVM.
            base = "simulator" if group == "simulator" else ROLE_NAMES.get(comm, comm)
            same = sum(1 for s in self.series.values() if s.group == group and s.role.split("-")[0] == base)
            role = base if not same else f"{base}-{same + 1}"
        return Series(group=group, role=role, pid=pid, kind=kind_of(group))


def cpu_totals() -> tuple[int, int]:
    """(all, idle + iowait) jiffies of the machine so far, from /proc/stat's first line."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    return sum(fields), fields[3] + fields[4]


def busy_between(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """The machine's CPU busy % between two cpu_totals() readings."""
    total = after[0] - before[0]
    return round(100 * (1 - (after[1] - before[1]) / total), 1) if total > 0 else None


def stack_groups(stack: LocalStack) -> dict[str, int]:
    """The stack's name for each process group → its pgid (each ManagedProcess leads its own)."""
    groups = {name: process.pid for name, process in stack.emulators.items()}
    groups.update({name: process.pid for name, process in stack.functions.items()})
    return {name: pid for name, pid in groups.items() if pid is not None}


# Judging ---------------------------------------------------------------------------------------------


def cores_used(samples: Sequence[tuple[float, int, int, int, float]], start: float, end: float) -> float | None:
    """Mean CPU cores one process used over [start, end]: CPU seconds gained over wall seconds passed."""
    window = [(t, cpu) for t, _, _, _, cpu in samples if start <= t <= end]
    if len(window) < 2 or window[-1][0] <= window[0][0]:
        return None
    return round((window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]), 3)


def judge_series(series: Series, start: float, end: float) -> dict[str, Any]:
    """One process's growth over [start, end], in RSS, fds and threads, with the bound's verdict."""
    rss = growth([(t, float(rss)) for t, rss, _, _, _ in series.samples], start, end)
    fds = growth([(t, float(fds)) for t, _, fds, _, _ in series.samples], start, end)
    threads = growth([(t, float(threads)) for t, _, _, threads, _ in series.samples], start, end)
    rss_ok = within_bound(rss, fraction=BOUND_FRACTION, absolute=BOUND_RSS_BYTES)
    fds_ok = floor_within_bound(fds, fraction=BOUND_FRACTION, absolute=BOUND_FDS)
    verdicts = [ok for ok in (rss_ok, fds_ok) if ok is not None]
    return {
        "name": series.name,
        "group": series.group,
        "role": series.role,
        "pid": series.pid,
        "kind": series.kind,
        "judged": series.kind == "relay",
        "rss": asdict(rss),
        "fds": asdict(fds),
        "threads": asdict(threads),
        "rss_within_bound": rss_ok,
        "fds_within_bound": fds_ok,
        "flat": all(verdicts) if verdicts else None,
        "rss_mib_max": round(max((sample[1] for sample in series.samples), default=0) / MIB, 1),
        "fds_max": max((sample[2] for sample in series.samples), default=0),
        "cores": cores_used(series.samples, start, end),
    }


# The run ---------------------------------------------------------------------------------------------


def stack_config(args: argparse.Namespace) -> StackConfig:
    if STACK_LOG_DIR.exists():
        shutil.rmtree(STACK_LOG_DIR)  # the processes append to their logs: start each run clean
    return StackConfig.on_free_ports(
        reconcile_every=args.reconcile_every,  # Cloud Scheduler's part: the stack's own scheduler
        log_dir=STACK_LOG_DIR,
        telemetry_dir=STACK_LOG_DIR / "telemetry",
        extra_env={"RELAY_LOG_LEVEL": "INFO", "RELAY_RECONCILE_QUIET_SECONDS": str(QUIET_S)},
        start_timeout=args.start_timeout,
    )


def submit_steady(
    stack: LocalStack, db: Any, args: argparse.Namespace, begin: float, deadline: float
) -> list[e2e.Submitted]:
    """Prediction i submitted at `begin` + i/R seconds, each as plan(i) says, until the load's end."""
    total = int(args.minutes * 60 * args.rate)
    records = [e2e.Submitted(index, round(index / args.rate, 4)) for index in range(total)]
    every = max(int(args.rate * 60), 1)  # a progress line a minute
    e2e.submit_paced(
        stack,
        db,
        records,
        begin=begin,
        deadline=deadline,
        inputs=lambda index: plan(index).inputs,
        label="soak",
        workers=SUBMIT_WORKERS,
        progress=lambda index: f"minute {index // every}: submitted {index} of {total}" if index % every == 0 else None,
    )
    return records


def simulator_stats(stack: LocalStack) -> dict[str, int]:
    """The simulator's /v1 calls by handler (GET /_sim/stats): the submits plus the reconciler's reads."""
    import httpx  # noqa: PLC0415

    try:
        response = httpx.get(f"{stack.simulator_url}/_sim/stats", timeout=10)
        response.raise_for_status()
        return {str(k): int(v) for k, v in response.json().get("calls", {}).items()}
    except (httpx.HTTPError, ValueError) as error:
        print(f"warning: GET /_sim/stats: {error}", file=sys.stderr)
        return {}


@dataclass
class Outcome:
    """What the drain and the read-back found, per prediction."""

    results: list[e2e.PredictionResult]
    jobs: dict[str, dict[str, Any]]
    submitted: list[e2e.Submitted]
    facts: e2e.LogFacts


def read_back(stack: LocalStack, db: Any, submitted: list[e2e.Submitted], drain_until: float) -> Outcome:
    """Wait (bounded) for every job to be final, then run bench/e2e.py's lost check on every prediction."""
    ok = [record for record in submitted if record.prediction_id and record.job_id]
    e2e.wait_for_jobs(db, [record.job_id for record in ok if record.job_id], drain_until)
    back = e2e.read_back(
        db, stack.simulator_url, ok, deliveries_until=drain_until + 60, records_until=drain_until + 120
    )
    facts = e2e.read_logs(STACK_LOG_DIR)
    return Outcome(results=back.assess(ok, facts), jobs=back.jobs, submitted=submitted, facts=facts)


def check_jobs(outcome: Outcome) -> dict[str, Any]:
    """Lost webhooks, and every job final in the state (and with the files) plan() steered it to."""
    wrong: list[str] = []
    by_kind: dict[str, Counter[str]] = {}
    for result in outcome.results:
        steered = plan(result.index)
        by_kind.setdefault(steered.kind, Counter())[str(result.state)] += 1
        if result.state != steered.expected:
            wrong.append(f"{result.index} ({steered.kind}): {result.state}, expected {steered.expected}")
        elif steered.expected == "succeeded" and result.outputs_archived != steered.files:
            wrong.append(f"{result.index} ({steered.kind}): {result.outputs_archived} of {steered.files} files")
    lost = [webhook_id for result in outcome.results for webhook_id in result.lost]
    refused = [record for record in outcome.submitted if record.error]
    return {
        "submitted": sum(1 for record in outcome.submitted if record.job_id),
        "refused": len(refused),
        "refused_examples": [record.error for record in refused[:5]],
        "final": sum(1 for result in outcome.results if result.state in e2e.TERMINAL),
        "states_by_kind": {kind: dict(counter) for kind, counter in sorted(by_kind.items())},
        "not_as_steered": len(wrong),
        "not_as_steered_examples": wrong[:20],
        "acknowledged_webhook_ids": sum(result.acknowledged for result in outcome.results),
        "lost": len(lost),
        "lost_ids": lost[:50],
    }


def latency_points(outcome: Outcome, wall_begin: float, *, reconciled: bool) -> list[tuple[float, float]]:
    """(completed_at in seconds after the first submit, end-to-end latency) of the webhook-ended or reconciled jobs."""
    points = []
    for result in outcome.results:
        if result.end_to_end_s is None or (plan(result.index).kind == "lost-final") != reconciled:
            continue
        completed_at = outcome.jobs.get(result.job_id or "", {}).get("completed_at")
        if completed_at is not None:
            points.append((completed_at.timestamp() - wall_begin, result.end_to_end_s))
    return points


def reconciler_runs(log_path: Path) -> dict[str, Any]:
    """The reconciler's runs, from its one summary line per run: how many, and what they checked and recovered.

    Jobs recovered beyond those whose final webhook was dropped are ones whose webhooks were slower
    than the quiet threshold (the reconciler got there first); they still end in the right state.
    """
    totals: Counter[str] = Counter()
    runs = 0
    for entry in e2e.log_entries(log_path):
        if entry.get("handler") == "reconciler" and "checked" in entry:
            runs += 1
            for key in ("checked", "recovered", "still_running", "errors"):
                if isinstance(entry.get(key), int):
                    totals[key] += entry[key]
    return {"runs": runs, **totals}


def services(facts: e2e.LogFacts) -> dict[str, dict[str, Any]]:
    """Receiver and handlers from their one log line per request: latency, the slowest, outcomes.

    The Pub/Sub emulator pushes at most 2 messages at a time per subscription, so one handler
    request stuck for a minute holds half of its subscription's pipeline for that minute.
    """
    found = {}
    for process in ("receiver", "job-status", "archive-outputs"):
        slowest = max((end - start for start, end in facts.spans.get(process, [])), default=None)
        found[process] = {
            **facts.service(process),
            "max_ms": round(slowest * 1000, 1) if slowest is not None else None,
            "over_10s": sum(1 for start, end in facts.spans.get(process, []) if end - start > 10),
            "outcomes": dict(facts.outcomes.get(process, {})),
        }
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0, help="minutes of steady load (default 30)")
    parser.add_argument("--rate", type=float, default=2.0, help="predictions submitted per second (default 2)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between /proc samples (default 10)")
    parser.add_argument("--reconcile-every", type=float, default=20.0, help="scheduler period, s (default 20)")
    parser.add_argument("--duplicate-probability", type=float, default=0.05, help="simulator chaos (default 0.05)")
    parser.add_argument("--reorder-probability", type=float, default=0.1, help="simulator chaos (default 0.1)")
    parser.add_argument("--drain", type=float, default=180.0, help="at most this long after the load, s (default 180)")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="per process at start-up (default 120)")
    parser.add_argument("--timeout", type=float, help="global bound in seconds (default: from the minutes)")
    args = parser.parse_args(argv)
    if not 1 <= args.minutes <= 24 * 60:
        parser.error("--minutes must be between 1 and 1440")
    if not 0.1 <= args.rate <= 20:
        parser.error("--rate must be between 0.1 and 20 a second")
    if not 1 <= args.sample_every <= 300 or not 5 <= args.reconcile_every <= 600 or not 30 <= args.drain <= 1800:
        parser.error("--sample-every must be 1-300 s, --reconcile-every 5-600 s, --drain 30-1800 s")
    for name in ("duplicate_probability", "reorder_probability"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    if args.timeout is None:
        # Start-up, the load (slack for a busy machine), the drain, the read-back.
        args.timeout = 3 * args.start_timeout + 1.2 * args.minutes * 60 + args.drain + 600
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    processes = e2e.StackProcesses()

    def body() -> int:
        with e2e.global_timeout(args.timeout):
            return run(args, processes)

    return common.run_guarded(processes, body)


def run(args: argparse.Namespace, processes: e2e.StackProcesses) -> int:
    started = time.monotonic()
    deadline = started + args.timeout - 15  # cooperative; the alarm at args.timeout is the backstop
    print(
        f"settings: {args.minutes:g} min at {args.rate:g}/s (2% lose their final webhook, 10% fail, the rest "
        f"1-2 files of {FILE_BYTES:,} bytes); duplicates {args.duplicate_probability:g}, reorders "
        f"{args.reorder_probability:g}; reconciler every {args.reconcile_every:g} s (quiet {QUIET_S} s); /proc "
        f"every {args.sample_every:g} s; drain at most {args.drain:g} s; global timeout {args.timeout:.0f} s"
    )
    busy = common.check_busy()
    code = common.code_version()  # as the stack starts: its processes load the code now
    stack = LocalStack(stack_config(args))
    processes.stack = stack
    print("starting the local stack …", flush=True)
    stack.start()
    os.environ.update(stack.client_env)
    print(f"stack ready after {time.monotonic() - started:.0f} s; logs in {STACK_LOG_DIR.relative_to(REPO_ROOT)}/")
    e2e.configure_simulator(stack, args)

    from google.cloud import firestore  # noqa: PLC0415 - once the emulators' addresses are set

    db = firestore.Client(project=stack.config.project)
    begin, wall_begin = time.monotonic() + 0.5, time.time() + 0.5
    sampler = Sampler(stack_groups(stack), args.sample_every, origin=begin)
    sampler.start()
    try:
        print(f"\n== {args.minutes:g} minutes of load", flush=True)
        submitted = submit_steady(stack, db, args, begin, deadline)
        load_end = time.monotonic() - begin
        print(f"\n== drain: at most {args.drain:g} s for every job to be final", flush=True)
        outcome = read_back(stack, db, submitted, min(time.monotonic() + args.drain, deadline))
        stats = simulator_stats(stack)
    finally:
        sampler.stop()
    processes.stop_all()  # the stack: not needed for the report

    document = summarise(args, busy=busy, sampler=sampler, outcome=outcome, wall_begin=wall_begin, stats=stats)
    document["code"] = code
    document["timings"] = {"load_s": round(load_end, 1), "total_s": round(time.monotonic() - started, 1)}
    common.write_results(RESULTS_JSON, document)  # first: a failing printout must not lose the run
    report(document)
    print(f"\nwrote {RESULTS_JSON.relative_to(REPO_ROOT)}; stack logs in {STACK_LOG_DIR.relative_to(REPO_ROOT)}/")
    for problem in document["problems"]:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if document["problems"] else 0


def summarise(
    args: argparse.Namespace,
    *,
    busy: float | None,
    sampler: Sampler,
    outcome: Outcome,
    wall_begin: float,
    stats: Mapping[str, int],
) -> dict[str, Any]:
    load_s = args.minutes * 60
    start, end = judged_window(load_s)
    processes = [judge_series(series, start, end) for series in sampler.series.values()]
    processes.sort(key=lambda p: (["relay", "simulator", "emulator"].index(p["kind"]), p["name"]))
    judged = [p for p in processes if p["judged"]]
    jobs = check_jobs(outcome)
    busy_values = [value for _, value in sampler.machine if value is not None]
    webhook_points = latency_points(outcome, wall_begin, reconciled=False)
    reconciled_points = latency_points(outcome, wall_begin, reconciled=True)
    # One row per minute for both tables, up to the last job completed (late ones finish in the drain).
    last = max((t for t, _ in webhook_points + reconciled_points), default=0.0)
    minutes = max(math.ceil(args.minutes), int(last // 60) + 1)
    problems = []
    if jobs["lost"]:
        problems.append(f"{jobs['lost']} acknowledged webhook(s) lost: {jobs['lost_ids'][:5]}")
    if jobs["not_as_steered"]:
        problems.append(f"{jobs['not_as_steered']} job(s) not final as steered: {jobs['not_as_steered_examples'][:5]}")
    if jobs["refused"]:
        problems.append(f"{jobs['refused']} submit(s) refused: {jobs['refused_examples'][:2]}")
    if not judged:
        problems.append("no process of relay's was sampled")
    return {
        **common.results_header(busy),
        "settings": {
            "minutes": args.minutes,
            "rate_per_s": args.rate,
            "smoke": args.minutes < 30,
            "prediction_duration_s": PREDICTION_S,
            "file_bytes": FILE_BYTES,
            "mix": {"lost-final": "1 in 50 (sim_drop_final)", "failed": "1 in 10", "files": "the rest, 1 or 2 files"},
            "duplicate_probability": args.duplicate_probability,
            "reorder_probability": args.reorder_probability,
            "reconcile_every_s": args.reconcile_every,
            "reconcile_quiet_s": QUIET_S,
            "sample_every_s": args.sample_every,
            "drain_s": args.drain,
            "timeout_s": args.timeout,
        },
        "judged_window_s": [round(start, 1), round(end, 1)],
        "bounds": {
            "fraction": BOUND_FRACTION,
            "rss_bytes": BOUND_RSS_BYTES,
            "fds": BOUND_FDS,
            "edge_fraction": EDGE_FRACTION,
            "rule": "relay's processes: RSS's fitted growth (slope × window) and the last sixth's median minus the "
            "first sixth's must both stay under 5% of the first sixth's median or under 10 MiB; open fds' floor "
            "(the last sixth's minimum minus the first sixth's) under 5% or 10 (connections in flight make fds "
            "swing; a leak raises the floor); emulators and simulator reported, judged separately",
        },
        "flat": {
            "relay_processes": len(judged),
            "met": all(p["flat"] is not False for p in judged) if judged else None,
            "not_flat": [p["name"] for p in judged if p["flat"] is False],
        },
        "jobs": jobs,
        "latency_per_minute": per_minute(webhook_points, minutes),
        "reconciled_per_minute": per_minute(reconciled_points, minutes),
        "end_to_end_s": e2e.distribution([latency for _, latency in webhook_points]),
        "reconciled_end_to_end_s": e2e.distribution([latency for _, latency in reconciled_points]),
        "simulator_calls": dict(stats),
        "reconciler": reconciler_runs(STACK_LOG_DIR / "reconciler.log"),
        "services": services(outcome.facts),
        "machine_busy_percent": {
            "mean": round(statistics.fmean(busy_values), 1) if busy_values else None,
            "max": max(busy_values, default=None),
            "series": sampler.machine,
        },
        "sample_rounds": sampler.rounds,
        "processes": processes,
        "samples": {
            p.name: {"pid": p.pid, "kind": p.kind, "t_rss_fds_threads": p.samples} for p in sampler.series.values()
        },
        "problems": problems,
    }


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MIB:+.1f} MiB"


def report(document: Mapping[str, Any]) -> None:
    jobs, start_end = document["jobs"], document["judged_window_s"]
    print(f"\n== results ({document['timings']['total_s']:.0f} s in all)\n")
    print(
        f"jobs: {jobs['submitted']} submitted, {jobs['final']} final, {jobs['not_as_steered']} not as steered; "
        f"by kind {jobs['states_by_kind']}; lost {jobs['lost']} of {jobs['acknowledged_webhook_ids']:,} "
        f"acknowledged webhook ids"
    )
    print(f"\ngrowth over the judged window {start_end[0]:g}-{start_end[1]:g} s (fitted; last sixth vs first):")
    rows = [
        [
            p["name"],
            p["kind"],
            f"{p['rss']['first'] / MIB:.1f}" if p["rss"]["first"] is not None else "n/a",
            mib(p["rss"]["fitted"]),
            mib(p["rss"]["first_to_last"]),
            f"{p['fds']['first']:g}" if p["fds"]["first"] is not None else "n/a",
            f"{p['fds']['fitted']:+.1f}" if p["fds"]["fitted"] is not None else "n/a",
            f"{p['fds']['floor_growth']:+g}" if p["fds"].get("floor_growth") is not None else "n/a",
            {True: "flat", False: "GROWS", None: "n/a"}[p["flat"]] + ("" if p["judged"] else " (apart)"),
        ]
        for p in document["processes"]
    ]
    common.print_table(
        ["process", "kind", "RSS MiB", "RSS fit", "RSS last-first", "fds", "fds fit", "fds floor", "verdict"], rows
    )
    flat = document["flat"]
    print(f"\nreconciler: {document['reconciler']}; simulator /v1 calls: {document['simulator_calls']}")
    for process, info in document["services"].items():
        print(
            f"{process}: {info['requests']} requests, p50 {info['p50_ms']} ms, p99 {info['p99_ms']} ms, slowest "
            f"{info['max_ms']} ms, {info['over_10s']} over 10 s; {info['outcomes']}"
        )
    machine = document["machine_busy_percent"]
    print(f"machine CPU busy during the run: mean {machine['mean']}%, max {machine['max']}% (2 cores, shared)")
    print(f"\nrelay's processes flat (bound < 5% or < 10 MiB / 10 fds): {flat['met']} {flat['not_flat'] or ''}")
    print("\nlatency per minute (webhook-ended jobs; completed_at → final):")
    common.print_table(
        ["minute", "count", "p50", "p99", "reconciled", "reconciled p99"],
        [
            [str(row["minute"]), str(row["count"]), e2e.fmt_s(row["p50"]), e2e.fmt_s(row["p99"]),
             str(rec["count"]), e2e.fmt_s(rec["p99"])]
            for row, rec in zip(document["latency_per_minute"], document["reconciled_per_minute"], strict=True)
        ],
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
