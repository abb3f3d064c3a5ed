"""In-process CPU per webhook of the receiver's ASGI app, and where OpenTelemetry's share of it goes.

Each of VARIANTS is called directly on a uvloop event loop (no server, no network, no emulator), in
a fresh child process per variant and round, with `time.process_time()` read around the lot; a
further child times OpenTelemetry's parts alone through `replicate_relay.telemetry`. Writes
bench/results/receiver_cpu.json and the receiver_cpu section of docs/BENCHMARKS.md.

    .venv/bin/python bench/receiver_cpu.py [--requests 20000] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script: sys.path[0] is bench/, the packages are one level up

import common  # noqa: E402
from common import RESULTS_DIR, BenchError, Processes  # noqa: E402

from replicate_relay.devstack.stack import DEV_WEBHOOK_SECRET  # noqa: E402
from replicate_relay.testing import SignedWebhook, succeeded_webhook  # noqa: E402

if TYPE_CHECKING:
    from starlette.types import ASGIApp

RESULTS_JSON = RESULTS_DIR / "receiver_cpu.json"

WARMUP = 200

# Children get this process's environment without these (a shell's OTEL_* or RELAY_* settings, or
# Cloud Run's K_*, would change what is measured), plus CHILD_ENV.
CLEARED_PREFIXES = ("OTEL_", "RELAY_", "K_", "PUBSUB_", "LOG_EXECUTION_ID")
CHILD_ENV = {
    "RELAY_PROJECT": "local-project",
    "RELAY_WEBHOOK_SECRETS": DEV_WEBHOOK_SECRET,
    "RELAY_LOG_LEVEL": "WARNING",  # as in webhook_load.py: the per-request INFO line is not measured
    "RELAY_GCP_TELEMETRY": "false",  # no exporter, as in webhook_load.py: spans are made and ended, not sent
    "PUBSUB_EMULATOR_HOST": "127.0.0.1:1",  # nothing publishes; anything that tried would fail here, not at Google
}


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    source: str | None  # functions-framework's --source; None: `receive` called on a Starlette Request
    target: str
    telemetry: bool = True

    @property
    def receiver(self) -> bool:
        """Must answer {"status": "accepted"}."""
        return self.target == "receive"


NO_PUBSUB = "bench/receiver_no_pubsub.py"
VARIANTS = (
    Variant("receiver", "receiver as served: functions-framework, OpenTelemetry on", NO_PUBSUB, "receive"),
    Variant("receiver-no-telemetry", "receiver as served, OTEL_SDK_DISABLED=true", NO_PUBSUB, "receive", False),
    Variant("receiver-bare", "receiver without functions-framework: receive on a Starlette Request", None, "receive"),
    Variant(
        "noop-asgi", "no-op: functions-framework, bench/noop.py noop_async (baseline)", "bench/noop.py", "noop_async"
    ),
)
VARIANT_BY_KEY = {variant.key: variant for variant in VARIANTS}
BASELINE = "noop-asgi"
TELEMETRY_CHILD = "telemetry"

# OpenTelemetry's parts for one accepted webhook, each timed alone; "rest" is the receiver less the
# SDK-off variant (the whole share) less the parts: the receiver's own span and metric bookkeeping.
TELEMETRY_PARTS = {
    "spans": "two bare spans, nested (SERVER, PRODUCER)",
    "attributes": "the webhook's span attributes (the same spans started with them − bare)",
    "metrics": "three metric records",
    "context": "trace context: from the request's headers, into the message",
    "rest": "the rest (the share less the parts)",
}


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


def measure_app(variant: Variant, *, requests: int, warmup: int) -> dict[str, Any]:
    """CPU µs per webhook of `variant`'s app over `requests` webhooks after `warmup` more; BenchError on any non-200."""
    import uvloop  # noqa: PLC0415

    app = build_app(variant)
    webhook = succeeded_webhook(DEV_WEBHOOK_SECRET)
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
    """CPU µs of each part of OpenTelemetry's work for one webhook, timed alone through replicate_relay.telemetry,
    with the span names, kinds and attributes one webhook through the real `receive` makes."""
    import uvloop  # noqa: PLC0415
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor  # noqa: PLC0415

    from replicate_relay import telemetry  # noqa: PLC0415

    app = build_app(VARIANT_BY_KEY["receiver-bare"])  # sets the receiver's telemetry up, as served
    webhook = succeeded_webhook(DEV_WEBHOOK_SECRET)
    captured: list[ReadableSpan] = []

    class Capture(SpanProcessor):  # records one request's spans; then off (a processor cannot be removed)
        def on_end(self, span: ReadableSpan) -> None:
            if len(captured) < 2:
                captured.append(span)

    uvloop.run(post(app, asgi_scope(webhook), webhook.body))  # the first request sets OpenTelemetry up
    trace.get_tracer_provider().add_span_processor(Capture())  # type: ignore[attr-defined]
    uvloop.run(post(app, asgi_scope(webhook), webhook.body))
    spans = sorted(captured, key=lambda span: span.parent is not None)
    if [span.kind.name for span in spans] != ["SERVER", "PRODUCER"]:
        raise BenchError(f"one webhook made spans {[(s.name, s.kind.name) for s in spans]}, not SERVER and PRODUCER")
    (server, server_attributes), (producer, producer_attributes) = [(s, dict(s.attributes or {})) for s in spans]
    tracer = telemetry.tracer()
    headers = dict(webhook.headers)
    message = {"prediction_id": "bench", "webhook_id": webhook.webhook_id}

    def spans_with(first: dict[str, Any], second: dict[str, Any]) -> Callable[[], None]:
        def work() -> None:
            with (
                tracer.start_as_current_span(server.name, kind=server.kind, attributes=first),
                tracer.start_as_current_span(producer.name, kind=producer.kind, attributes=second),
            ):
                pass

        return work

    def metrics() -> None:
        telemetry.METRICS.webhooks.add(1, {"outcome": "accepted"})
        telemetry.METRICS.webhook_duration.record(0.001, {"outcome": "accepted"})
        telemetry.METRICS.publish_duration.record(0.001, {"topic": "replicate-events", "outcome": "ok"})

    def context() -> None:
        with tracer.start_as_current_span("send"):  # inject_message writes nothing without a current span
            telemetry.extract_http(headers)
            telemetry.inject_message(dict(message))

    def timed(work: Callable[[], Any]) -> float:
        for _ in range(warmup):
            work()
        started = time.process_time()
        for _ in range(iterations):
            work()
        return (time.process_time() - started) / iterations * 1e6

    us = {
        "spans": timed(spans_with({}, {})),
        "attributes": timed(spans_with(server_attributes, producer_attributes)),
        "metrics": timed(metrics),
        "context": timed(context) - timed(spans_with({}, {})) / 2,  # less the one span it needs
    }
    us["attributes"] -= us["spans"]
    return {"variant": TELEMETRY_CHILD, "iterations": iterations, "us": us}


def child_main(role: str, requests: int) -> int:
    """A measuring child: prints its result as one JSON line (a BenchError's traceback goes to the log)."""
    if role == TELEMETRY_CHILD:
        result = measure_telemetry(iterations=requests, warmup=WARMUP)
    else:
        result = measure_app(VARIANT_BY_KEY[role], requests=requests, warmup=WARMUP)
    print(json.dumps(result), flush=True)
    return 0


def child_env(*, telemetry: bool) -> dict[str, str]:
    env = {name: value for name, value in common.project_env({}).items() if not name.startswith(CLEARED_PREFIXES)}
    env.update(CHILD_ENV)
    if not telemetry:
        env["OTEL_SDK_DISABLED"] = "true"
    return env


def run_child(role: str, *, requests: int, telemetry: bool = True) -> dict[str, Any]:
    """One fresh child measuring `role` (a variant's key, or TELEMETRY_CHILD); its result, or BenchError."""
    argv = [str(Path(__file__).resolve()), "_child", role, str(requests)]
    timeout = 60 + 0.002 * (requests + WARMUP)  # a child starts in about a second, a webhook costs under 1 ms
    env = child_env(telemetry=telemetry)
    log = common.LOG_DIR / "receiver_cpu.log"  # every child's stderr, from this run (run() clears it)
    result: dict[str, Any] = common.child_result(role, argv, env=env, timeout=timeout, log=log)
    return result


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of the rounds, and the spread: (max − min) as a percentage of the median."""
    median, low, high = statistics.median(values), min(values), max(values)
    return {
        "median": round(median, 1),
        "min": round(low, 1),
        "max": round(high, 1),
        "spread_pct": round((high - low) / median * 100, 1) if median else 0.0,
    }


def summarise(
    app_rounds: Mapping[str, Sequence[float]], telemetry_rounds: Sequence[Mapping[str, float]]
) -> dict[str, Any]:
    """Each variant's and each telemetry part's median and range, and what they imply."""
    variants = {key: {"label": VARIANT_BY_KEY[key].label, **spread(v)} for key, v in app_rounds.items()}
    median = {key: row["median"] for key, row in variants.items()}
    share = median["receiver"] - median["receiver-no-telemetry"]
    parts = {key: spread([one[key] for one in telemetry_rounds]) for key in TELEMETRY_PARTS if key != "rest"}
    parts["rest"] = {"median": round(share - sum(part["median"] for part in parts.values()), 1)}
    return {
        "variants": variants,
        "telemetry_us": round(share, 1),
        "telemetry": parts,
        "baseline_multiple": round(median["receiver"] / median[BASELINE], 2) if median[BASELINE] else None,
    }


def render(document: Mapping[str, Any]) -> str:
    """The section: CPU per webhook per variant against the no-op, OpenTelemetry's share in parts."""
    variants, parts, share = document["variants"], document["telemetry"], document["telemetry_us"]
    baseline = variants[BASELINE]["median"]
    rows = [
        [
            row["label"],
            f"{row['median']:,.1f}",
            f"{row['min']:,.1f}–{row['max']:,.1f}",
            f"{row['median'] / baseline:.2f}×",
        ]
        for row in variants.values()
    ]
    telemetry = [["OpenTelemetry: the receiver − the SDK-off variant", f"{share:,.1f}", "100%"]]
    telemetry += [
        [f"- {TELEMETRY_PARTS[key]}", f"{p['median']:,.1f}", f"{p['median'] / share:.0%}"] for key, p in parts.items()
    ]
    return "\n\n".join(
        [
            common.provenance(document) + f" {document['settings']['requests']:,} webhooks a child, "
            f"{document['settings']['rounds']} rounds.",
            common.markdown_table(["variant", "CPU µs / webhook", "min–max", "× no-op"], rows),
            f"The receiver as served costs **{document['baseline_multiple']:.2f}×** functions-framework's no-op in the "
            "same run: across machines, compare this multiple.",
            common.markdown_table(["OpenTelemetry for one accepted webhook", "CPU µs", "share"], telemetry),
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, help="webhooks per child (default 20,000; --quick 2,000)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh children per variant (default 3)")
    parser.add_argument("--quick", action="store_true", help="2,000 webhooks per child: a smoke check")
    args = parser.parse_args(argv)
    args.requests = args.requests or (2_000 if args.quick else 20_000)
    if not 10 <= args.requests <= 200_000 or not 1 <= args.rounds <= 20:
        parser.error("--requests 10-200,000 (a signed webhook is valid for 300 s), --rounds 1-20")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        return child_main(argv[1], int(argv[2]))
    args = parse_args(argv)
    return common.run_guarded(Processes(), lambda: run(args))


def run(args: argparse.Namespace) -> int:
    busy = common.check_busy()
    common.fresh_log_path("receiver_cpu")
    roles = [*VARIANT_BY_KEY, TELEMETRY_CHILD]
    app_rounds: dict[str, list[float]] = {key: [] for key in VARIANT_BY_KEY}
    telemetry_rounds: list[dict[str, float]] = []
    for number in range(1, args.rounds + 1):
        # Every other round backwards, so drift (a busy neighbour) does not always fall on the same variant.
        order = roles if number % 2 else roles[::-1]
        figures = []
        for role in order:
            if role == TELEMETRY_CHILD:
                result = run_child(role, requests=args.requests)
                telemetry_rounds.append(result["us"])
                figures.append(f"telemetry spans {result['us']['spans']:,.1f}")
            else:
                result = run_child(role, requests=args.requests, telemetry=VARIANT_BY_KEY[role].telemetry)
                app_rounds[role].append(result["us_per_webhook"])
                figures.append(f"{role} {result['us_per_webhook']:,.1f}")
        print(f"round {number}: CPU µs per webhook: {', '.join(figures)}", flush=True)

    document = {
        **common.results_header(busy),
        "settings": {"requests": args.requests, "warmup": WARMUP, "rounds": args.rounds, "quick": args.quick},
        **summarise(app_rounds, telemetry_rounds),
    }
    common.publish("receiver_cpu", RESULTS_JSON, document, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
