"""examples/typescript on the test stack: the app's trigger (Node, `npm run trigger`) submits a
restoration through the API, Relay runs it on the simulator and archives the output, and job-events
pushes it to the app's route (`npm run server`, registered with `add_app_endpoint`), which marks the
order done in its store. A trigger run again for the order gets the first job back; `npm run cancel`
stops an order's job, and the route marks the order canceled. The example's
own checks (tsc, generated types against schemas/openapi.v1.json, node's test runner) run here too.

Node 20+ and npm are required: missing, the tests fail (never skip). The example's dependencies
are installed here with `npm ci` whenever node_modules is missing or older than package-lock.json.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google.cloud.storage as storage
import httpx
import jsonschema
import pytest
from google.api_core import exceptions as google_exceptions
from google.cloud import pubsub_v1

from replicate_relay.devstack.processes import free_port
from replicate_relay.devstack.stack import LocalStack
from replicate_relay.testing import png
from tests.integration.conftest import WAIT_SECONDS, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "typescript"
LOCKFILE = EXAMPLE / "package-lock.json"
INSTALLED_STAMP = EXAMPLE / "node_modules" / ".relay-installed-lock.sha256"
JOB_EVENT_SCHEMA = json.loads((ROOT / "schemas" / "job-event.v1.schema.json").read_text(encoding="utf-8"))
NODE_MAJOR = 20
START_SECONDS = 60.0  # tsx compiles on start; slow on a busy 2-core box
# Variables of the developer's shell that would change what the example does.
EXAMPLE_VARIABLES = (
    "RELAY_API_URL",
    "RELAY_API_AUTH",
    "RELAY_API_AUDIENCE",
    "RELAY_PUSH_AUTH",
    "RELAY_PUSH_AUDIENCE",
    "RELAY_PUSH_SERVICE_ACCOUNT",
    "ORDERS_FILE",
    "PORT",
    "HOST",
)


def _example_env(**values: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in EXAMPLE_VARIABLES}
    return {**env, "NO_COLOR": "1", "npm_config_update_notifier": "false", **values}


@pytest.fixture(scope="module")
def npm() -> str:
    """npm, with the example's locked dependencies installed (`npm ci` when missing or stale)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            f"node and npm (Node {NODE_MAJOR}+) are needed for examples/typescript and were not found on PATH "
            "(Debian: apt-get install nodejs npm)"
        )
    argv = [node, "--version"]
    version = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()  # noqa: S603 - node from PATH
    if int(version.lstrip("v").split(".")[0]) < NODE_MAJOR:
        pytest.fail(f"examples/typescript needs Node {NODE_MAJOR} or newer; {node} is {version}")
    wanted = hashlib.sha256(LOCKFILE.read_bytes()).hexdigest()
    installed = INSTALLED_STAMP.read_text().strip() if INSTALLED_STAMP.exists() else None
    if installed != wanted:
        done = subprocess.run(  # noqa: S603 - npm from PATH, the example's own lockfile
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=EXAMPLE,
            env=_example_env(),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in examples/typescript failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        INSTALLED_STAMP.write_text(wanted + "\n")
    return npm


def run_npm(
    npm: str, *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - npm from PATH, the example's own scripts
        [npm, "run", "--silent", *args],
        cwd=EXAMPLE,
        env=env or _example_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class TsServer:
    """`npm run server` on a free loopback port, its output in a file."""

    process: subprocess.Popen[bytes]
    url: str
    store: Path
    log: Path

    def orders(self) -> dict[str, Any]:
        if not self.store.exists():
            return {}
        data: dict[str, Any] = json.loads(self.store.read_text(encoding="utf-8"))
        return data

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def ts_server(npm: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TsServer]:
    folder = tmp_path_factory.mktemp("typescript-app")
    port = free_port()
    store, log = folder / "orders.json", folder / "server.log"
    env = _example_env(RELAY_PUSH_AUTH="off", HOST="127.0.0.1", PORT=str(port), ORDERS_FILE=str(store))
    with log.open("wb") as sink:
        # Its own process group: npm, sh, tsx and tsx's node child all end with it.
        process = subprocess.Popen(  # noqa: S603 - npm from PATH, the example's own script
            [npm, "run", "server"], cwd=EXAMPLE, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = TsServer(process, f"http://127.0.0.1:{port}/relay/job-events", store, log)
    try:

        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"npm run server exited with {process.returncode}:\n{server.output()}")
            return "listening on" in server.output()

        wait_for(listening, timeout=START_SECONDS, what="the TypeScript server to listen")
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def app_endpoint(stack: LocalStack, ts_server: TsServer) -> Iterator[str]:
    """The TypeScript server as an app endpoint of the stack; the subscription and its dead letter
    are deleted afterwards, so later tests' job-events are not pushed to it."""
    name = f"ts-app-{uuid.uuid4().hex[:8]}"
    actions = stack.add_app_endpoint(name, ts_server.url)
    assert any(f"subscriptions/{name} → {ts_server.url}" in line for line in actions), actions
    try:
        yield name
    finally:
        project = stack.config.project
        subscriber = pubsub_v1.SubscriberClient()
        publisher = pubsub_v1.PublisherClient()
        for subscription in (name, f"{name}-dead-letter"):
            with contextlib.suppress(google_exceptions.NotFound):
                subscriber.delete_subscription(
                    request={"subscription": subscriber.subscription_path(project, subscription)}
                )
        with contextlib.suppress(google_exceptions.NotFound):
            publisher.delete_topic(request={"topic": publisher.topic_path(project, f"{name}-dead-letter")})
        subscriber.close()


def command(npm: str, stack: LocalStack, name: str, *args: str, exit_code: int = 0) -> dict[str, Any]:
    """`npm run NAME -- ARGS --json` against the stack's API, without auth as under `make run`: what it printed."""
    env = _example_env(RELAY_API_URL=stack.api_url, RELAY_API_AUTH="off")
    done = run_npm(npm, name, "--", *args, "--json", env=env)
    assert done.returncode == exit_code, f"npm run {name} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    printed: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return printed


def trigger(npm: str, stack: LocalStack, order: str, image: Path, *inputs: str) -> dict[str, Any]:
    """`npm run trigger -- --order ORDER --image IMAGE [--input KEY=VALUE]… --json`."""
    extra = [part for pair in inputs for part in ("--input", pair)]
    return command(npm, stack, "trigger", "--order", order, "--image", str(image), *extra)


def order_record(ts_server: TsServer, order: str) -> dict[str, Any]:
    """The order as the route wrote it down, once a job-events push has arrived for it."""

    def marked() -> dict[str, Any] | None:
        found: dict[str, Any] | None = ts_server.orders().get("orders", {}).get(order)
        return found

    try:
        # A bound, not a figure to meet: a loaded emulator can hold a subscription's pushes a while (conftest.py).
        return wait_for(marked, timeout=2 * WAIT_SECONDS, what=f"order {order} in the app's store")
    except AssertionError as late:
        raise AssertionError(f"{late}; the server's output:\n{ts_server.output()}") from None


def predictions_created(simulator: httpx.Client) -> int:
    calls = simulator.get("/_sim/stats").json()["calls"]
    return sum(count for name, count in calls.items() if name.startswith("create"))


def test_the_typescript_trigger_submits_a_restoration_and_its_route_marks_the_order_done(
    stack: LocalStack, simulator: httpx.Client, ts_server: TsServer, app_endpoint: str, npm: str, tmp_path: Path
) -> None:
    order = f"A-{uuid.uuid4().hex[:6]}"
    photo = tmp_path / "photo.png"
    photo.write_bytes(png(7))
    before = predictions_created(simulator)

    submitted = trigger(npm, stack, order, photo)
    assert submitted["order"] == order
    assert submitted["replayed"] is False
    job_id, prediction_id = submitted["job_id"], submitted["prediction_id"]
    assert prediction_id
    assert predictions_created(simulator) == before + 1

    # The simulator ran the prediction to the end and delivered its completed webhook.
    def delivered() -> dict[str, Any] | None:
        log: dict[str, Any] = simulator.get(f"/_sim/predictions/{prediction_id}/deliveries").json()
        return log if log["final"] == "delivered" else None

    assert wait_for(delivered, what="the simulator's completed webhook")["status"] == "succeeded"

    # The job, read through the API: succeeded, its output archived, the order number on it.
    def succeeded() -> dict[str, Any] | None:
        response = httpx.get(f"{stack.api_url}/v1/jobs/{job_id}", timeout=15)
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found if found["state"] == "succeeded" else None

    job = wait_for(succeeded, what=f"job {job_id} to succeed")
    assert job["metadata"] == {"order": order}
    assert job["model"] == "flux-kontext-apps/restore-image"
    assert job["input"]["output_format"] == "png"
    assert job["input"]["safety_tolerance"] == 2
    assert isinstance(job["input"]["seed"], int)
    assert job["input"]["input_image"] == "data:image/png;base64," + base64.b64encode(photo.read_bytes()).decode()

    # job-events pushed the final job to the TypeScript route, which wrote the order down.
    record = order_record(ts_server, order)
    assert (record["done"], record["status"], record["state"]) == (True, "restored", "succeeded")
    assert (record["job_id"], record["prediction_id"]) == (job_id, prediction_id)
    event = record["event"]
    jsonschema.Draft202012Validator(JOB_EVENT_SCHEMA).validate(event)
    assert event["metadata"] == {"order": order}
    assert event["event_id"] == f"{job_id}:succeeded"
    assert f"204 {job_id}:succeeded order={order} recorded" in ts_server.output()

    [archived] = job["outputs"]
    assert record["outputs"] == [archived["gs_uri"]] == [output["gs_uri"] for output in event["outputs"]]
    bucket = storage.Client(project=stack.config.project).bucket(stack.topology.bucket.name(stack.config.project))
    copy = bucket.blob(archived["gs_uri"].split("/", 3)[3]).download_as_bytes()
    assert copy == simulator.get(f"/files/{prediction_id}/0-output.png").raise_for_status().content


def test_a_trigger_run_again_for_the_same_order_gets_the_first_job_and_makes_no_second_prediction(
    stack: LocalStack, simulator: httpx.Client, npm: str, tmp_path: Path
) -> None:
    order = f"A-{uuid.uuid4().hex[:6]}"
    photo = tmp_path / "photo.png"
    photo.write_bytes(png(3))
    before = predictions_created(simulator)

    # Two at once (a double click): one creates the job; the other is answered 409 while the first
    # is in progress and retries after Retry-After, or arrives later and gets the replay.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: trigger(npm, stack, order, photo), range(2)))
    again = trigger(npm, stack, order, photo)  # and once more, after both

    assert {result["job_id"] for result in [*results, again]} == {results[0]["job_id"]}
    assert sorted(result["replayed"] for result in results) == [False, True]
    assert again["replayed"] is True
    assert predictions_created(simulator) == before + 1


def test_the_typescript_cancel_stops_an_orders_job_and_its_route_marks_the_order_canceled(
    stack: LocalStack, ts_server: TsServer, app_endpoint: str, npm: str, tmp_path: Path
) -> None:
    order = f"A-{uuid.uuid4().hex[:6]}"
    photo = tmp_path / "photo.png"
    photo.write_bytes(png(5))
    # A restoration that would run for two minutes: the customer gives up before.
    job_id = trigger(npm, stack, order, photo, "sim_duration=120", "sim_files=0")["job_id"]

    asked = command(npm, stack, "cancel", "--job", job_id)
    assert (asked["order"], asked["job_id"], asked["requested"]) == (order, job_id, True)
    assert asked["cancel_requested_at"]
    assert asked["state"] not in {"succeeded", "failed", "canceled", "aborted"}

    # Replicate's canceled webhook ends the job; job-events pushes it to the route.
    record = order_record(ts_server, order)
    assert (record["status"], record["state"], record["job_id"]) == ("restoration_canceled", "canceled", job_id)
    assert record["outputs"] == []

    # Once ended, a cancel has nothing to stop: exit 3, and how the job ended.
    again = command(npm, stack, "cancel", "--job", job_id, exit_code=3)
    assert (again["requested"], again["state"]) == (False, "canceled")
    missing = run_npm(
        npm,
        "cancel",
        "--",
        "--job",
        f"no-such-{uuid.uuid4().hex}",
        env=_example_env(RELAY_API_URL=stack.api_url, RELAY_API_AUTH="off"),
    )
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "urn:replicate-relay:problem:not-found" in missing.stderr


def test_the_example_typechecks_its_generated_types_match_the_openapi_document_and_its_node_tests_pass(
    npm: str,
) -> None:
    for script in ("typecheck", "generate:check", "test"):
        done = run_npm(npm, script)
        assert done.returncode == 0, f"npm run {script} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
