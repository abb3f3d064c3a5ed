"""API benchmark: submits per second through the `api` service, against the library it wraps.

On the local stack (emulators, the Replicate simulator), COUNT submissions with CONCURRENCY in flight:
- `api`: `POST /v1/jobs` with an `Idempotency-Key` each, as an app would (one process, the dev stack's
  gunicorn threads);
- baseline, in the same run: `RelayClient.submit` (the Submitter) called from this process with the
  same concurrency: what a Python app gets without the service.
Each submission is the full path: the Firestore job, the prediction created at the simulator with
the webhook set, the link. The simulator finishes the predictions as they come (short `sim_duration`),
so the webhooks they send load the stack as real ones would.

Writes bench/results/api.json and the api section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Run as a script, so sys.path[0] is bench/ (for `common`); the project's packages live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common
import httpx
from common import RESULTS_DIR, check_busy, results_header

from replicate_relay.client import RelayClient
from replicate_relay.devstack.stack import LocalStack, StackConfig

MODEL = "flux-kontext-apps/restore-image"


def _input(index: int) -> dict[str, Any]:
    return {"input_image": f"https://example.com/photo-{index}.png", "seed": index, "sim_duration": 0.2}


def _timed(count: int, concurrency: int, one: Callable[[int], None]) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0

    def run(index: int) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            one(index)
        except Exception:  # counted, not raised: a benchmark reports failures
            errors += 1
            return
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(run, range(count)))
    wall = time.perf_counter() - started
    figures = {f"p{p}_ms": None if (v := common.percentile(latencies, p)) is None else 1000 * v for p in (50, 99)}
    return {"count": count, "errors": errors, "wall_seconds": wall, "per_second": len(latencies) / wall, **figures}


def bench_api(stack: LocalStack, count: int, concurrency: int) -> dict[str, Any]:
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:

        def one(index: int) -> None:
            body = {"model": MODEL, "input": _input(index), "metadata": {"order": f"bench-{index}"}}
            response = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
            response.raise_for_status()

        return _timed(count, concurrency, one)


def bench_library(client: RelayClient, count: int, concurrency: int) -> dict[str, Any]:
    def one(index: int) -> None:
        client.submit(MODEL, _input(index), metadata={"order": f"lib-{index}"})

    return _timed(count, concurrency, one)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="submissions per row")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="40 submissions per row: a smoke run")
    args = parser.parse_args(argv)
    count = 40 if args.quick else args.count
    busy = check_busy()
    config = StackConfig.on_free_ports(reconcile_every=0, log_dir=RESULTS_DIR / "logs" / "api")
    stack = LocalStack(config)
    stack.start()
    try:
        # Google's clients find the emulators through the environment of the process that makes them.
        os.environ.update(stack.client_env)
        with RelayClient.from_env(stack.client_env) as client:
            bench_library(client, 5, 1)  # warm both paths: clients, connections, first imports
            bench_api(stack, 5, 1)
            library = bench_library(client, count, args.concurrency)
            api = bench_api(stack, count, args.concurrency)
    finally:
        stack.stop()
    results = {
        **results_header(busy),
        "settings": {"count": count, "concurrency": args.concurrency, "quick": args.quick},
        "api": api,
        "library": library,
    }
    common.publish("api", RESULTS_DIR / "api.json", results, render)
    return 0


def render(document: dict[str, Any]) -> str:
    """The api section: submits per second and latency, the library in process as the baseline."""
    paths = (("`RelayClient.submit` in process (baseline)", document["library"]), ("`POST /v1/jobs`", document["api"]))
    rows = [
        [name, f"{row['per_second']:.1f}", common.ms(row["p50_ms"]), common.ms(row["p99_ms"]), str(row["errors"])]
        for name, row in paths
    ]
    settings = document["settings"]
    return "\n".join(
        [
            common.provenance(document)
            + f" {settings['count']} submissions per row, {settings['concurrency']} in flight.",
            "",
            common.markdown_table(["path", "submits/s", "p50", "p99", "errors"], rows),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
