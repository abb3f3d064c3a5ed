"""Webhook load: the real receiver against no-op functions-framework functions, in one run.

Each of SERVERS alone on 127.0.0.1, hit with validly signed webhooks: peak with wrk, latency at half
that peak with hey, CPU per request from /proc. Writes bench/results/webhook_load.json and the
webhook_load section of docs/BENCHMARKS.md. `--hostile LABEL` measures instead the receiver's peak
RSS under hostile 4 MiB bursts (section webhook_hostile; each LABEL is kept as a row).

    .venv/bin/python bench/webhook_load.py [--duration 10] [--connections 32] [--quick] [--hostile LABEL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script: sys.path[0] is bench/, the packages are one level up

import common  # noqa: E402
from common import LOG_DIR, RESULTS_DIR, BenchError, Processes  # noqa: E402

from replicate_relay.devstack.processes import ManagedProcess, free_port, http_answers  # noqa: E402
from replicate_relay.devstack.stack import DEV_WEBHOOK_SECRET  # noqa: E402
from replicate_relay.testing import SignedWebhook, succeeded_webhook  # noqa: E402

HOST = "127.0.0.1"
PROJECT = "local-project"
TOPIC = "replicate-events"
WRK_THREADS = 1  # 2 cores: one for wrk, one for the server (and the emulator, for the receiver)
HEY_CONNECTIONS = 16
ALLOWED_FAILURES = 5  # "a handful": more non-2xx answers than this from a receiver fails the run
MAX_SAMPLES = 20_000  # sorted half-peak latencies kept per server for the plot (evenly spaced ranks)
WRK_PERCENTILES = (50.0, 90.0, 99.0, 99.9, 100.0)
TARGET_PEAK_RATIO = 0.60  # of the --asgi no-op's peak, measured in the same run
TARGET_P99_HALF_PEAK_MS = 25.0


@dataclass(frozen=True)
class Server:
    key: str
    label: str
    source: str
    target: str
    env: tuple[tuple[str, str], ...] = ()  # on top of the receiver's settings

    @property
    def receiver(self) -> bool:
        """Gets the receiver's settings, must answer {"status": "accepted"}, and has a /health."""
        return self.target == "receive"


NO_PUBSUB, NO_OTEL = "bench/receiver_no_pubsub.py", (("OTEL_SDK_DISABLED", "true"),)
SERVERS = (
    Server("noop-asgi", "no-op, --asgi (ceiling)", "bench/noop.py", "noop_async"),
    Server("receiver", "receiver, --asgi", "receiver/main.py", "receive"),
    # Two rows that take one part out of the receiver each, to show where its time goes.
    Server("receiver-no-pubsub", "receiver, Pub/Sub replaced by an instant publisher", NO_PUBSUB, "receive"),
    Server("receiver-no-telemetry", "receiver, OTEL_SDK_DISABLED=true", "receiver/main.py", "receive", NO_OTEL),
    Server("noop-flask", "no-op, Flask (default mode)", "bench/noop.py", "noop_sync"),
)


def ensure_tools() -> dict[str, str]:
    """wrk and hey on PATH, installed with apt-get (as root) if missing; their paths."""
    if any(shutil.which(tool) is None for tool in ("wrk", "hey")) and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], env=env, check=False, timeout=600)
        install = ["apt-get", "install", "-y", "--no-install-recommends", "wrk", "hey"]
        subprocess.run(install, env=env, check=False, timeout=600)
    paths = {tool: shutil.which(tool) for tool in ("wrk", "hey")}
    if not all(paths.values()):
        raise BenchError("wrk and hey are needed: `sudo apt-get install -y wrk hey`")
    return {tool: str(path) for tool, path in paths.items()}


def request_files(webhook: SignedWebhook, folder: Path) -> tuple[Path, Path]:
    """The body file (for hey and wrk) and a wrk Lua script that sends that one request."""

    def lua(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    body = folder / f"{webhook.webhook_id}.json"
    body.write_bytes(webhook.body)
    lines = ['wrk.method = "POST"', *(f"wrk.headers[{lua(k)}] = {lua(v)}" for k, v in webhook.headers.items())]
    lines += [
        f"local file = assert(io.open({lua(str(body))}, 'rb'))",
        "wrk.body = file:read('*a')",
        "file:close()",
        # wrk's --latency table stops at p99; its histogram (1 µs buckets) answers any percentile.
        "done = function(summary, latency, requests)",
        f"  for _, p in ipairs({{{', '.join(f'{p:g}' for p in WRK_PERCENTILES)}}}) do",
        "    io.write(string.format('relay-bench percentile %g %d\\n', p, latency:percentile(p)))",
        "  end",
        "end",
    ]
    script = folder / f"{webhook.webhook_id}.lua"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return body, script


def check_one_request(url: str, webhook: SignedWebhook, server: Server) -> None:
    """One request before any load: a wrong signature or a broken publish fails here, clearly."""
    request = urllib.request.Request(url, data=webhook.body, headers=webhook.headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback URL built here
            status, text = response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode("utf-8", "replace")
    except OSError as error:
        raise BenchError(f"the {server.label} did not answer a first webhook: {error}") from None
    if status != 200 or (server.receiver and json.loads(text).get("status") != "accepted"):
        raise BenchError(f"the {server.label} did not accept a first, validly signed webhook: {status} {text[:300]}")


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise BenchError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """wrk's rate, failures and percentiles: the Lua hook's (µs) first, its --latency table for p50/p99 else."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+\w+),", output, re.MULTILINE)
    if not rate or not total:
        raise BenchError(f"cannot read wrk's output: {output.strip()[-400:]}")
    table = {float(p): _wrk_ms(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", output, re.MULTILINE)}
    exact = {float(p): int(us) / 1000 for p, us in re.findall(r"^relay-bench percentile ([\d.]+) (\d+)$", output, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "requests": int(total.group(1)),
        "duration_s": _wrk_ms(total.group(2)) / 1000,
        "requests_per_s": float(rate.group(1)),
        **{key: exact.get(p, table.get(p)) for key, p in PERCENTILE_KEYS.items()},
        "max_ms": exact.get(100.0),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(map(int, sockets.groups())) if sockets else 0,
    }


PERCENTILE_KEYS = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p999_ms": 99.9}


def parse_hey_csv(output: str, *, sent: int) -> dict[str, Any]:
    """hey's `-o csv`: one line per request that got an answer (response-time,…,status-code,offset, in s).

    hey leaves requests that failed at the socket out of the CSV, so those are `sent` minus the lines.
    """
    lines = output.strip().splitlines()
    if not lines or not lines[0].startswith("response-time,"):
        raise BenchError(f"cannot read hey's CSV output: {output.strip()[:400]}")
    latencies, ends, codes = [], [], {}
    for line in lines[1:]:
        fields = line.split(",")
        seconds, code, offset = float(fields[0]), fields[6], float(fields[7])
        codes[code] = codes.get(code, 0) + 1
        if code.startswith("2"):
            latencies.append(seconds * 1000)
        ends.append(offset + seconds)
    latencies.sort()
    duration, failed = max(ends, default=0.0), max(sent - len(lines) + 1, 0)
    kept, step = min(len(latencies), MAX_SAMPLES), max((len(latencies) - 1) / (MAX_SAMPLES - 1), 1.0)
    return {
        "requests": len(lines) - 1,
        "duration_s": round(duration, 3),
        "requests_per_s": round((len(lines) - 1) / duration, 1) if duration else 0.0,
        **{key: common.percentile(latencies, p) for key, p in PERCENTILE_KEYS.items()},
        "status_codes": dict(sorted(codes.items())),
        "non_2xx": sum(count for code, count in codes.items() if not code.startswith("2")),
        "socket_errors": failed,
        "errors": {"no answer (socket error or timeout; hey's CSV omits them)": failed} if failed else {},
        "latency_samples_us": [round(latencies[round(i * step)] * 1000) for i in range(kept)],
    }


def run_tool(argv: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{argv[0]} did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:3])} … failed ({done.returncode}): {(done.stderr or done.stdout)[-400:]}")
    return done.stdout


def run_wrk(wrk: str, url: str, script: Path, *, connections: int, seconds: float) -> dict[str, Any]:
    argv = [wrk, f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url]
    return {"tool": "wrk", "connections": connections, **parse_wrk(run_tool(argv, timeout=seconds + 60))}


def run_hey(hey: str, url: str, webhook: SignedWebhook, body: Path, *, rate: float, seconds: float) -> dict[str, Any]:
    per_worker = max(rate / HEY_CONNECTIONS, 0.01)
    # A fixed number of requests (not -z): hey's CSV omits failed requests, so the count shows them.
    sent = max(round(per_worker * seconds), 1) * HEY_CONNECTIONS
    argv = [hey, "-n", str(sent), "-c", str(HEY_CONNECTIONS), "-q", f"{per_worker:.2f}", "-m", "POST", "-o", "csv"]
    for name, value in webhook.headers.items():
        argv += ["-H", f"{name}: {value}"] if name.lower() != "content-type" else []
    argv += ["-T", webhook.headers["content-type"], "-D", str(body), url]
    parsed = parse_hey_csv(run_tool(argv, timeout=seconds * 2 + 60), sent=sent)
    return {
        "tool": "hey",
        "connections": HEY_CONNECTIONS,
        "target_rate": round(per_worker * HEY_CONNECTIONS, 1),
        **parsed,
    }


def create_topic(emulator_host: str) -> None:
    import google.cloud.pubsub_v1 as pubsub_v1  # noqa: PLC0415 - only once the emulator runs
    from google.api_core import exceptions as google_exceptions  # noqa: PLC0415

    os.environ["PUBSUB_EMULATOR_HOST"] = emulator_host
    publisher = pubsub_v1.PublisherClient()
    with contextlib.suppress(google_exceptions.AlreadyExists):
        publisher.create_topic(request={"name": publisher.topic_path(PROJECT, TOPIC)}, timeout=30)
    publisher.transport.close()


def start_server(processes: Processes, server: Server, receiver_env: Mapping[str, str]) -> tuple[ManagedProcess, int]:
    """One server started alone on a free loopback port, once it answers."""
    port = free_port(HOST)
    print(f"\n== {server.label}: {server.source} {server.target} on http://{HOST}:{port}/", flush=True)
    env = common.project_env({**receiver_env, **dict(server.env), "K_SERVICE": server.key} if server.receiver else {})
    argv = [sys.executable, "-m", "functions_framework", "--source", server.source, "--target", server.target]
    argv += ["--host", HOST, "--port", str(port), *(["--asgi"] if server.target != "noop_sync" else [])]
    ready = http_answers(f"http://{HOST}:{port}{'/health' if server.receiver else '/'}")
    log = common.fresh_log_path(server.key)
    managed = ManagedProcess(server.label, argv, log_path=log, ready=ready, env=env, cwd=REPO_ROOT)
    return processes.start(managed, 60), port


@dataclass(frozen=True)
class Bench:
    """What every server's measurement shares: the options, the tools, the emulator, the receiver's settings."""

    args: argparse.Namespace
    tools: Mapping[str, str]
    processes: Processes
    emulator: ManagedProcess
    receiver_env: Mapping[str, str]
    workdir: Path


def bench_server(server: Server, bench: Bench) -> dict[str, Any]:
    """Peak (wrk, with CPU from /proc) and half peak (hey) of one server started alone."""
    args, tools, processes, emulator, workdir = bench.args, bench.tools, bench.processes, bench.emulator, bench.workdir
    process, port = start_server(processes, server, bench.receiver_env)
    url, log = f"http://{HOST}:{port}/", process.log_path
    try:
        # Signed just before use: the signature is valid for 300 s, and each phase is re-signed.
        webhook = succeeded_webhook(DEV_WEBHOOK_SECRET)
        body, script = request_files(webhook, workdir)
        check_one_request(url, webhook, server)
        run_wrk(tools["wrk"], url, script, connections=args.connections, seconds=args.warmup)
        before = common.group_cpu_seconds(process.pid), common.group_cpu_seconds(emulator.pid)
        peak = run_wrk(tools["wrk"], url, script, connections=args.connections, seconds=args.duration)
        after = common.group_cpu_seconds(process.pid), common.group_cpu_seconds(emulator.pid)
        seconds, requests = peak["duration_s"] or 1.0, max(peak["requests"], 1)
        cpu = {
            "server_cores": round((after[0] - before[0]) / seconds, 3),
            "server_us_per_request": round((after[0] - before[0]) / requests * 1e6, 1),
            "emulator_cores": round((after[1] - before[1]) / seconds, 3),
            "emulator_us_per_request": round((after[1] - before[1]) / requests * 1e6, 1),
        }
        print(f"   peak {peak['requests_per_s']:,.0f} req/s, {cpu['server_us_per_request']:,.0f} µs CPU a request")
        webhook = succeeded_webhook(DEV_WEBHOOK_SECRET)
        body, script = request_files(webhook, workdir)
        half = run_hey(tools["hey"], url, webhook, body, rate=peak["requests_per_s"] / 2, seconds=args.duration)
        print(f"   half peak {half['requests_per_s']:,.0f} req/s, p99 {common.ms(half['p99_ms'])}", flush=True)
        failed = peak["non_2xx"] + peak["socket_errors"] + half["non_2xx"] + half["socket_errors"]
        if server.receiver and failed > ALLOWED_FAILURES:
            raise BenchError(f"the {server.label} failed {failed} requests (more than {ALLOWED_FAILURES}); see {log}")
        if not process.alive():
            raise BenchError(f"the {server.label} exited during the run; its log ends with: {process.log_tail()}")
    finally:
        processes.stop(process)
    return {"key": server.key, "label": server.label, "peak": peak, "half": half, "cpu": cpu}


def summarise(servers: list[dict[str, Any]]) -> dict[str, Any]:
    """The targets, and the CPU a request may use at the peak target (one worker: one event loop on at
    most one core) against the receiver's, split by difference between the rows."""
    by_key = {server["key"]: server for server in servers}
    ceiling = by_key["noop-asgi"]["peak"]["requests_per_s"]
    ratio = by_key["receiver"]["peak"]["requests_per_s"] / ceiling if ceiling else 0.0
    p99 = by_key["receiver"]["half"]["p99_ms"]
    spent = {key: server["cpu"]["server_us_per_request"] for key, server in by_key.items()}
    publishing = spent["receiver"] - spent["receiver-no-pubsub"]
    telemetry = spent["receiver"] - spent["receiver-no-telemetry"]
    return {
        "receiver_vs_noop_asgi_peak": round(ratio, 3),
        "budget": {
            "target_rps": round(TARGET_PEAK_RATIO * ceiling),
            "server_us_per_request_allowed": round(1e6 / (TARGET_PEAK_RATIO * ceiling), 1) if ceiling else 0.0,
            "split_us": {
                "framework": round(spent["noop-asgi"], 1),
                "publishing": round(publishing, 1),
                "telemetry": round(telemetry, 1),
                "the_rest": round(spent["receiver"] - spent["noop-asgi"] - publishing - telemetry, 1),
            },
        },
        "targets": {
            "peak_ratio": common.target(f">= {TARGET_PEAK_RATIO:.0%}", round(ratio, 3), ratio >= TARGET_PEAK_RATIO),
            "p99_at_half_peak_ms": common.target(
                f"< {TARGET_P99_HALF_PEAK_MS:g} ms", p99, p99 is not None and p99 < TARGET_P99_HALF_PEAK_MS
            ),
        },
    }


HOSTILE_REQUESTS, HOSTILE_BODY = 80, 4 * 1024 * 1024  # Cloud Run's concurrency, the inline body limit
HOSTILE_KINDS = {"unsigned": "no webhook headers", "forged": "well-formed headers, in time, wrong signature"}


async def hostile_burst(port: int, kind: str) -> dict[str, int]:
    """HOSTILE_REQUESTS concurrent 4 MiB POSTs of `kind` from one address; how many got each answer
    ("reset": the connection ended without one). Each reads its answer while it still sends."""
    fields = {"Content-Type": "application/json", "Content-Length": str(HOSTILE_BODY)}
    if kind == "forged":  # an id, a timestamp in the window and a v1 entry: only the HMAC can refuse it
        fields |= {"webhook-id": "msg_1", "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1,AA=="}
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode()
    body = b"{" + b" " * (HOSTILE_BODY - 2) + b"}"

    async def post() -> str:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"POST / HTTP/1.1\r\nHost: bench\r\n" + head + b"\r\n" + body)
        try:
            return (await asyncio.wait_for(reader.readline(), 60)).decode().split(" ")[1]
        except (ConnectionError, TimeoutError, IndexError):
            return "reset"
        finally:
            writer.transport.abort()

    return dict(Counter(await asyncio.gather(*(post() for _ in range(HOSTILE_REQUESTS)))))


def rss_mib(pgid: int | None, field: str) -> float:
    """The largest `field` (VmRSS now, VmHWM at its peak) of a process group's processes, in MiB."""
    kib = [0]
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError, ValueError):
            if os.getpgid(int(status.parent.name)) == pgid:
                kib += [int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith(field)]
    return round(max(kib) / 1024, 1)


def run_hostile(args: argparse.Namespace, processes: Processes) -> int:
    """Peak RSS of a fresh receiver (its Pub/Sub answered in process) under each kind of burst."""
    results = RESULTS_DIR / "webhook_hostile.json"
    document = json.loads(results.read_text()) if results.exists() else {"runs": {}}
    env = {"RELAY_PROJECT": PROJECT, "RELAY_WEBHOOK_SECRETS": DEV_WEBHOOK_SECRET}
    measured = {}
    for kind in HOSTILE_KINDS:
        process, port = start_server(processes, Server(kind, kind, NO_PUBSUB, "receive"), env)
        try:
            idle, answers = rss_mib(process.pid, "VmRSS:"), asyncio.run(hostile_burst(port, kind))
            measured[kind] = {"idle_rss_mib": idle, "peak_rss_mib": rss_mib(process.pid, "VmHWM:"), "answers": answers}
            print(f"   {kind}: {measured[kind]}", flush=True)
        finally:
            processes.stop(process)
    document["runs"][args.hostile] = {**common.results_header(common.check_busy()), "kinds": measured}
    common.publish("webhook_hostile", results, document, render_hostile)
    return 0


def render_hostile(document: Mapping[str, Any]) -> str:
    """One row per run (before and after a change) and kind of burst."""
    rows = []
    for label, run in document["runs"].items():
        for kind, one in run["kinds"].items():
            answers = ", ".join(f"{n} × {answer}" for answer, n in sorted(one["answers"].items()))
            rss = [f"{one['idle_rss_mib']:.0f}", f"{one['peak_rss_mib']:.0f}"]
            rows.append([f"{label} ({run['code']['commit']})", f"{kind}: {HOSTILE_KINDS[kind]}", *rss, answers])
    headers = ["run (commit)", f"{HOSTILE_REQUESTS} concurrent 4 MiB POSTs", "idle RSS MiB", "peak RSS MiB", "answers"]
    latest = document["runs"][next(reversed(document["runs"]))]
    return f"{common.provenance(latest)}\n\n{common.markdown_table(headers, rows)}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections at peak (default 32)")
    parser.add_argument("--quick", action="store_true", help="3 s measurements and a 1 s warm-up: a smoke check")
    parser.add_argument("--hostile", metavar="LABEL", help="instead: RSS under hostile bursts, kept as LABEL")
    args = parser.parse_args(argv)
    args.duration, args.warmup = (3.0, 1.0) if args.quick else (args.duration, 3.0)
    # Each signed webhook serves one warm-up + peak, or one half-peak run, and must stay valid throughout.
    if not 1 <= args.duration <= 240 or not 1 <= args.connections <= 1000:
        parser.error("--duration 1-240 s (a signed webhook is valid for 300 s), --connections 1-1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    processes = Processes()
    if args.hostile:
        return common.run_guarded(processes, lambda: run_hostile(args, processes))
    return common.run_guarded(processes, lambda: run(args, ensure_tools(), processes))


def run(args: argparse.Namespace, tools: Mapping[str, str], processes: Processes) -> int:
    busy = common.check_busy()
    print("starting the Pub/Sub emulator …", flush=True)
    stack = common.start_emulators(processes, "pubsub", log_dir=LOG_DIR / "webhook_load")
    emulator, emulator_host = stack.emulators["pubsub"], stack.emulator_env["PUBSUB_EMULATOR_HOST"]
    create_topic(emulator_host)
    receiver_env = {
        "RELAY_PROJECT": PROJECT,
        "PUBSUB_EMULATOR_HOST": emulator_host,
        "RELAY_WEBHOOK_SECRETS": DEV_WEBHOOK_SECRET,  # the local stack's: the Standard Webhooks test vector
        "RELAY_LOG_LEVEL": "WARNING",  # its per-request INFO line is not part of the measurement
    }
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as folder:
        bench = Bench(args, tools, processes, emulator, receiver_env, Path(folder))
        servers = [bench_server(server, bench) for server in SERVERS]
    processes.stop_all()  # the emulator: not needed for the report
    document = {
        **common.results_header(busy, gunicorn_workers=int(os.environ.get("WORKERS", "1"))),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "wrk_threads": WRK_THREADS,
            "wrk_connections": args.connections,
            "hey_connections": HEY_CONNECTIONS,
            "quick": args.quick,
        },
        "servers": servers,
        **summarise(servers),
    }
    common.publish("webhook_load", RESULTS_DIR / "webhook_load.json", document, render)
    return 0


CPU_KEYS = ("server_cores", "server_us_per_request", "emulator_cores", "emulator_us_per_request")
SPLIT = (
    ("framework", "functions-framework, uvicorn and the HTTP exchange (the no-op)"),
    ("publishing", "publishing to Pub/Sub and waiting for it (receiver − no-Pub/Sub row)"),
    ("telemetry", "OpenTelemetry (receiver − SDK-off row)"),
    ("the_rest", "verifying, checking and answering the webhook (what is left)"),
)


def render(document: Mapping[str, Any]) -> str:
    """The section: latency and throughput per server, CPU per request, the split, the CDF plot."""
    servers, targets, budget = document["servers"], document["targets"], document["budget"]
    rows, cpu = [], []
    for server in servers:
        peak, half, use = server["peak"], server["half"], server["cpu"]
        failed = peak["non_2xx"] + peak["socket_errors"] + half["non_2xx"] + half["socket_errors"]
        rows.append(
            [server["label"], f"{peak['requests_per_s']:,.0f}"]
            + [common.ms(peak[key]) for key in ("p50_ms", "p99_ms", "p999_ms")]
            + [f"{half['requests_per_s']:,.0f}"]
            + [common.ms(half[key]) for key in ("p50_ms", "p99_ms", "p999_ms")]
            + [str(failed)]
        )
        cpu.append([server["label"], *(f"{use[k]:.2f}" if k.endswith("cores") else f"{use[k]:,.0f}" for k in CPU_KEYS)])
    ratio, latency, split = targets["peak_ratio"], targets["p99_at_half_peak_ms"], budget["split_us"]
    total = sum(split.values())
    parts = [[label, f"{split[key]:,.0f}", f"{split[key] / total:.0%}"] for key, label in SPLIT]
    bullets = [
        f"- Receiver peak = **{ratio['value']:.0%}** of the `--asgi` no-op ceiling ({common.verdict(ratio)}).",
        f"- Receiver p99 at half its peak = **{common.ms(latency['value'])}** ({common.verdict(latency)}).",
        f"- The peak target, {budget['target_rps']:,} req/s, leaves a request at most "
        f"**{budget['server_us_per_request_allowed']:,.0f} µs** of CPU.",
    ]
    return "\n\n".join(
        [
            common.provenance(document),
            common.markdown_table(
                ["server", "peak req/s", "p50", "p99", "p99.9", "req/s @half", "p50", "p99", "p99.9", "failed"], rows
            ),
            "\n".join(bullets),
            common.markdown_table(
                ["server", "server cores", "server µs / request", "emulator cores", "emulator µs / request"], cpu
            ),
            common.markdown_table([f"the receiver's {total:,.0f} µs a request", "µs", "share"], parts),
            plot(servers),
        ]
    )


def plot(servers: list[Mapping[str, Any]]) -> str:
    """docs/bench/receiver-latency-cdf.png: each server's half-peak latencies, CDF and tail."""
    fig, axes = common.figure(2)
    left, right = axes[0]
    for server in servers:
        samples = [us / 1000 for us in server["half"].get("latency_samples_us") or []]
        fractions = [(index + 1) / len(samples) for index in range(len(samples))]
        left.plot(samples, fractions, label=server["label"], linewidth=1.2)
        right.plot(samples, [1 - f + 1 / len(samples) for f in fractions], label=server["label"], linewidth=1.2)
    left.set(xscale="log", xlabel="latency at half peak (ms)", ylabel="share answered within x")
    right.set(xscale="log", yscale="log", xlabel="latency at half peak (ms)", ylabel="share slower than x")
    left.legend(fontsize=7)
    return common.save(fig, "receiver-latency-cdf")


if __name__ == "__main__":
    sys.exit(main())
