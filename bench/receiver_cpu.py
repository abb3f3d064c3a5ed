"""In-process CPU per webhook of the receiver's ASGI app, and where OpenTelemetry's share of it goes.

No server, no network, no emulator: each variant's ASGI app is called directly on a uvloop event
loop, one validly signed `succeeded` webhook after another, and `time.process_time()` (the process's
user + system CPU) is read around the lot. The variants:

- the receiver as served: functions-framework's `create_asgi_app` around `receive`, OpenTelemetry on;
- the same with `OTEL_SDK_DISABLED=true`;
- the receiver without functions-framework's layers: `receive` on a Starlette `Request`;
- functions-framework's no-op ASGI app (bench/noop.py `noop_async`): the baseline, the framework's
  own share, so that runs on different machines compare as multiples of it.

Publishing is bench/receiver_no_pubsub.py's `InstantPublisher` (the real publish span and metric, no
gRPC). Every variant runs in a fresh child process (OpenTelemetry and the receiver's settings are
read at import), once per round, rounds interleaved; every answer must be 200 (and "accepted" from a
receiver), or the run fails. A further child times OpenTelemetry's work for one accepted webhook
alone: the exact calls receiver/main.py and replicate_relay/telemetry.publish_span make, then its parts (bare
spans, attributes, metric records, trace context), and checks that those calls still make the spans
one webhook through the real `receive` makes. Results go to stdout and bench/results/receiver_cpu.json.

    .venv/bin/python bench/receiver_cpu.py [--requests 20000] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, so sys.path[0] is bench/ (for `common`, `noop`, `receiver_no_pubsub`); the project's
# packages live one level up, and come first: bench/receiver.py would shadow the receiver package.
sys.path.insert(0, str(REPO_ROOT))

import common  # noqa: E402
from common import RESULTS_DIR, BenchError, Processes  # noqa: E402

from replicate_relay.devstack.stack import DEV_WEBHOOK_SECRET  # noqa: E402
from replicate_relay.testing import SignedWebhook, succeeded_webhook  # noqa: E402

if TYPE_CHECKING:
    from starlette.types import ASGIApp

RESULTS_JSON = RESULTS_DIR / "receiver_cpu.json"
PROJECT = "local-project"
WEBHOOK_SECRET = DEV_WEBHOOK_SECRET  # the local stack's: the Standard Webhooks test vector, public
LOG_LEVEL = "WARNING"  # as bench/receiver.py: the per-request INFO line is not part of the measurement

REQUESTS = 20_000
QUICK_REQUESTS = 2_000
WARMUP = 200
ROUNDS = 3
# Children start in about a second; a request costs well under a millisecond. Generous, but bounded.
CHILD_TIMEOUT_BASE_S = 60.0
CHILD_TIMEOUT_PER_REQUEST_S = 0.002

# Children get this process's environment without these (a shell's OTEL_* or RELAY_* settings, or
# Cloud Run's K_*, would change what is measured), plus CHILD_ENV.
CLEARED_PREFIXES = ("OTEL_", "RELAY_", "K_", "PUBSUB_", "LOG_EXECUTION_ID")
CHILD_ENV = {
    "RELAY_PROJECT": PROJECT,
    "RELAY_WEBHOOK_SECRETS": WEBHOOK_SECRET,
    "RELAY_LOG_LEVEL": LOG_LEVEL,
    "RELAY_GCP_TELEMETRY": "false",  # no exporter, as in bench/receiver.py: spans are made and ended, not sent
    "PUBSUB_EMULATOR_HOST": "127.0.0.1:1",  # nothing publishes; anything that tried would fail here, not at Google
}


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    source: str | None  # functions-framework's --source; None: `receive` called on a Starlette Request
    target: str
    telemetry: bool
    receiver: bool  # must answer {"status": "accepted"}


VARIANTS = (
    Variant(
        "receiver",
        "receiver as served: functions-framework, OpenTelemetry on",
        "bench/receiver_no_pubsub.py",
        "receive",
        telemetry=True,
        receiver=True,
    ),
    Variant(
        "receiver-no-telemetry",
        "receiver as served, OTEL_SDK_DISABLED=true",
        "bench/receiver_no_pubsub.py",
        "receive",
        telemetry=False,
        receiver=True,
    ),
    Variant(
        "receiver-bare",
        "receiver without functions-framework: receive on a Starlette Request",
        None,
        "receive",
        telemetry=True,
        receiver=True,
    ),
    Variant(
        "noop-asgi",
        "no-op: functions-framework, bench/noop.py noop_async (baseline)",
        "bench/noop.py",
        "noop_async",
        telemetry=True,
        receiver=False,
    ),
)
VARIANT_BY_KEY = {variant.key: variant for variant in VARIANTS}
BASELINE = "noop-asgi"
TELEMETRY_CHILD = "telemetry"

# OpenTelemetry's work for one accepted webhook, and its parts, each timed alone; the attributes as the
# two spans started with the webhook's attributes less the bare spans. "rest" is the webhook's figure
# less the parts: publish_span's and _record's own bookkeeping, the setup() fast path.
TELEMETRY_PARTS = (
    ("webhook", "all of it: receiver/main.py's calls and publish_span"),
    ("spans", "two bare spans, nested (SERVER, PRODUCER)"),
    ("attributes", "the webhook's span attributes (the same spans started with them − bare)"),
    ("metrics", "three metric records"),
    ("context", "trace context: from the request's headers, into the message"),
)
TELEMETRY_LABELS = dict(TELEMETRY_PARTS) | {"rest": "the rest: publish_span's and _record's own work (all − the parts)"}


# The request ----------------------------------------------------------------------------------


def signed_webhook(secret: str = WEBHOOK_SECRET) -> SignedWebhook:
    """One freshly signed `succeeded` webhook, shaped like Replicate's (about 1 kB), as bench/receiver.py sends."""
    return succeeded_webhook(secret)


def asgi_scope(webhook: SignedWebhook) -> dict[str, Any]:
    """The HTTP scope uvicorn would give the app for this webhook POSTed to /."""
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in webhook.headers.items()]
    headers += [(b"host", b"127.0.0.1:8080"), (b"content-length", str(len(webhook.body)).encode())]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }


async def post(app: ASGIApp, scope: Mapping[str, Any], body: bytes) -> tuple[int, bytes]:
    """Call `app` once with `body` as the request, as uvicorn would; its status and body."""
    sent = False
    answer: list[Any] = []

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.append(message["status"])
        elif message["type"] == "http.response.body":
            answer.append(message.get("body", b""))

    await app({**scope, "state": {}}, receive, send)
    return answer[0], b"".join(answer[1:])


# Measuring, in the child ---------------------------------------------------------------------------


def build_app(variant: Variant) -> ASGIApp:
    """The variant's ASGI app, built as functions-framework --asgi builds it, or `receive` behind a bare adapter."""
    if variant.source is not None:
        from functions_framework.aio import create_asgi_app  # noqa: PLC0415 - each child imports what it measures

        app: ASGIApp = create_asgi_app(target=variant.target, source=str(REPO_ROOT / variant.source))  # type: ignore[no-untyped-call]
        return app

    import receiver_no_pubsub  # noqa: PLC0415 - patches receiver.main to publish instantly
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.types import Receive, Scope, Send  # noqa: PLC0415

    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        response = await receiver_no_pubsub.receive(Request(scope, receive))
        await response(scope, receive, send)

    return bare


def measure_app(variant: Variant, *, requests: int, warmup: int, sign_secret: str) -> dict[str, Any]:
    """CPU µs per webhook of `variant`'s app over `requests` webhooks after `warmup` more; BenchError on any non-200."""
    import uvloop  # noqa: PLC0415

    app = build_app(variant)
    webhook = signed_webhook(sign_secret)
    scope, body = asgi_scope(webhook), webhook.body

    def check(status: int, text: bytes) -> None:
        if status != 200:
            raise BenchError(
                f"the {variant.label} answered {status} where every webhook must get 200: "
                f"{text[:300].decode('utf-8', 'replace')}"
            )

    async def run() -> dict[str, Any]:
        status, text = await post(app, scope, body)
        check(status, text)
        if variant.receiver and json.loads(text).get("status") != "accepted":
            raise BenchError(f"the {variant.label} answered 200 but did not accept the webhook: {text[:300]!r}")
        for _ in range(warmup):
            check(*await post(app, scope, body))
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(requests):
            status, text = await post(app, scope, body)
            if status != 200:
                check(status, text)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        return {"variant": variant.key, "requests": requests, "us_per_webhook": cpu / requests * 1e6, "wall_s": wall}

    result: dict[str, Any] = uvloop.run(run())
    return result


def measure_telemetry(*, iterations: int, warmup: int) -> dict[str, Any]:
    """CPU µs of OpenTelemetry's work for one accepted webhook, and of each part, each timed alone.

    `webhook_telemetry()` makes the calls receiver/main.py's `receive` makes for an accepted webhook, around what
    bench/receiver_no_pubsub.py's publisher does (replicate_relay/telemetry.publish_span), through the same
    functions; `check_mirror` then fails the run if they no longer make the spans the real `receive` makes.
    """
    from opentelemetry.trace import SpanKind  # noqa: PLC0415

    from receiver import main  # noqa: PLC0415 - settings from this child's environment
    from replicate_relay import telemetry, telemetry_setup  # noqa: PLC0415
    from replicate_relay.events import EventAttributes, Source, parse_prediction_ref  # noqa: PLC0415

    settings = main.SETTINGS
    telemetry_setup.setup(settings.telemetry)
    main.tune_gc()  # as the served worker does once its intake exists
    tracer = telemetry.tracer()

    webhook = signed_webhook()
    scope = asgi_scope(webhook)
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    prediction = parse_prediction_ref(webhook.body)
    message = EventAttributes(
        prediction_id=prediction.id,
        status=prediction.status,
        webhook_id=webhook.webhook_id,
        webhook_timestamp=webhook.timestamp,
        source=Source.WEBHOOK,
    ).to_message()
    accepted = {
        telemetry.PREDICTION_ID: prediction.id,
        telemetry.STATUS: prediction.status,
        telemetry.WEBHOOK_ID: webhook.webhook_id,
    }
    size = len(webhook.body)

    def webhook_telemetry() -> tuple[Any, Any]:
        # receiver/main.py's receive and _receive, accepted path; the publish as InstantPublisher.publish.
        telemetry_setup.setup(settings.telemetry)
        started = time.perf_counter()
        with tracer.start_as_current_span(
            "POST /",
            context=telemetry.extract_http(headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "url.path": "/"},
        ) as span:
            with telemetry.publish_span(settings.topic_path, message, size) as publish:
                publish.sent("1")
            main._record(span, started, "accepted", 200, prediction=accepted)
        telemetry.flush_each_request()
        return span, publish.span

    server_span, producer_span = webhook_telemetry()
    server_attributes, producer_attributes = dict(server_span.attributes), dict(producer_span.attributes)

    def spans() -> None:
        with (
            tracer.start_as_current_span("POST /", kind=SpanKind.SERVER),
            tracer.start_as_current_span("send", kind=SpanKind.PRODUCER),
        ):
            pass

    def spans_with_attributes() -> None:
        # Given at the start, as most of them are (the sampler and the span each copy them then).
        with (
            tracer.start_as_current_span("POST /", kind=SpanKind.SERVER, attributes=server_attributes),
            tracer.start_as_current_span("send", kind=SpanKind.PRODUCER, attributes=producer_attributes),
        ):
            pass

    def metrics() -> None:
        telemetry.METRICS.webhooks.add(1, {"outcome": "accepted"})
        telemetry.METRICS.webhook_duration.record(0.001, {"outcome": "accepted"})
        telemetry.METRICS.publish_duration.record(0.001, {"topic": "replicate-events", "outcome": "ok"})

    def timed(work: Callable[[], Any]) -> float:
        for _ in range(warmup):
            work()
        started = time.process_time()
        for _ in range(iterations):
            work()
        return (time.process_time() - started) / iterations * 1e6

    def context() -> None:
        telemetry.extract_http(headers)
        telemetry.inject_message(dict(message))

    def timed_in_a_span(work: Callable[[], Any]) -> float:
        """`work` with a span current (inject_message writes nothing without one)."""
        with tracer.start_as_current_span("send", kind=SpanKind.PRODUCER):
            return timed(work)

    us = {
        "webhook": timed(webhook_telemetry),
        "spans": timed(spans),
        "spans_with_attributes": timed(spans_with_attributes),
        "metrics": timed(metrics),
        "context": timed_in_a_span(context),
    }
    us["attributes"] = us["spans_with_attributes"] - us["spans"]
    check_mirror(webhook_telemetry)
    return {
        "variant": TELEMETRY_CHILD,
        "iterations": iterations,
        "us": us,
        "span_attributes": len(server_attributes) + len(producer_attributes),
    }


def check_mirror(webhook_telemetry: Callable[[], Any]) -> None:
    """BenchError unless `webhook_telemetry` makes the spans (names, kinds, attribute names, nesting) that
    one webhook through the real `receive` makes. Run after the timing: the recording processor costs CPU."""
    import uvloop  # noqa: PLC0415
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: PLC0415

    exporter = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]

    def shape() -> list[tuple[str, str, list[str], bool]]:
        spans = exporter.get_finished_spans()
        exporter.clear()
        return sorted(
            (span.name, span.kind.name, sorted(span.attributes or {}), span.parent is not None) for span in spans
        )

    app = build_app(VARIANT_BY_KEY["receiver-bare"])
    webhook = signed_webhook()

    uvloop.run(post(app, asgi_scope(webhook), webhook.body))
    real = shape()
    webhook_telemetry()
    mirror = shape()
    if real != mirror:
        raise BenchError(
            "the telemetry breakdown no longer makes the spans one accepted webhook makes (update "
            f"measure_telemetry's webhook_telemetry to match receiver/main.py): real {real}, breakdown {mirror}"
        )


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="receiver_cpu.py _child")
    parser.add_argument("role", choices=[*VARIANT_BY_KEY, TELEMETRY_CHILD])
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--sign-secret", default=WEBHOOK_SECRET)
    args = parser.parse_args(argv)
    try:
        if args.role == TELEMETRY_CHILD:
            result = measure_telemetry(iterations=args.requests, warmup=args.warmup)
        else:
            variant = VARIANT_BY_KEY[args.role]
            result = measure_app(variant, requests=args.requests, warmup=args.warmup, sign_secret=args.sign_secret)
    except BenchError as error:
        print(error, file=sys.stderr, flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


# Running the children, in the parent ------------------------------------------------------------


def child_env(*, telemetry: bool) -> dict[str, str]:
    env = {name: value for name, value in common.project_env({}).items() if not name.startswith(CLEARED_PREFIXES)}
    env.update(CHILD_ENV)
    if not telemetry:
        env["OTEL_SDK_DISABLED"] = "true"
    return env


def run_child(
    role: str, *, requests: int, warmup: int = WARMUP, telemetry: bool = True, sign_secret: str = WEBHOOK_SECRET
) -> dict[str, Any]:
    """One fresh child measuring `role` (a variant's key, or TELEMETRY_CHILD); its result, or BenchError."""
    argv = [sys.executable, str(Path(__file__).resolve()), "_child", role]
    argv += ["--requests", str(requests), "--warmup", str(warmup), "--sign-secret", sign_secret]
    timeout = CHILD_TIMEOUT_BASE_S + CHILD_TIMEOUT_PER_REQUEST_S * (requests + warmup)
    try:
        # subprocess.run kills the child on the way out of any exception, Ctrl-C and SIGTERM included.
        done = subprocess.run(
            argv,
            env=child_env(telemetry=telemetry),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"the {role} child did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise BenchError(f"the {role} child failed ({done.returncode}): {tail[-600:]}")
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise BenchError(f"the {role} child printed no result: {done.stdout[-300:]!r}") from None
    return result


# Arithmetic ---------------------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of the rounds, and the spread: (max − min) as a percentage of the median."""
    if not values:
        raise ValueError("no rounds to summarise")
    median = statistics.median(values)
    low, high = min(values), max(values)
    return {
        "median": round(median, 1),
        "min": round(low, 1),
        "max": round(high, 1),
        "spread_pct": round((high - low) / median * 100, 1) if median else 0.0,
    }


def summarise(
    app_rounds: Mapping[str, Sequence[float]], telemetry_rounds: Sequence[Mapping[str, float]]
) -> dict[str, Any]:
    """The results' figures: each variant's and each telemetry part's median and spread, and what they imply."""
    variants: dict[str, dict[str, Any]] = {
        key: {"label": VARIANT_BY_KEY[key].label, **spread(values), "rounds": [round(v, 1) for v in values]}
        for key, values in app_rounds.items()
    }
    parts: dict[str, dict[str, Any]] = {}
    for key, _ in TELEMETRY_PARTS:
        values = [one[key] for one in telemetry_rounds]
        parts[key] = {"label": TELEMETRY_LABELS[key], **spread(values), "rounds": [round(v, 1) for v in values]}
    webhook = parts["webhook"]["median"]
    rest = webhook - sum(part["median"] for key, part in parts.items() if key != "webhook")
    parts["rest"] = {"label": TELEMETRY_LABELS["rest"], "median": round(rest, 1)}

    median = {key: row["median"] for key, row in variants.items()}
    receiver, baseline = median["receiver"], median[BASELINE]
    return {
        "variants": variants,
        "telemetry": parts,
        "baseline_multiple": round(receiver / baseline, 2) if baseline else None,
        "derived_us": {
            # By difference between medians of the same run: each carries two variants' noise.
            "framework_layers": round(receiver - median["receiver-bare"], 1),
            "telemetry_on_minus_off": round(receiver - median["receiver-no-telemetry"], 1),
            "over_baseline": round(receiver - baseline, 1),
        },
    }


# Output -------------------------------------------------------------------------------------------


def us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def variant_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    baseline = summary["variants"][BASELINE]["median"]
    return [
        [
            row["label"],
            us(row["median"]),
            f"{us(row['min'])}–{us(row['max'])}",
            f"{row['spread_pct']:.0f}%",
            f"{row['median'] / baseline:.2f}×" if baseline else "n/a",
        ]
        for row in summary["variants"].values()
    ]


VARIANT_HEADERS = ["variant", "CPU µs / webhook", "min–max", "spread", "× no-op"]


def telemetry_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    parts = summary["telemetry"]
    webhook = parts["webhook"]["median"]
    receiver = summary["variants"]["receiver"]["median"]
    rows = []
    for key, row in parts.items():
        label = row["label"] if key == "webhook" else f"- {row['label']}"
        share = f"{row['median'] / webhook:.0%}" if webhook else "n/a"
        rows.append([label, us(row["median"]), share, f"{row['median'] / receiver:.0%}" if receiver else "n/a"])
    return rows


TELEMETRY_HEADERS = ["OpenTelemetry for one accepted webhook", "CPU µs", "of the telemetry", "of the receiver"]


def comparison_line(summary: Mapping[str, Any]) -> str:
    variants = summary["variants"]
    return (
        f"receiver as served: {variants['receiver']['median']:,.1f} µs a webhook = "
        f"{summary['baseline_multiple']:.2f}× functions-framework's no-op ({variants[BASELINE]['median']:,.1f} µs) "
        "in the same run"
    )


def derived_lines(summary: Mapping[str, Any]) -> list[str]:
    derived, telemetry = summary["derived_us"], summary["telemetry"]
    return [
        f"OpenTelemetry: {telemetry['webhook']['median']:,.1f} µs timed alone; receiver − SDK-off "
        f"{derived['telemetry_on_minus_off']:,.1f} µs (the SDK-off variant still calls the API's no-op spans)",
        f"functions-framework's layers over a bare `receive`: {derived['framework_layers']:,.1f} µs; "
        f"the receiver over the no-op: {derived['over_baseline']:,.1f} µs",
    ]


# Main ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--requests",
        type=int,
        help=f"webhooks timed per variant and round (default {REQUESTS:,}; --quick {QUICK_REQUESTS:,})",
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"fresh children per variant (default {ROUNDS})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REQUESTS:,} webhooks per child: a smoke check")
    args = parser.parse_args(argv)
    if args.requests is None:
        args.requests = QUICK_REQUESTS if args.quick else REQUESTS
    if not 10 <= args.requests <= 200_000:
        parser.error("--requests must be between 10 and 200,000 (a signed webhook is valid for 300 s)")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be between 1 and 20")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        return child_main(argv[1:])
    args = parse_args(argv)
    return common.run_guarded(Processes(), lambda: run(args, time.monotonic()))


def run(args: argparse.Namespace, started: float) -> int:
    print(
        f"settings: {args.requests:,} webhooks per child after {WARMUP} warm-up, {args.rounds} round(s), a fresh child "
        f"per variant and round, rounds interleaved; uvloop; CPU from time.process_time(); {os.cpu_count()} CPUs; "
        f"RELAY_LOG_LEVEL={LOG_LEVEL}, no span or metric exporter; publishes answered at once in process"
    )
    busy = common.check_busy()
    roles = [*VARIANT_BY_KEY, TELEMETRY_CHILD]
    app_rounds: dict[str, list[float]] = {key: [] for key in VARIANT_BY_KEY}
    telemetry_rounds: list[dict[str, float]] = []
    span_attributes = None
    for number in range(1, args.rounds + 1):
        # Every other round backwards, so drift (a busy neighbour) does not always fall on the same variant.
        order = roles if number % 2 else roles[::-1]
        figures = []
        for role in order:
            if role == TELEMETRY_CHILD:
                result = run_child(role, requests=args.requests)
                telemetry_rounds.append(result["us"])
                span_attributes = result["span_attributes"]
                figures.append(f"telemetry {result['us']['webhook']:,.1f}")
            else:
                result = run_child(role, requests=args.requests, telemetry=VARIANT_BY_KEY[role].telemetry)
                app_rounds[role].append(result["us_per_webhook"])
                figures.append(f"{role} {result['us_per_webhook']:,.1f}")
        print(f"round {number}: CPU µs per webhook: {', '.join(figures)}", flush=True)

    summary = summarise(app_rounds, telemetry_rounds)
    summary["telemetry_span_attributes"] = span_attributes
    print(f"\n== results ({time.monotonic() - started:.0f} s in all)\n")
    common.print_table(VARIANT_HEADERS, variant_rows(summary))
    print()
    common.print_table(TELEMETRY_HEADERS, telemetry_rows(summary))
    print(f"\n{comparison_line(summary)}")
    print("\n".join(derived_lines(summary)))
    markdown = "\n\n".join(
        [
            common.markdown_table(VARIANT_HEADERS, variant_rows(summary)),
            common.markdown_table(TELEMETRY_HEADERS, telemetry_rows(summary)),
        ]
    )
    print("\nMarkdown:\n")
    print(markdown)

    document = {
        **common.results_header(busy),
        "code": common.code_version(),
        "settings": {
            "requests": args.requests,
            "warmup": WARMUP,
            "rounds": args.rounds,
            "quick": args.quick,
            "loop": "uvloop",
            "clock": "time.process_time (the child's user + system CPU), over the timed requests only",
            "log_level": LOG_LEVEL,
            "exporters": "none (RELAY_GCP_TELEMETRY=false, no OTLP endpoint, no span or metric file)",
            "publisher": "bench/receiver_no_pubsub.py InstantPublisher",
        },
        **summary,
        "markdown": markdown,
    }
    common.write_results(RESULTS_JSON, document)
    print(f"\nwrote {RESULTS_JSON.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
