"""examples/restore_photos end to end on the test stack: the Relay worker, and its measured comparison with polling."""

from __future__ import annotations

import json
import re
import threading
import uuid
from pathlib import Path

import google.cloud.pubsub_v1 as pubsub_v1
import httpx
import pytest
from google.api_core import exceptions as google_exceptions

from examples.restore_photos import compare, polling_worker, worker
from examples.restore_photos.photos import find_photos
from replicate_relay.client import RelayClient
from replicate_relay.devstack.stack import LocalStack
from replicate_relay.testing import png
from tests.integration.conftest import WAIT_SECONDS, wait_for

# The threads a streaming pull (google-api-core, google-cloud-pubsub) or a Firestore listener runs
# on, and the consumer's callback pool: none may outlive the worker.
STREAM_THREADS = (
    "Thread-ConsumeBidirectionalStream",
    "Thread-LeaseMaintainer",
    "Thread-Heartbeater",
    "Thread-CallbackRequestDispatcher",
    "relay-job-events",
)


def photo_folder(root: Path, names: list[str]) -> Path:
    folder = root / "photos"
    folder.mkdir()
    for seed, name in enumerate(names):
        (folder / name).write_bytes(png(seed))
    return folder


def restore_case(root: Path) -> Path:
    """Three photos, one of them (torn.png) steered by its extra inputs to fail on the simulator."""
    photos = photo_folder(root, ["attic.png", "garden.jpg", "torn.png"])
    (photos / "torn.png.json").write_text(json.dumps({"sim_outcome": "failed", "sim_error": "CUDA out of memory"}))
    return photos


def check_restored(out: Path, printed: str, simulator: httpx.Client) -> None:
    """What the worker leaves for restore_case: two restored photos, the simulator's bytes, and the summary."""
    results = {entry["photo"]: entry for entry in json.loads((out / worker.SUMMARY_FILE).read_text())}
    for photo, restored in (("attic.png", "attic.png"), ("garden.jpg", "garden.png")):
        entry = results[photo]
        assert (entry["state"], entry["files"]) == ("succeeded", [restored])
        served = simulator.get(f"/files/{entry['prediction_id']}/0-output.png")
        assert (out / restored).read_bytes() == served.raise_for_status().content
    assert (results["torn.png"]["state"], results["torn.png"]["reason"]) == ("failed", "failed: CUDA out of memory")
    assert sorted(path.name for path in out.iterdir()) == ["attic.png", "garden.png", worker.SUMMARY_FILE]
    assert printed.startswith("2 succeeded, 1 failed, of 3 photos")
    assert re.search(r"^torn\.png\s+failed\s+\d+\.\d\d\s+failed: CUDA out of memory$", printed, re.MULTILINE)


def stream_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith(STREAM_THREADS))


def subscription_exists(path: str) -> bool:
    subscriber = pubsub_v1.SubscriberClient()
    try:
        subscriber.get_subscription(request={"subscription": path})
    except google_exceptions.NotFound:
        return False
    finally:
        subscriber.close()
    return True


def test_worker_restores_good_photos_reports_the_failed_one_and_leaves_no_subscription_or_stream(
    stack: LocalStack, simulator: httpx.Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = restore_case(tmp_path)
    out = tmp_path / "restored"
    subscription = f"restore-test-{uuid.uuid4().hex[:8]}"
    baseline = stream_threads()

    code = worker.main([str(photos), str(out), "--subscription", subscription, "--timeout", str(WAIT_SECONDS)])

    printed = capsys.readouterr().out
    assert code == 1
    check_restored(out, printed, simulator)
    assert re.search(r"^attic\.png\s+succeeded\s+\d+\.\d\d\s+attic\.png$", printed, re.MULTILINE)
    assert not subscription_exists(f"projects/{stack.config.project}/subscriptions/{subscription}")
    wait_for(lambda: stream_threads() <= baseline, timeout=5, what="the worker's stream threads to end")


def test_worker_refuses_a_missing_folder_and_a_bad_sidecar_with_exit_code_2(
    stack: LocalStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert worker.main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "nowhere is not a folder" in capsys.readouterr().err

    photos = photo_folder(tmp_path, ["attic.png"])
    (photos / "attic.png.json").write_text("[1, 2]")
    assert worker.main([str(photos), str(tmp_path / "out")]) == 2
    assert "attic.png.json: must be a JSON object of extra inputs" in capsys.readouterr().err


def test_compare_measures_no_prediction_reads_through_relay_and_at_least_one_per_prediction_polling(
    stack: LocalStack, simulator: httpx.Client, tmp_path: Path
) -> None:
    photos = photo_folder(tmp_path, ["attic.png", "garden.png"])
    client, transport = polling_worker.connect()
    with transport, RelayClient.from_env() as relay:
        ways = compare.measure(
            relay,
            client,
            find_photos(photos),
            tmp_path / "out",
            simulator_url=stack.simulator_url,
            project=stack.config.project,
            interval=1.0,
            duration=2.0,
            subscription=f"compare-test-{uuid.uuid4().hex[:8]}",
            timeout=WAIT_SECONDS,
        )

    relayed, polled = ways
    calls = simulator.get("/_sim/stats").json()["calls_by_prediction"]
    assert [way.creates for way in ways] == [2, 2]
    assert all(result.succeeded for way in ways for result in way.results)
    assert relayed.gets == 0
    assert all(calls.get(result.prediction_id, {}).get("get_prediction", 0) == 0 for result in relayed.results)
    assert all(calls[result.prediction_id]["get_prediction"] >= 1 for result in polled.results)
    assert polled.gets >= 2
    assert len(relayed.delays) == len(polled.delays) == 2
    assert all(delay >= 0 for way in ways for delay in way.delays)
    shown = compare.render(ways, interval=1.0, duration=2.0)
    assert "relay (job-events)" in shown
    assert "polling every 1 s" in shown
