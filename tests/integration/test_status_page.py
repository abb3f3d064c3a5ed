"""The status page served by functions-framework against the emulators, looked at in headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.cloud import firestore
from opentelemetry.exporter.otlp.json.file import FileMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from replicate_relay import cli
from replicate_relay.devstack.processes import ManagedProcess, free_port, http_answers, log_contains
from replicate_relay.devstack.stack import REPO_ROOT, LocalStack
from replicate_relay.jobs import Job
from replicate_relay.ops.metrics_file import METRIC
from replicate_relay.testing import prediction_lifecycle, sign_webhook
from tests.integration.conftest import unique_id, wait_for, wait_for_job

WINDOW = (1280, 900)
CHROMIUM_TIMEOUT = 90.0
GREEN, RED = (0x2E, 0x7D, 0x32), (0xC6, 0x28, 0x28)  # succeeded and failed, in the chart and the badges


@pytest.fixture(scope="module")
def metrics_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two verification failures, written by OpenTelemetry's file exporter as the receiver's telemetry does."""
    path = tmp_path_factory.mktemp("telemetry") / "metrics.jsonl"
    reader = PeriodicExportingMetricReader(FileMetricExporter(str(path)), export_interval_millis=3_600_000)
    provider = MeterProvider(
        metric_readers=[reader], resource=Resource.create({"service.name": "receiver", "service.instance.id": "r1"})
    )
    provider.get_meter("relay").create_counter(METRIC).add(2, {"reason": "bad_signature"})
    provider.shutdown()
    return path


def _function_env(metrics_file: Path) -> dict[str, str]:
    # os.environ holds the stack's client environment (the session fixture set it).
    env = {**os.environ, "RELAY_METRICS_FILE": str(metrics_file), "K_SERVICE": "status-page"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def page_url(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory, metrics_file: Path) -> Iterator[str]:
    """The status page as the Cloud Run service runs it: functions-framework, --source and --target."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    process = ManagedProcess(
        "status page",
        [
            *(sys.executable, "-m", "functions_framework"),
            *("--source", "replicate_relay/ops/statuspage.py", "--target", "status_page"),
            *("--host", "127.0.0.1", "--port", str(port)),
        ],
        log_path=tmp_path_factory.mktemp("status-page") / "status-page.log",
        ready=http_answers(url + "status.json"),
        env=_function_env(metrics_file),
        cwd=REPO_ROOT,
    )
    process.start()
    try:
        process.wait_ready(60)
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="module")
def finished_jobs(stack: LocalStack) -> list[Job]:
    """Two succeeded jobs and a failed one, each through the receiver and the handlers."""
    db = firestore.Client(project=stack.config.project)
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    plans = [("succeeded", None), ("failed", "CUDA out of memory"), ("succeeded", None)]
    ids = []
    with httpx.Client(timeout=15) as http:
        for state, error in plans:
            prediction_id = unique_id()
            events = prediction_lifecycle(prediction_id, output="restored text", started=started)
            if error:
                events[-1] = {**events[-1], "status": "failed", "output": None, "error": error}
            for body in events:
                webhook = sign_webhook(body, stack.config.webhook_secrets)
                assert http.post(stack.receiver_url, content=webhook.body, headers=webhook.headers).status_code == 200
                time.sleep(0.2)  # in order, so the events read as a lifecycle
            ids.append((prediction_id, state))
    return [wait_for_job(db, prediction_id, state) for prediction_id, state in ids]


# Headless Chromium -----------------------------------------------------------------------------


def chromium(tmp_path: Path, *arguments: str) -> str:
    """Run Debian's Chromium headless once, bounded in time; its stdout."""
    binary = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if binary is None:
        pytest.fail("Chromium is not installed: run `make chromium` (Debian's chromium package), then rerun the tests")
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    argv = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        *arguments,
    ]
    # A session of its own: on a timeout, its renderer and helper processes go with it.
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # noqa: S603
    try:
        out, err = process.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"Chromium did not finish within {CHROMIUM_TIMEOUT:g} s: {' '.join(arguments)}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


@dataclass(frozen=True)
class Png:
    width: int
    height: int
    pixels: Counter[tuple[int, int, int]]


def read_png(path: Path) -> Png:
    """Decode an 8-bit RGB or RGBA PNG with the standard library: its size and how often each colour occurs."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, header, compressed = 8, None, []
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
    assert header is not None, "no IHDR chunk"
    width, height, depth, colour_type, _, _, interlace = header
    assert (depth, interlace) == (8, 0), f"unexpected PNG format {header}"
    channels = {2: 3, 6: 4}[colour_type]
    rows = _unfilter(zlib.decompress(b"".join(compressed)), width, height, channels)
    pixels: Counter[tuple[int, int, int]] = Counter()
    for row in rows:
        pixels.update(zip(row[0::channels], row[1::channels], row[2::channels], strict=True))
    return Png(width, height, pixels)


def _unfilter(raw: bytes, width: int, height: int, bpp: int) -> list[bytes]:
    """Undo PNG's per-row filters (none, sub, up, average, Paeth)."""
    stride = width * bpp
    previous = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        kind, row = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                row[i] = (row[i] + row[i - bpp]) & 0xFF
        elif kind == 2:
            row = bytearray((a + b) & 0xFF for a, b in zip(row, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                row[i] = (row[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = row[i - bpp] if i >= bpp else 0
                b, c = previous[i], previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(row))
        previous = row
    return rows


# Tests -----------------------------------------------------------------------------------------


def test_the_page_in_chromium_lists_recent_jobs_with_their_states_and_charts_their_latency(
    page_url: str, finished_jobs: list[Job], tmp_path: Path
) -> None:
    dom = chromium(tmp_path, "--dump-dom", page_url)

    for job in finished_jobs:
        row = re.search(rf"<tr><td class=\"id\">{job.job_id}</td>.*?</tr>", dom, re.DOTALL)
        assert row is not None, f"no row for {job.job_id}"
        assert f'<span class="state state-{job.state}">{job.state}</span>' in row.group(0)
        assert re.search(rf"<rect [^>]*><title>{job.job_id}: {job.state}, [\d.]+ (ms|s)</title></rect>", dom)
    assert "failed: CUDA out of memory" in dom
    assert '<svg id="latency-chart"' in dom
    assert 'id="verification-failures">2<' in dom
    assert "2 in the last hour (bad_signature 2; local metrics file)" in dom
    assert "n/a locally (Cloud Monitoring in production)" in dom
    assert "job-status-dead-letter" in dom
    assert 'role="alert"' not in dom
    usage = re.search(r'<table id="usage">.*?</table>', dom, re.DOTALL)
    assert usage is not None, "no GPU seconds table"
    assert f"model {finished_jobs[0].model}" in usage.group(0)
    assert "estimate" not in dom  # no RELAY_PRICE_TABLE, no cost anywhere


def test_the_screenshot_is_a_1280_by_900_png_showing_the_page_and_the_charts_colours(
    page_url: str, finished_jobs: list[Job], tmp_path: Path
) -> None:
    path = tmp_path / "page.png"

    chromium(tmp_path, f"--screenshot={path}", page_url)

    png = read_png(path)
    assert (png.width, png.height) == WINDOW
    total = png.width * png.height
    (background, most), *_ = png.pixels.most_common(1)
    assert background == (255, 255, 255)
    assert most < 0.95 * total, "the page is almost one flat colour"
    assert len(png.pixels) > 100, "too few colours for text, tables and a chart"
    assert png.pixels[GREEN] > 500, "no succeeded bar or badge in the screenshot"
    assert png.pixels[RED] > 100, "no failed bar or badge in the screenshot"


@pytest.fixture
def relay_json(capsys: pytest.CaptureFixture[str]) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        capsys.readouterr()
        assert cli.main(["status", "--json"]) == 0
        return dict(json.loads(capsys.readouterr().out))

    return run


def test_status_json_is_what_relay_status_json_prints(
    page_url: str, finished_jobs: list[Job], relay_json: Callable[[], dict[str, Any]]
) -> None:
    def served() -> dict[str, Any]:
        response = httpx.get(page_url + "status.json", timeout=30)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        return dict(response.json())

    page, printed = served(), relay_json()

    assert set(page) == set(printed)
    assert [(s["name"], s["kind"]) for s in page["subscriptions"]] == [
        (s["name"], s["kind"]) for s in printed["subscriptions"]
    ]
    assert page["project"] == printed["project"] == "local-project"
    # Counted a moment apart, while other jobs may move: equal once both read the same jobs.
    wait_for(lambda: served()["jobs_by_state"] == relay_json()["jobs_by_state"], what="the same counts from both")


def test_relay_status_serve_prints_its_url_and_serves_the_page(
    stack: LocalStack, finished_jobs: list[Job], metrics_file: Path, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    model = finished_jobs[0].model
    process = ManagedProcess(
        "relay status --serve",
        [sys.executable, "-m", "replicate_relay", "status", "--serve", "--port", str(port), "--timeout", "5"],
        log_path=tmp_path / "serve.log",
        ready=log_contains(f"Relay status page at {url}"),
        env={**_function_env(metrics_file), "RELAY_PRICE_TABLE": json.dumps({"models": {model: 0.001}})},
        cwd=REPO_ROOT,
    )
    process.start()
    try:
        process.wait_ready(60)
        response = httpx.get(url, timeout=30)
        refused = httpx.post(url, timeout=30)
    finally:
        process.stop()

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert all(job.job_id in response.text for job in finished_jobs)
    assert "<th>cost estimate (USD)</th>" in response.text
    assert "Cost estimates: predict time × USD per second from RELAY_PRICE_TABLE." in response.text
    assert refused.status_code == 405


def test_a_forged_webhook_is_counted_as_a_verification_failure_from_the_stacks_own_metrics_file(
    stack: LocalStack, relay_json: Callable[[], dict[str, Any]]
) -> None:
    def failures() -> int:
        time.sleep(0.5)  # each call pulls the dead letters and counts jobs: poll gently
        return sum((relay_json()["verification_failures_by_reason"] or {}).values())

    before = failures()
    good = sign_webhook(prediction_lifecycle(unique_id())[0], stack.config.webhook_secrets)
    forged = {**good.headers, "webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}

    def rejected_by_verification() -> bool:
        # 429 means earlier tests spent this client's failure budget: it comes back at one a second.
        status = httpx.post(stack.receiver_url, content=good.body, headers=forged, timeout=15).status_code
        assert status in (401, 429)
        return status == 401

    wait_for(rejected_by_verification, what="the receiver to answer a forged signature 401")

    # The dev stack's processes export their metrics every 5 s.
    wait_for(lambda: failures() > before, timeout=30, what="the failure in relay status")
    assert "local metrics file" in relay_json()["verification_failures"]
