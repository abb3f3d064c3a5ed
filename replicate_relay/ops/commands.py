"""`relay replay | jobs | reprocess | status`: argparse wiring of the operator functions."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from replicate_relay.config import ConfigError, Env
from replicate_relay.jobs import JobState
from replicate_relay.ops import context
from replicate_relay.ops.context import OpsSettings
from replicate_relay.ops.jobs_view import (
    JobFilter,
    job_detail_json,
    list_jobs,
    parse_since,
    render_job,
    render_jobs,
    show_job,
)
from replicate_relay.ops.monitoring import monitoring_client
from replicate_relay.ops.render import to_json
from replicate_relay.ops.replay import dead_letter_subscription, render_replay, replay
from replicate_relay.ops.status import collect_status, render_status
from replicate_relay.ops.usage import PriceTable
from replicate_relay.publisher import TopicPublisher
from replicate_relay.topology import load

N = TypeVar("N", int, float)

_CLEAR = "\x1b[H\x1b[2J"


def add_commands(subparsers: Any) -> None:
    """Register the operator commands on the `commands` subparsers of replicate_relay/cli.py."""
    common = argparse.ArgumentParser(add_help=False)
    timeout_doc = "give up on an unreachable Google API after this long, retries included (default %(default)g)"
    common.add_argument(
        "--timeout", type=_positive, default=context.DEFAULT_TIMEOUT, metavar="SECONDS", help=timeout_doc
    )
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON for scripts")

    replay_parser = add_command(subparsers, "replay", _replay, parents=[common, json_flag])
    replay_parser.add_argument("--from", dest="source", required=True, metavar="DEAD_LETTER_SUBSCRIPTION")
    replay_parser.add_argument("--limit", type=_positive_int, default=1000, help="at most this many (default 1000)")
    replay_parser.add_argument("--dry-run", action="store_true", help="show what would be replayed; hand all back")
    replay_parser.add_argument(
        "--to", default=None, metavar="TOPIC", help="default RELAY_EVENTS_TOPIC, else replicate-events"
    )

    jobs_parser = subparsers.add_parser("jobs", help="list or show jobs", description="Read jobs from Firestore.")
    actions = jobs_parser.add_subparsers(title="actions", required=True, metavar="ACTION")
    listing = add_command(actions, "list", _jobs_list, parents=[common, json_flag])
    listing.add_argument("--state", choices=[state.value for state in JobState])
    listing.add_argument(
        "--stuck", action="store_true", help="not final and not written for RELAY_RECONCILE_QUIET_SECONDS (600)"
    )
    listing.add_argument("--since", metavar="WHEN", help="updated since: 2h, 15m, 3d or an ISO 8601 time")
    listing.add_argument("--limit", type=_positive_int, default=50, help="at most this many (default 50)")
    show = add_command(actions, "show", _jobs_show, parents=[common, json_flag])
    show.add_argument("id", metavar="ID", help="a job id or a prediction id")

    again = add_command(subparsers, "reprocess", _reprocess, parents=[common, json_flag])
    again.add_argument("id", metavar="ID", help="a prediction id, or a job id (its prediction is used)")

    status = add_command(subparsers, "status", _status, parents=[common, json_flag])
    shown = status.add_mutually_exclusive_group()
    shown.add_argument("--watch", type=_positive, metavar="SECONDS", help="redraw this often until Ctrl-C")
    shown.add_argument(
        "--serve",
        action="store_true",
        help="serve the status page (the same figures, recent jobs, a latency chart) until Ctrl-C",
    )
    status.add_argument("--host", default="127.0.0.1", help="with --serve: the address to listen on (%(default)s)")
    status.add_argument("--port", type=_port, default=8084, help="with --serve: the port (default %(default)s)")
    status.add_argument("--iterations", type=_positive_int, default=None, help=argparse.SUPPRESS)


def add_command(
    commands: Any,
    name: str,
    run: Callable[[argparse.Namespace], int],
    *,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """Register the command NAME on `commands` (argparse subparsers), run by `run`. Its help is `run`'s
    docstring: the first line in the list of commands, the rest the command's description."""
    summary, _, description = inspect.cleandoc(run.__doc__ or "").partition("\n")
    parser: argparse.ArgumentParser = commands.add_parser(
        name, parents=list(parents), help=summary, description=description.strip() or None
    )
    parser.set_defaults(command=run)
    return parser


def _settings(args: argparse.Namespace) -> OpsSettings:
    return OpsSettings.from_env(os.environ, timeout=args.timeout)


def _now() -> datetime:
    return datetime.now(UTC)


def _replay(args: argparse.Namespace) -> int:
    """republish dead-lettered messages to replicate-events

    Pull dead-lettered messages and republish each (data and attributes, webhook_id kept, source=replay);
    acknowledge each only once Pub/Sub confirmed its copy. Safe to interrupt and rerun: handlers drop
    duplicates by webhook_id. Both subscriptions of the topic get the copy."""
    settings = _settings(args)
    subscription = dead_letter_subscription(load(), args.source)
    report = replay(
        context.subscriber_client(settings),
        context.publisher_client(settings),
        settings,
        subscription,
        topic=args.to or settings.events_topic,
        limit=args.limit,
        dry_run=args.dry_run,
    )
    print(to_json(report.as_dict()) if args.json else render_replay(report))
    return 1 if report.failed else 0


def _jobs_list(args: argparse.Namespace) -> int:
    """jobs, newest first (oldest first with --state or --stuck)

    Without --state/--stuck: newest first. With them: oldest first, the order the (state, updated_at)
    index of infra/firestore.indexes.json serves."""
    settings = _settings(args)
    prices = PriceTable.from_env(os.environ)
    now = _now()
    since = parse_since(args.since, now) if args.since else None
    selection = JobFilter(state=args.state, stuck=args.stuck, since=since, limit=args.limit)
    jobs = list_jobs(context.firestore_client(settings), settings, selection, now=now)
    print(to_json([job.json_form() for job in jobs]) if args.json else render_jobs(jobs, now=now, prices=prices))
    return 0


def _jobs_show(args: argparse.Namespace) -> int:
    """one job with its outputs, events and usage"""
    settings = _settings(args)
    prices = PriceTable.from_env(os.environ)
    detail = show_job(context.firestore_client(settings), settings, args.id, values=context.value_store(settings))
    shown = job_detail_json(detail, prices=prices) if args.json else render_job(detail, now=_now(), prices=prices)
    print(to_json(shown) if args.json else shown)
    return 0


def _reprocess(args: argparse.Namespace) -> int:
    """publish what Replicate knows of a prediction, as the reconciler would

    GET the prediction from Replicate (REPLICATE_API_TOKEN, RELAY_REPLICATE_BASE_URL) and publish its JSON
    to replicate-events with source=reconciler and a fresh webhook_id."""
    # Imported here, as replicate_relay/cli.py does for submit: keeps `relay dev` free of Replicate imports.
    from replicate_relay.bodies import BodyStore  # noqa: PLC0415
    from replicate_relay.ops.reprocess import render_reprocessed, reprocess, resolve_prediction  # noqa: PLC0415
    from replicate_relay.replicate_api import DEFAULT_BASE_URL, ReplicateAPI  # noqa: PLC0415

    settings = _settings(args)
    env = Env(os.environ)
    token = env.get_str("REPLICATE_API_TOKEN")
    replicate = ReplicateAPI.connect(token, base_url=env.get_str("RELAY_REPLICATE_BASE_URL", DEFAULT_BASE_URL))
    try:
        prediction_id, job_id, kind = resolve_prediction(context.firestore_client(settings), settings, args.id)
        client = context.publisher_client(settings)
        publisher = TopicPublisher(
            client.topic_path(settings.project, settings.events_topic), deadline_seconds=settings.timeout, client=client
        )
        bodies = BodyStore(context.storage_bucket(settings))  # a body past Pub/Sub's limit goes there
        result = reprocess(replicate, publisher, prediction_id, now=_now(), job_id=job_id, kind=kind, bodies=bodies)
    finally:
        replicate.close()
    print(to_json(result.as_dict()) if args.json else render_reprocessed(result))
    return 0


def _status(args: argparse.Namespace) -> int:
    """backlogs, jobs by state, stuck jobs"""
    if args.serve:
        return _serve_status_page(args)
    settings = _settings(args)
    subscriber = context.subscriber_client(settings)
    db = context.firestore_client(settings)
    metrics = None if settings.on_emulators else monitoring_client()
    topology = load()
    iteration = 0
    try:
        while True:
            status = collect_status(subscriber, db, topology, settings, now=_now(), metrics=metrics)
            screen = to_json(status.as_dict()) if args.json else render_status(status)
            if args.watch and not args.json and sys.stdout.isatty():
                screen = _CLEAR + screen
            print(screen, flush=True)
            iteration += 1
            if not args.watch or (args.iterations is not None and iteration >= args.iterations):
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _serve_status_page(args: argparse.Namespace) -> int:
    if args.json:
        raise ConfigError("--serve and --json do not go together: the page serves its JSON at /status.json")
    # Imported here: only this command needs the web stack (Flask, Jinja, functions-framework).
    from replicate_relay.ops import statuspage  # noqa: PLC0415

    PriceTable.from_env(os.environ)  # a malformed price table stops the command now, not each page
    # The page is configured by its environment, as when deployed; --timeout reaches it that way.
    os.environ[statuspage.TIMEOUT_VARIABLE] = f"{args.timeout:g}"
    statuspage.serve(args.host, args.port)
    return 0


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text}")
    return value


def _positive(text: str) -> float:
    value = _number(text, float, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _number(text: str, kind: Callable[[str], N], what: str) -> N:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
