"""The image test's stack: the emulators and the simulator on this machine, every Cloud Run service
a container of the image (`make image`), each with the environment infra/terraform gives it.

`make test-image` runs this folder (CI too); RELAY_IMAGE names the image (default: `make image`'s).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.cloud import firestore

from replicate_relay.devstack.containers import DEFAULT_IMAGE, ContainerLauncher, Engine, detect_engine
from replicate_relay.devstack.stack import REPO_ROOT, LocalStack, StackConfig
from replicate_relay.devstack.terraform_env import local_computed, service_environments
from tests.integration import fileserver
from tests.integration.fileserver import FileServer

PROJECT = "local-project"
TERRAFORM = REPO_ROOT / "infra" / "terraform"
SERVICES = ("receiver", "job-status", "archive-outputs", "reconciler", "status-page", "api")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.image)


@dataclass
class ImageStack:
    """The running stack, and what its start showed of each container."""

    stack: LocalStack
    engine: Engine
    image: str
    launcher: ContainerLauncher
    start_seconds: dict[str, float]  # from `run` to the first 200 on /health, all starting at once
    start_logs: dict[str, str]  # each container's output up to that 200


@pytest.fixture(scope="session")
def engine() -> Engine:
    return detect_engine()


@pytest.fixture(scope="session")
def image(engine: Engine) -> str:
    import os  # noqa: PLC0415

    name = os.environ.get("RELAY_IMAGE", DEFAULT_IMAGE)
    if not engine.image_exists(name):
        pytest.fail(f"no image {name} in {engine.name}: run `make image` first (`make test-image` does)")
    return name


@pytest.fixture(scope="session")
def files() -> Iterator[FileServer]:
    yield from fileserver.running()


@pytest.fixture(scope="session")
def image_stack(
    tmp_path_factory: pytest.TempPathFactory, engine: Engine, image: str, files: FileServer
) -> Iterator[ImageStack]:
    telemetry_dir = tmp_path_factory.mktemp("image-telemetry")
    environments = service_environments(
        TERRAFORM, variables={"project_id": PROJECT, "image": image}, resources=local_computed(PROJECT)
    )
    assert set(environments) == set(SERVICES), "the services infra/terraform defines changed: update SERVICES"
    launcher = ContainerLauncher(engine, image, environments=environments, telemetry_dir=telemetry_dir)
    config = StackConfig.on_free_ports(
        project=PROJECT,
        reconcile_every=0,  # the tests call the reconciler, as Cloud Scheduler would
        log_dir=tmp_path_factory.mktemp("image-logs"),
        telemetry_dir=telemetry_dir,
        extra_env={"RELAY_DOWNLOAD_LOCAL_HOSTS": files.host},
        launcher=launcher,
    )
    stack = LocalStack(config)
    try:
        stack.preflight()
        stack.start_emulators()
        stack.provision()
        stack.start_functions()
        # Ready = the first answer on /health, which every service gives only as a 200.
        start_seconds = {name: stack.functions[name].start_seconds or 0.0 for name in SERVICES}
        start_logs = {name: stack.functions[name].log_path.read_text() for name in SERVICES}
        with pytest.MonkeyPatch.context() as patch:
            for name, value in stack.client_env.items():
                patch.setenv(name, value)
            yield ImageStack(stack, engine, image, launcher, start_seconds, start_logs)
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def db(image_stack: ImageStack) -> firestore.Client:
    return firestore.Client(project=PROJECT)
