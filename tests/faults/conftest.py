"""The fault suite's stack: the whole local pipeline with a fast retry budget and Cloud Storage
behind a fault-injecting proxy. `make test-faults` runs this folder (CI too).

Each case gets a stack of its own (about 15 s to start): a case leaves redeliveries, locks and
backlogs behind it, and the next case's invariants must not depend on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.cloud import firestore, storage

from replicate_relay.devstack.processes import free_port
from replicate_relay.devstack.stack import DEV_REPLICATE_TOKEN, LocalStack, StackConfig
from tests.faults.harness import Invariants, Load
from tests.faults.proxy import FaultProxy
from tests.integration import conftest as integration
from tests.integration import fileserver
from tests.integration.conftest import Tap, _tap
from tests.integration.fileserver import FileServer

FAULT_TOPOLOGY = Path(__file__).with_name("topology.yaml")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="session")
def files() -> Iterator[FileServer]:
    yield from fileserver.running()


@pytest.fixture(scope="session")
def gcs_proxy() -> Iterator[FaultProxy]:
    """In front of fake-gcs-server; each case's stack points it at its own fake-gcs-server port."""
    proxy = FaultProxy("127.0.0.1", free_port())
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory, files: FileServer, gcs_proxy: FaultProxy) -> Iterator[LocalStack]:
    gcs_proxy.retarget(free_port())  # a fresh port: the last stack's may still be in TIME_WAIT
    config = StackConfig.on_free_ports(
        storage_port=gcs_proxy.backend_port,
        reconcile_every=0,  # the cases run the reconciler, as Cloud Scheduler would
        log_dir=tmp_path_factory.mktemp("fault-logs"),
        telemetry_dir=tmp_path_factory.mktemp("fault-telemetry"),
        topology_path=FAULT_TOPOLOGY,
        extra_env={
            # The handlers reach Cloud Storage through the proxy; the tests read it directly.
            "STORAGE_EMULATOR_HOST": gcs_proxy.url,
            "RELAY_PUBLISH_DEADLINE_SECONDS": "3",
            "RELAY_DOWNLOAD_LOCAL_HOSTS": files.host,
            "RELAY_DOWNLOAD_READ_TIMEOUT_SECONDS": "10",
            "RELAY_RECONCILE_QUIET_SECONDS": "4",
            "RELAY_RECONCILE_SUBMITTED_SECONDS": "30",
            "RELAY_COALESCE_SECONDS": "0.5",
        },
    )
    with integration.serving(config) as local:
        yield local


@pytest.fixture
def db(stack: LocalStack) -> firestore.Client:
    return firestore.Client(project=stack.config.project)


@pytest.fixture
def bucket(stack: LocalStack) -> storage.Bucket:
    return storage.Client(project=stack.config.project).bucket(stack.topology.bucket.name(stack.config.project))


# The simulator's control API, as the integration tests have it.
simulator = integration.simulator


@pytest.fixture
def job_events(stack: LocalStack) -> Iterator[Tap]:
    yield from _tap(stack, "job-events")


@pytest.fixture
def load(stack: LocalStack, db: firestore.Client) -> Iterator[Load]:
    driver = Load(db, stack.simulator_url, stack.receiver_url + "/", DEV_REPLICATE_TOKEN)
    yield driver
    driver.close()


@pytest.fixture
def invariants(
    stack: LocalStack, db: firestore.Client, bucket: storage.Bucket, simulator: httpx.Client, job_events: Tap
) -> Invariants:
    return Invariants(db=db, bucket=bucket, simulator=simulator, job_events=job_events, reconcile=stack.reconcile)


# Signing and posting webhooks to the receiver, as the integration tests do.
sign = integration.sign
http = integration.http
post = integration.post
deliver = integration.deliver
