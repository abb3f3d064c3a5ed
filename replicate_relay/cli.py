"""The `relay` command line."""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from replicate_relay.config import ConfigError, parse_duration
from replicate_relay.deploy import add_deploy_command
from replicate_relay.devstack.processes import StackError
from replicate_relay.devstack.stack import PORT_FIELDS, LocalStack, StackConfig
from replicate_relay.ops.commands import add_command, add_commands
from replicate_relay.topology import AppEndpoint, parse_app_endpoint
from replicate_relay.verify import add_verify_command


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.command(args))
    except (StackError, ConfigError) as error:
        print(f"relay: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description="Replicate Relay: webhooks in, jobs out.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    dev = add_command(commands, "dev", _dev)
    defaults = StackConfig()
    env = os.environ
    dev.add_argument("--project", default=env.get("RELAY_DEV_PROJECT", defaults.project))
    handler_ports = {f"{name.replace('-', '_')}_port": port for name, port in defaults.handler_ports.items()}
    for name, default in ({name: getattr(defaults, name) for name in PORT_FIELDS} | handler_ports).items():
        variable = f"RELAY_DEV_{name.upper()}"
        flag = "--" + name.replace("_", "-")
        dev.add_argument(flag, type=int, default=int(env.get(variable, default)), help=f"(env {variable})")
    dev.add_argument("--log-dir", type=Path, default=defaults.log_dir, help="where each process logs")
    dev.add_argument(
        "--telemetry-dir",
        type=Path,
        default=defaults.telemetry_dir,
        help="where each process appends its spans and metrics (read by `relay trace`)",
    )
    dev.add_argument(
        "--reconcile-every",
        type=float,
        default=defaults.reconcile_every,
        metavar="SECONDS",
        help="run the reconciler this often, as Cloud Scheduler does in production (0: never)",
    )
    _repeatable(
        dev,
        "--app-endpoint",
        "NAME=URL",
        "also push job-events to URL through a subscription NAME (with NAME-dead-letter), as Terraform's "
        "app_event_endpoints does, without an OIDC token: the emulator sends none; http only to loopback. "
        "NAME=URL@@APP: only the events of APP's jobs (its e-mail), as app_subscription_apps does",
        kind=_app_endpoint,
    )
    dev.add_argument("--demo", action="store_true", help="send a signed sample prediction lifecycle once up")
    dev.add_argument("--exit-after-demo", action="store_true", help="stop once the demo is done (for scripts)")

    submit = add_command(commands, "submit", _submit)
    target = submit.add_mutually_exclusive_group()
    target.add_argument("--model", help="OWNER/NAME or OWNER/NAME:VERSION (default RELAY_DEFAULT_MODEL)")
    target.add_argument("--deployment", metavar="OWNER/NAME", help="run on this deployment instead of a model")
    _run_options(submit, "RELAY_DEFAULT_DEADLINE")
    train = add_command(commands, "train", _train)
    train.add_argument("--version", required=True, metavar="OWNER/NAME:VERSION", help="the version to train")
    train.add_argument("--destination", required=True, metavar="OWNER/NAME", help="the model the new version goes to")
    _run_options(train, "RELAY_DEFAULT_TRAINING_DEADLINE")
    cancel = add_command(commands, "cancel", _cancel)
    cancel.add_argument("job_id", metavar="JOB_ID", help="the job whose prediction or training to cancel")

    adopt = add_command(commands, "adopt", _adopt)
    adopt.add_argument("--since", default="2h", metavar="WHEN", help="created since: 2h, 90m, 1d or an ISO 8601 time")
    adopt.add_argument("--model", metavar="OWNER/NAME", help="only this model's predictions")
    adopt.add_argument("--dry-run", action="store_true", help="print what would be done; write and publish nothing")
    adopt.add_argument(
        "--requests-per-second", type=float, default=10.0, metavar="N", help="cap on Replicate calls (default 10)"
    )
    adopt.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="per Google API call")
    adopt.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_commands(commands)
    add_deploy_command(commands)
    add_verify_command(commands)

    trace = add_command(commands, "trace", _trace)
    trace.add_argument("id", metavar="ID", help="a trace id (32 hex digits), a prediction id or a job id")
    trace.add_argument("--file", metavar="PATH", help="default RELAY_TRACE_FILE, else .relay/telemetry/spans.jsonl")
    trace.add_argument("--html", metavar="FILE", help="write one self-contained HTML page instead")
    trace.add_argument("--gcp", action="store_true", help="read Cloud Trace instead of the file")
    trace.add_argument("--project", help="with --gcp; default GOOGLE_CLOUD_PROJECT, else the credentials' project")
    trace.add_argument("--since", metavar="WHEN", help="with --gcp: traces since 2h, 3d or an ISO time (default 7d)")
    trace.add_argument("--width", type=int, default=100, metavar="N", help="columns of text (default 100)")
    trace.add_argument("--no-color", action="store_true", help="no ANSI colour (also when NO_COLOR is set)")
    trace.add_argument("--json", action="store_true", help="print the matched spans as JSON for scripts")
    return parser


def _trace(args: argparse.Namespace) -> int:
    """draw the waterfall of a trace, prediction or job from the local span file

    Find every trace of ID (a trace id, a prediction id or a job id) in the span file the dev stack's
    processes append to, or in Cloud Trace with --gcp, and draw each as a tree of timed spans."""
    from replicate_relay.traceview.command import run_trace  # noqa: PLC0415 - only `relay trace` needs it

    return run_trace(args)


def _submit(args: argparse.Namespace) -> int:
    """create a job and its Replicate prediction, with the webhook set

    Create jobs/{id}, then the prediction of --model or --deployment through Replicate's API with
    webhook=RELAY_WEBHOOK_URL and, for a deadline, Cancel-After. Needs REPLICATE_API_TOKEN, RELAY_WEBHOOK_URL
    and Firestore (FIRESTORE_EMULATOR_HOST locally)."""
    from replicate_relay.submit_commands import run_submit  # noqa: PLC0415 - keeps `relay dev` free of Replicate imports

    return run_submit(model=args.model, deployment=args.deployment, **_run_values(args))


def _train(args: argparse.Namespace) -> int:
    """create a job and its Replicate training, with the webhook set

    Create jobs/{id} (kind training), then the training of --version into --destination with
    webhook=RELAY_WEBHOOK_URL; the job's output names the new version once it succeeds. Needs what
    `relay submit` needs."""
    from replicate_relay.submit_commands import run_train  # noqa: PLC0415 - keeps `relay dev` free of Replicate imports

    return run_train(version=args.version, destination=args.destination, **_run_values(args))


def _cancel(args: argparse.Namespace) -> int:
    """ask Replicate to cancel a job's prediction or training

    Record the request on the job and post Replicate's cancel; the job ends canceled when Replicate's
    webhook says so. Exits 1 when the job is final (or its run has ended) or there is no such job."""
    from replicate_relay.submit_commands import run_cancel  # noqa: PLC0415 - keeps `relay dev` free of Replicate imports

    return run_cancel(args.job_id)


def _run_options(parser: argparse.ArgumentParser, default_deadline: str) -> None:
    """The options `relay submit` and `relay train` share: inputs, metadata, a deadline, waiting."""
    input_help = "an input; VALUE is JSON when it parses (42, true, [1]), else text; @PATH sends a file as a data: URI"
    _repeatable(parser, "--input", "KEY=VALUE", input_help)
    _repeatable(parser, "--metadata", "KEY=VALUE", "kept on the job")
    parser.add_argument(
        "--deadline",
        type=_duration,
        metavar="DURATION",
        help=f"cancel the job past this long from now: 90s, 10m, 1h30m; off for none (default {default_deadline})",
    )
    parser.add_argument("--wait", type=float, default=0, metavar="SECONDS", help="wait for the job to end")


def _run_values(args: argparse.Namespace) -> dict[str, Any]:
    """What `_run_options` read, as run_submit and run_train take them."""
    return {
        "inputs": _pairs(args.input, "--input", parse_values=True),
        "metadata": {key: str(value) for key, value in _pairs(args.metadata, "--metadata").items()},
        "deadline": args.deadline,
        "wait_seconds": args.wait,
    }


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _adopt(args: argparse.Namespace) -> int:
    """make jobs for predictions created without a webhook (a polling worker's), and bring them up to date

    List the account's predictions newest first down to --since; for each one Relay has no job for, create
    jobs/{prediction id} (source adopted) and publish the prediction to replicate-events (source adopted),
    so the handlers finish and archive it; the reconciler finishes those still running. Rerunning changes
    nothing already adopted. Needs REPLICATE_API_TOKEN, Firestore and Pub/Sub."""
    from replicate_relay.adopt import run_adopt  # noqa: PLC0415 - keeps `relay dev` free of Replicate imports

    if not (args.requests_per_second > 0 and args.timeout > 0):
        raise ConfigError("--requests-per-second and --timeout must be more than 0")
    return run_adopt(
        since=args.since,
        model=args.model,
        dry_run=args.dry_run,
        as_json=args.json,
        requests_per_second=args.requests_per_second,
        timeout=args.timeout,
    )


def _repeatable(
    parser: argparse.ArgumentParser, flag: str, metavar: str, text: str, *, kind: Callable[[str], Any] = str
) -> None:
    """A flag that may be given several times; its values in a list, in order."""
    parser.add_argument(flag, action="append", default=[], type=kind, metavar=metavar, help=f"{text}; repeatable")


def _pairs(items: list[str], flag: str, *, parse_values: bool = False) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        pairs[key] = _value(value) if parse_values else value
    return pairs


def _value(text: str) -> Any:
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ConfigError(f"cannot read {path}: {error.strerror}") from None
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"
    try:
        return json.loads(text)
    except ValueError:
        return text


def _dev(args: argparse.Namespace) -> int:
    """run the whole pipeline locally on Google's emulators

    Start the Pub/Sub and Firestore emulators, fake-gcs-server, the receiver and the handlers on loopback;
    provision infra/topology.yaml; serve until Ctrl-C."""
    config = StackConfig(
        project=args.project,
        handler_ports={"job-status": args.job_status_port, "archive-outputs": args.archive_outputs_port},
        reconcile_every=args.reconcile_every,
        log_dir=args.log_dir,
        telemetry_dir=args.telemetry_dir,
        **{name: getattr(args, name) for name in PORT_FIELDS},
    )
    stack = LocalStack(config)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    print("Starting the local stack (emulators take 5-15 s)…", flush=True)
    started = time.monotonic()
    try:
        for line in stack.start():
            print(f"  {line}")
        for endpoint in args.app_endpoint:
            for line in stack.add_app_endpoint(endpoint.name, endpoint.url, app=endpoint.app):
                print(f"  {line}")
        print(f"Ready in {time.monotonic() - started:.1f} s. Logs in {config.log_dir}/")
        _print_addresses(stack)
        if args.demo:
            from replicate_relay.devstack.demo import DEMO_JOBS, run_demo  # noqa: PLC0415 - needs the emulator env set first

            jobs = run_demo(stack)
            expected = ["succeeded"] + [demo.expected for demo in DEMO_JOBS]
            ended_as_expected = [job.state for job in jobs] == expected
            verdict = "every job ended where expected" if ended_as_expected else "NOT every job ended as expected"
            print(f"\nDemo finished: {verdict}.")
            if args.exit_after_demo:
                return 0 if ended_as_expected else 1
        print("\nServing; Ctrl-C stops everything.", flush=True)
        return _watch(stack)
    except KeyboardInterrupt:
        print("\nStopping…", flush=True)
        return 0
    finally:
        stack.stop()
        print("Stopped every process of the local stack.", flush=True)


def _app_endpoint(text: str) -> AppEndpoint:
    try:
        return parse_app_endpoint(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _print_addresses(stack: LocalStack) -> None:
    env = stack.emulator_env
    print(f"  receiver (webhook URL)  {stack.receiver_url}/")
    for name in stack.served_handlers:
        print(f"  {name + ' handler':<23} {stack.handler_url(name)}/")
    print(f"  reconciler              {stack.reconciler_url}/  (POST; every {stack.config.reconcile_every:g} s here)")
    print(f"  status page             {stack.status_page_url}/")
    print(f"  API (no token needed)   {stack.api_url}/v1/jobs  (docs/API.md)")
    print(f"  Replicate simulator     {stack.simulator_url}  (REPLICATE_BASE_URL for the client)")
    print(f"  Pub/Sub emulator        {env['PUBSUB_EMULATOR_HOST']}")
    print(f"  Firestore emulator      {env['FIRESTORE_EMULATOR_HOST']}")
    print(f"  Cloud Storage emulator  {env['STORAGE_EMULATOR_HOST']}")
    exports = " ".join(f"{name}={value}" for name, value in stack.client_env.items())
    print(f"  for other shells:       export {exports}")
    print("  check every hop:        relay verify   (in a shell with the exports above)")


def _watch(stack: LocalStack) -> int:
    while True:
        for name, process in {**stack.emulators, **stack.functions}.items():
            if not process.alive():
                print(f"relay: the {name} stopped unexpectedly; see {process.log_path}", file=sys.stderr)
                return 1
        time.sleep(1)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
