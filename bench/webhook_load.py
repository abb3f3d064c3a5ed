"""Webhook load: the real receiver against no-op functions-framework functions, in one run.

One server at a time on 127.0.0.1 (a no-op `--asgi` function, the receiver and two variants of it, a
no-op Flask function), each hit with validly signed `succeeded` webhooks: peak throughput with wrk
(percentiles from its 1 µs histogram through a Lua `done` hook), latency at half that peak with hey
(every request timed), CPU per request from /proc. The receiver publishes to the dev stack's Pub/Sub
emulator (topic `replicate-events`, no subscriptions). Writes bench/results/webhook_load.json and the
`webhook_load` section of docs/BENCHMARKS.md with docs/bench/receiver-latency-cdf.png.

    .venv/bin/python bench/webhook_load.py [--duration 10] [--connections 32] [--quick]
"""

from __future__ import annotations

import argparse
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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, so sys.path[0] is bench/ (for `common`); the project's packages live one level up.
sys.path.insert(0, str(REPO_ROOT))

import common  # noqa: E402
from common import LOG_DIR, RESULTS_DIR, BenchError, Processes  # noqa: E402

from replicate_relay.devstack.processes import ManagedProcess, free_port, http_answers  # noqa: E402
from replicate_relay.devstack.stack import DEV_WEBHOOK_SECRET  # noqa: E402
from replicate_relay.testing import SignedWebhook, succeeded_webhook  # noqa: E402

HOST = "127.0.0.1"
PROJECT = "local-project"
TOPIC = "replicate-events"
WEBHOOK_SECRET = DEV_WEBHOOK_SECRET  # the local stack's: the Standard Webhooks test vector, public
SIGNATURE_TOLERANCE_SECONDS = 300  # the receiver's default RELAY_WEBHOOK_TOLERANCE_SECONDS
RECEIVER_LOG_LEVEL = "WARNING"

RESULTS_JSON = RESULTS_DIR / "webhook_load.json"

WRK_THREADS = 1  # 2 cores: one for wrk, one for the server (and the emulator, for the receiver)
HEY_CONNECTIONS = 16
ALLOWED_FAILURES = 5  # "a handful": more non-2xx answers than this from the receiver fails the run
# The half-peak run keeps at most this many sorted latencies per server for the report's CDF (evenly
# spaced ranks beyond it: the shape stays exact to 1/MAX_SAMPLES; the percentiles use every request).
MAX_SAMPLES = 20_000
WRK_PERCENTILES = (50.0, 90.0, 99.0, 99.9, 100.0)
HEY_PERCENTILES = {"p50_ms": 50, "p90_ms": 90, "p99_ms": 99, "p999_ms": 99.9}
EMULATOR_START_TIMEOUT = 90.0
SERVER_START_TIMEOUT = 60.0

# Targets for the receiver, relative to the --asgi no-op ceiling measured in the same run.
TARGET_PEAK_RATIO = 0.60
TARGET_P99_HALF_PEAK_MS = 25.0


# Servers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    key: str
    label: str
    source: str
    target: str
    asgi: bool
    ready_path: str
    publishes: bool  # a receiver: gets the receiver's settings; must answer 200 {"status": "accepted"} to count
    env: tuple[tuple[str, str], ...] = ()  # on top of the receiver's settings


SERVERS = (
    Server("noop-asgi", "no-op, --asgi (ceiling)", "bench/noop.py", "noop_async", True, "/", False),
    Server("receiver", "receiver, --asgi", "receiver/main.py", "receive", True, "/health", True),
    # Two rows that take one part out of the receiver each, to show where its time goes.
    Server(
        "receiver-no-pubsub",
        "receiver, Pub/Sub replaced by an instant publisher",
        "bench/receiver_no_pubsub.py",
        "receive",
        True,
        "/health",
        True,
    ),
    Server(
        "receiver-no-telemetry",
        "receiver, OTEL_SDK_DISABLED=true",
        "receiver/main.py",
        "receive",
        True,
        "/health",
        True,
        env=(("OTEL_SDK_DISABLED", "true"),),
    ),
    Server("noop-flask", "no-op, Flask (default mode)", "bench/noop.py", "noop_sync", False, "/", False),
)


# Results ---------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    tool: str
    command: str
    duration_s: float
    connections: int
    requests: int
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    non_2xx: int
    socket_errors: int
    status_codes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    target_rate: float | None = None
    p90_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    # hey at half peak only: every successful request's latency, sorted, in µs (thinned past MAX_SAMPLES).
    latency_samples_us: list[int] = field(default_factory=list, repr=False)
    samples_total: int = 0


@dataclass
class CpuUse:
    """CPU used during the peak run, from /proc: by the server's process group and the emulator's."""

    server_cores: float
    server_us_per_request: float
    emulator_cores: float
    emulator_us_per_request: float


@dataclass
class ServerResult:
    key: str
    label: str
    mode: str
    peak: LoadResult
    half: LoadResult
    cpu: CpuUse


# Tools -----------------------------------------------------------------------------------------


def ensure_tools() -> dict[str, str]:
    """wrk and hey on PATH, installed with apt-get (as root) if missing; returns their paths."""
    if any(shutil.which(tool) is None for tool in ("wrk", "hey")) and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], env=env, check=False, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "wrk", "hey"], env=env, check=False, timeout=600
        )
    paths = {tool: shutil.which(tool) for tool in ("wrk", "hey")}
    if not all(paths.values()):
        raise BenchError("wrk and hey are needed: `sudo apt-get install -y wrk hey`")
    return {tool: str(path) for tool, path in paths.items()}


# Payload ---------------------------------------------------------------------------------------


def signed_webhook() -> SignedWebhook:
    """One freshly signed `succeeded` webhook, shaped like Replicate's (about 1 kB)."""
    return succeeded_webhook(WEBHOOK_SECRET)


def lua_string(value: str) -> str:
    if not (value.isascii() and value.isprintable()):
        raise BenchError(f"header value {value[:40]!r} is not printable ASCII")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_request_files(webhook: SignedWebhook, folder: Path) -> tuple[Path, Path]:
    """The body file (for hey and wrk) and a wrk Lua script that sends that one request."""
    body_path = folder / f"{webhook.webhook_id}.json"
    body_path.write_bytes(webhook.body)
    lines = ['wrk.method = "POST"']
    lines += [f"wrk.headers[{lua_string(name)}] = {lua_string(value)}" for name, value in webhook.headers.items()]
    lines += [
        f"local file = assert(io.open({lua_string(str(body_path))}, 'rb'))",
        "wrk.body = file:read('*a')",
        "file:close()",
        # wrk's --latency table stops at p99; its histogram (1 µs buckets) answers any percentile.
        "done = function(summary, latency, requests)",
        f"  for _, p in ipairs({{{', '.join(f'{p:g}' for p in WRK_PERCENTILES)}}}) do",
        "    io.write(string.format('relay-bench percentile %g %d\\n', p, latency:percentile(p)))",
        "  end",
        "end",
    ]
    script_path = folder / f"{webhook.webhook_id}.lua"
    script_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return body_path, script_path


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
    if status != 200:
        raise BenchError(f"the {server.label} answered a first, validly signed webhook with {status}: {text[:300]}")
    if server.publishes and json.loads(text).get("status") != "accepted":
        raise BenchError(f"the {server.label} answered 200 but did not accept the webhook: {text[:300]}")


# Load generators -------------------------------------------------------------------------------

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise BenchError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+\w+),", output, re.MULTILINE)
    if not rate or not total:
        raise BenchError(f"cannot read wrk's output: {output.strip()[-400:]}")
    percentiles = {int(p): _wrk_ms(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", output, re.MULTILINE)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = {}
    if sockets:
        socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sockets.groups()), strict=True))
    # From the Lua done hook (microseconds); the --latency table is the fallback for p50/p99.
    exact = {float(p): int(us) / 1000 for p, us in re.findall(r"^relay-bench percentile ([\d.]+) (\d+)$", output, re.M)}
    return {
        "requests": int(total.group(1)),
        "duration_s": _wrk_ms(total.group(2)) / 1000,
        "requests_per_s": float(rate.group(1)),
        "p50_ms": exact.get(50.0, percentiles.get(50)),
        "p90_ms": exact.get(90.0, percentiles.get(90)),
        "p99_ms": exact.get(99.0, percentiles.get(99)),
        "p999_ms": exact.get(99.9),
        "max_ms": exact.get(100.0),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": {name: count for name, count in socket_errors.items() if count},
    }


def parse_hey_csv(output: str, *, sent: int) -> dict[str, Any]:
    """hey's `-o csv`: one line per request that got an answer (response-time,…,status-code,offset, in s).

    hey leaves requests that failed at the socket out of the CSV, so those are `sent` minus the lines.
    """
    lines = output.strip().splitlines()
    if not lines or not lines[0].startswith("response-time,"):
        raise BenchError(f"cannot read hey's CSV output: {output.strip()[:400]}")
    latencies: list[float] = []
    ends: list[float] = []
    status_codes: dict[str, int] = {}
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) < 8:
            raise BenchError(f"cannot read hey's CSV line {line[:200]!r}")
        seconds, code, offset = float(fields[0]), fields[6], float(fields[7])
        status_codes[code] = status_codes.get(code, 0) + 1
        if code.startswith("2"):
            latencies.append(seconds * 1000)
        ends.append(offset + seconds)
    answered = len(lines) - 1
    duration = max(ends, default=0.0)
    latencies.sort()
    failed = max(sent - answered, 0)
    return {
        "requests": answered,
        "duration_s": round(duration, 3),
        "requests_per_s": round(answered / duration, 1) if duration else 0.0,
        **{key: common.percentile(latencies, p) for key, p in HEY_PERCENTILES.items()},
        "max_ms": round(latencies[-1], 3) if latencies else None,
        "status_codes": dict(sorted(status_codes.items())),
        "errors": {"no answer (socket error or timeout; hey's CSV omits them)": failed} if failed else {},
        "latency_samples_us": thin([round(ms * 1000) for ms in latencies], MAX_SAMPLES),
        "samples_total": len(latencies),
    }


def thin(ordered: list[int], limit: int) -> list[int]:
    """At most `limit` values of an ascending list at evenly spaced ranks, the first and last kept."""
    if len(ordered) <= limit:
        return ordered
    step = (len(ordered) - 1) / (limit - 1)
    return [ordered[round(index * step)] for index in range(limit)]


def run_tool(argv: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{argv[0]} did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:3])} … failed ({done.returncode}): {(done.stderr or done.stdout)[-400:]}")
    return done.stdout


def run_wrk(wrk: str, url: str, script: Path, *, connections: int, seconds: float) -> LoadResult:
    argv = [wrk, f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url]
    parsed = parse_wrk(run_tool(argv, timeout=seconds + 60))
    socket_errors: dict[str, int] = parsed.pop("socket_errors")
    return LoadResult(
        tool="wrk",
        command=" ".join([*argv[:-3], "-s", "<signed webhook>.lua", url]),
        connections=connections,
        socket_errors=sum(socket_errors.values()),
        errors=socket_errors,
        **parsed,
    )


def run_hey(hey: str, url: str, webhook: SignedWebhook, body: Path, *, total_rate: float, seconds: float) -> LoadResult:
    per_worker = max(total_rate / HEY_CONNECTIONS, 0.01)
    # A fixed number of requests (not -z): hey's CSV omits failed requests, so the count shows them.
    sent = max(round(per_worker * seconds), 1) * HEY_CONNECTIONS
    headers: list[str] = []
    for name, value in webhook.headers.items():
        if name.lower() != "content-type":
            headers += ["-H", f"{name}: {value}"]
    argv = [hey, "-n", str(sent), "-c", str(HEY_CONNECTIONS), "-q", f"{per_worker:.2f}", "-m", "POST", "-o", "csv"]
    argv += [*headers, "-T", webhook.headers["content-type"], "-D", str(body), url]
    parsed = parse_hey_csv(run_tool(argv, timeout=seconds * 2 + 60), sent=sent)
    codes: dict[str, int] = parsed["status_codes"]
    return LoadResult(
        tool="hey",
        command=f"hey -n {sent} -c {HEY_CONNECTIONS} -q {per_worker:.2f} -m POST -o csv -H <webhook headers> "
        f"-T application/json -D <signed body> {url}",
        connections=HEY_CONNECTIONS,
        non_2xx=sum(count for code, count in codes.items() if not code.startswith("2")),
        socket_errors=sum(parsed["errors"].values()),
        target_rate=round(per_worker * HEY_CONNECTIONS, 1),
        **parsed,
    )


# Processes -------------------------------------------------------------------------------------


def create_topic(emulator_host: str) -> None:
    import google.cloud.pubsub_v1 as pubsub_v1  # noqa: PLC0415 - only once the emulator runs
    from google.api_core import exceptions as google_exceptions  # noqa: PLC0415

    os.environ["PUBSUB_EMULATOR_HOST"] = emulator_host
    publisher = pubsub_v1.PublisherClient()
    topic_path = publisher.topic_path(PROJECT, TOPIC)
    with contextlib.suppress(google_exceptions.AlreadyExists):
        publisher.create_topic(request={"name": topic_path}, timeout=30)
    publisher.transport.close()


def start_server(processes: Processes, server: Server, port: int, extra_env: Mapping[str, str]) -> ManagedProcess:
    env = common.project_env({**extra_env, "K_SERVICE": server.key})
    argv = [sys.executable, "-m", "functions_framework", "--source", server.source, "--target", server.target]
    argv += ["--host", HOST, "--port", str(port)]
    if server.asgi:
        argv.append("--asgi")
    process = ManagedProcess(
        server.label,
        argv,
        log_path=common.fresh_log_path(server.key),
        ready=http_answers(f"http://{HOST}:{port}{server.ready_path}"),
        env=env,
        cwd=REPO_ROOT,
    )
    return processes.start(process, SERVER_START_TIMEOUT)


# One server ------------------------------------------------------------------------------------


def bench_server(
    server: Server,
    *,
    processes: Processes,
    tools: Mapping[str, str],
    emulator: ManagedProcess,
    workdir: Path,
    args: argparse.Namespace,
    extra_env: Mapping[str, str],
) -> ServerResult:
    port = free_port(HOST)
    url = f"http://{HOST}:{port}/"
    print(f"\n== {server.label}: {server.source} {server.target} on {url}", flush=True)
    env = {**extra_env, **dict(server.env)} if server.publishes else {}
    process = start_server(processes, server, port, env)
    try:
        # Signed just before use: the signature is valid for 300 s, and each phase is re-signed.
        webhook = signed_webhook()
        body, script = write_request_files(webhook, workdir)
        check_one_request(url, webhook, server)
        print(f"   warm-up {args.warmup:g} s ({len(webhook.body)}-byte signed webhook)", flush=True)
        run_wrk(tools["wrk"], url, script, connections=args.connections, seconds=args.warmup)

        cpu_before = common.group_cpu_seconds(process.pid), common.group_cpu_seconds(emulator.pid)
        peak = run_wrk(tools["wrk"], url, script, connections=args.connections, seconds=args.duration)
        cpu_after = common.group_cpu_seconds(process.pid), common.group_cpu_seconds(emulator.pid)
        cpu = cpu_use(cpu_before, cpu_after, peak)
        print(
            f"   peak {peak.requests_per_s:,.0f} req/s, {cpu.server_us_per_request:,.0f} µs CPU a request", flush=True
        )
        report_failures(server, peak)

        webhook = signed_webhook()
        body, script = write_request_files(webhook, workdir)
        half = run_hey(tools["hey"], url, webhook, body, total_rate=peak.requests_per_s / 2, seconds=args.duration)
        print(f"   half peak {half.requests_per_s:,.0f} req/s, p99 {common.ms(half.p99_ms)}", flush=True)
        report_failures(server, half)
        if not process.alive():
            raise BenchError(f"the {server.label} exited during the run; its log ends with: {process.log_tail()}")
    finally:
        processes.stop(process)
    return ServerResult(server.key, server.label, "asgi" if server.asgi else "flask", peak, half, cpu)


def cpu_use(before: tuple[float, float], after: tuple[float, float], peak: LoadResult) -> CpuUse:
    server, emulator = after[0] - before[0], after[1] - before[1]
    seconds, requests = peak.duration_s or 1.0, max(peak.requests, 1)
    return CpuUse(
        server_cores=round(server / seconds, 3),
        server_us_per_request=round(server / requests * 1e6, 1),
        emulator_cores=round(emulator / seconds, 3),
        emulator_us_per_request=round(emulator / requests * 1e6, 1),
    )


def report_failures(server: Server, result: LoadResult) -> None:
    failed = result.non_2xx + result.socket_errors
    if not failed:
        return
    detail = f"{result.non_2xx} non-2xx answers, {result.socket_errors} socket/transport errors {result.errors or ''}"
    print(f"   ! {result.tool}: {detail.strip()}", flush=True)
    if server.publishes and failed > ALLOWED_FAILURES:
        raise BenchError(
            f"the receiver failed {failed} of {result.requests + result.socket_errors} requests under {result.tool} "
            f"(more than {ALLOWED_FAILURES}); its log is {LOG_DIR / server.key}.log"
        )


# Output ----------------------------------------------------------------------------------------


def summarise(results: list[ServerResult]) -> dict[str, Any]:
    by_key = {result.key: result for result in results}
    receiver, ceiling = by_key["receiver"], by_key["noop-asgi"]
    ratio = receiver.peak.requests_per_s / ceiling.peak.requests_per_s if ceiling.peak.requests_per_s else 0.0
    p99 = receiver.half.p99_ms
    return {
        "receiver_vs_noop_asgi_peak": round(ratio, 3),
        "budget": cpu_budget(results, ceiling),
        "targets": {
            "peak_ratio": {
                "target": f">= {TARGET_PEAK_RATIO:.0%}",
                "value": round(ratio, 3),
                "met": ratio >= TARGET_PEAK_RATIO,
            },
            "p99_at_half_peak_ms": {
                "target": f"< {TARGET_P99_HALF_PEAK_MS:g} ms",
                "value": p99,
                "met": p99 is not None and p99 < TARGET_P99_HALF_PEAK_MS,
            },
        },
    }


def cpu_budget(results: list[ServerResult], ceiling: ServerResult) -> dict[str, Any]:
    """What the peak target leaves a webhook, against what each receiver row spent.

    One worker runs one event loop, on at most one core: at the target rate it has at most
    1 s / (TARGET_PEAK_RATIO × ceiling) of CPU for each request, the framework's own share included.
    """
    target_rps = TARGET_PEAK_RATIO * ceiling.peak.requests_per_s
    allowed = 1e6 / target_rps if target_rps else 0.0
    rows = {
        result.key: {
            "label": result.label,
            "vs_ceiling": round(result.peak.requests_per_s / ceiling.peak.requests_per_s, 3)
            if ceiling.peak.requests_per_s
            else 0.0,
            "server_us_per_request": result.cpu.server_us_per_request,
            "emulator_us_per_request": result.cpu.emulator_us_per_request,
        }
        for result in results
        if result.key == "noop-asgi" or result.key.startswith("receiver")
    }
    return {
        "target_rps": round(target_rps),
        "server_us_per_request_allowed": round(allowed, 1),
        "rows": rows,
        "split_us": cpu_split(rows),
    }


def cpu_split(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, float] | None:
    """The receiver's CPU per request in parts, by difference between the rows (each part is noisy)."""
    spent = {key: row["server_us_per_request"] for key, row in rows.items()}
    if not {"noop-asgi", "receiver", "receiver-no-pubsub", "receiver-no-telemetry"} <= spent.keys():
        return None
    framework, receiver = spent["noop-asgi"], spent["receiver"]
    publishing = receiver - spent["receiver-no-pubsub"]
    telemetry = receiver - spent["receiver-no-telemetry"]
    return {
        "framework": round(framework, 1),
        "publishing": round(publishing, 1),
        "telemetry": round(telemetry, 1),
        "the_rest": round(receiver - framework - publishing - telemetry, 1),
    }


def tool_version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        text = (done.stdout + done.stderr).strip().splitlines()
        return text[0] if text else "unknown"
    return "unknown"


# Main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections at peak (default 32)")
    parser.add_argument("--quick", action="store_true", help="3 s measurements and a 1 s warm-up: a smoke check")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 3.0
    args.warmup = 1.0 if args.quick else 3.0
    # Each signed webhook serves one warm-up + peak, or one half-peak run, and must stay valid throughout.
    if not 1 <= args.duration <= 240:
        parser.error("--duration must be between 1 and 240 seconds (a signed webhook is valid for 300 s)")
    if not 1 <= args.connections <= 1000:
        parser.error("--connections must be between 1 and 1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    processes = Processes()
    return common.run_guarded(processes, lambda: run(args, ensure_tools(), processes, started))


def run(args: argparse.Namespace, tools: Mapping[str, str], processes: Processes, started: float) -> int:
    wrk_version = tool_version([tools["wrk"], "--version"])
    print(f"tools: {wrk_version}; hey at {tools['hey']}; {args.duration:g} s per measurement", flush=True)
    busy = common.check_busy()
    print("starting the Pub/Sub emulator …", flush=True)
    stack = common.start_emulators(processes, "pubsub", log_dir=LOG_DIR / "webhook_load")
    emulator, emulator_host = stack.emulators["pubsub"], stack.emulator_env["PUBSUB_EMULATOR_HOST"]
    create_topic(emulator_host)
    print(f"emulator ready after {time.monotonic() - started:.0f} s; topic {TOPIC} created (no subscriptions)")
    receiver_env = {
        "RELAY_PROJECT": PROJECT,
        "PUBSUB_EMULATOR_HOST": emulator_host,
        "RELAY_WEBHOOK_SECRETS": WEBHOOK_SECRET,
        "RELAY_LOG_LEVEL": RECEIVER_LOG_LEVEL,  # its per-request INFO line is not part of the measurement
    }
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as folder:
        results = [
            bench_server(
                server,
                processes=processes,
                tools=tools,
                emulator=emulator,
                workdir=Path(folder),
                args=args,
                extra_env=receiver_env,
            )
            for server in SERVERS
        ]
    processes.stop_all()  # the emulator: not needed for the report
    document = {
        **common.results_header(busy, wrk=wrk_version, gunicorn_workers=int(os.environ.get("WORKERS", "1"))),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "wrk_threads": WRK_THREADS,
            "wrk_connections": args.connections,
            "hey_connections": HEY_CONNECTIONS,
            "receiver_log_level": RECEIVER_LOG_LEVEL,
            "quick": args.quick,
        },
        "servers": [asdict(result) for result in results],
        **summarise(results),
    }
    common.publish("webhook_load", RESULTS_JSON, document, render)
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
        cpu.append(
            [
                server["label"],
                *(f"{use[key]:.2f}" if key.endswith("cores") else f"{use[key]:,.0f}" for key in CPU_KEYS),
            ]
        )
    ratio, latency = targets["peak_ratio"], targets["p99_at_half_peak_ms"]
    out = [
        common.provenance(document),
        "",
        common.markdown_table(
            ["server", "peak req/s", "p50", "p99", "p99.9", "req/s @half", "p50", "p99", "p99.9", "failed"], rows
        ),
        "",
        f"- Receiver peak = **{ratio['value']:.0%}** of the `--asgi` no-op ceiling (target {ratio['target']}: "
        f"{'met' if ratio['met'] else 'missed'}).",
        f"- Receiver p99 at half its peak = **{common.ms(latency['value'])}** (target {latency['target']}: "
        f"{'met' if latency['met'] else 'missed'}).",
        f"- The peak target, {budget['target_rps']:,} req/s, leaves a request at most "
        f"**{budget['server_us_per_request_allowed']:,.0f} µs** of CPU.",
        "",
        common.markdown_table(
            ["server", "server cores", "server µs / request", "emulator cores", "emulator µs / request"], cpu
        ),
    ]
    split = budget.get("split_us")
    if split:
        total = sum(split.values())
        parts = [[label, f"{split[key]:,.0f}", f"{split[key] / total:.0%}"] for key, label in SPLIT]
        out += ["", common.markdown_table([f"the receiver's {total:,.0f} µs a request", "µs", "share"], parts)]
    return "\n".join([*out, "", plot(servers)])


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
