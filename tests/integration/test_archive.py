"""archive-outputs on the emulators: files streamed into fake-gcs-server, jobs finished, announced once."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import google.cloud.storage as storage
import google_crc32c
import httpx
import pytest
from google.cloud import firestore

from replicate_relay.devstack.stack import LocalStack
from replicate_relay.jobs import Job
from replicate_relay.jobstore import EVENTS, JOBS, JobStore, event_key
from replicate_relay.testing import SignedWebhook, prediction_lifecycle
from replicate_relay.values import ValueStore
from tests.integration.conftest import (
    DOWNLOAD_CAP,
    INLINE_VALUE_BYTES,
    Tap,
    announcements,
    read_job,
    unique_id,
    wait_for,
    wait_for_job,
)
from tests.integration.fileserver import Answer, FileServer

Post = Callable[[SignedWebhook], httpx.Response]
Sign = Callable[..., SignedWebhook]
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


@pytest.fixture
def succeed(post: Post, sign: Sign) -> Callable[..., SignedWebhook]:
    """Send the final webhook of a prediction that succeeded with `output`."""

    def send(prediction_id: str, output: Any) -> SignedWebhook:
        webhook = sign(prediction_lifecycle(prediction_id, output=output)[-1])
        assert post(webhook).status_code == 200
        return webhook

    return send


def crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def test_several_files_nested_in_the_output_get_one_object_each(
    files: FileServer, succeed: Callable[..., SignedWebhook], db: firestore.Client, bucket: storage.Bucket
) -> None:
    prediction_id = unique_id()
    urls = [
        files.serve(f"/{prediction_id}/out-{i}.webp", Answer(body=b"img%d" % i, content_type="image/webp"))
        for i in range(3)
    ]
    succeed(prediction_id, {"images": [urls[0], urls[1]], "extra": {"thumbnail": urls[2]}, "seed": 4})

    job = wait_for_job(db, prediction_id, "succeeded")
    assert [e["gs_uri"].rsplit("/", 1)[1] for e in job.outputs] == ["0-out-0.webp", "1-out-1.webp", "2-out-2.webp"]
    for index, entry in enumerate(job.outputs):
        assert bucket.blob(entry["gs_uri"].split("/", 3)[3]).download_as_bytes() == b"img%d" % index


def test_data_uri_output_is_decoded_into_an_object(
    succeed: Callable[..., SignedWebhook], db: firestore.Client, bucket: storage.Bucket
) -> None:
    prediction_id = unique_id()
    succeed(prediction_id, "data:image/png;base64," + base64.b64encode(PNG).decode())
    job = wait_for_job(db, prediction_id, "succeeded")
    [entry] = job.outputs
    assert entry["content_type"] == "image/png"
    assert bucket.blob(entry["gs_uri"].split("/", 3)[3]).download_as_bytes() == PNG


def test_small_text_output_stays_on_the_job(succeed: Callable[..., SignedWebhook], db: firestore.Client) -> None:
    prediction_id = unique_id()
    succeed(prediction_id, ["A restored ", "photo."])
    job = wait_for_job(db, prediction_id, "succeeded")
    assert (job.output_value, job.outputs) == ("A restored photo.", [])


def test_text_output_too_large_for_the_document_goes_to_the_bucket_whole(
    succeed: Callable[..., SignedWebhook], db: firestore.Client, bucket: storage.Bucket
) -> None:
    prediction_id = unique_id()
    tokens = ["word "] * INLINE_VALUE_BYTES
    succeed(prediction_id, tokens)
    job = wait_for_job(db, prediction_id, "succeeded")
    assert (job.output, job.output_value, job.output_value_too_large, job.outputs) == (None, None, True, [])
    stored = job.stored_values["output"]
    assert stored.gs_uri.startswith(f"gs://{bucket.name}/jobs/{prediction_id}/output-")
    assert json.loads(bucket.blob(stored.gs_uri.split("/", 3)[3]).download_as_bytes()) == tokens  # as sent
    assert JobStore(db, values=ValueStore(bucket)).resolve(job).output == tokens


def test_a_file_is_archived_with_type_and_checksum_announced_once_and_a_redelivery_changes_nothing(
    files: FileServer,
    post: Post,
    succeed: Callable[..., SignedWebhook],
    db: firestore.Client,
    bucket: storage.Bucket,
    job_events: Tap,
) -> None:
    prediction_id = unique_id()
    path = f"/{prediction_id}/restored.png"
    webhook = succeed(prediction_id, files.serve(path, Answer(body=PNG, content_type="image/png")))

    job = wait_for_job(db, prediction_id, "succeeded")
    [entry] = job.outputs
    name = f"predictions/{prediction_id}/0-restored.png"
    assert entry["gs_uri"] == f"gs://{bucket.name}/{name}"
    assert (entry["content_type"], entry["size"], entry["crc32c"]) == ("image/png", len(PNG), crc32c(PNG))
    blob = bucket.get_blob(name)
    assert blob is not None
    assert blob.download_as_bytes() == PNG
    assert blob.content_type == "image/png"
    [event] = announcements(job_events, prediction_id)
    assert event["event_id"] == f"{prediction_id}:succeeded"
    assert event["type"] == "job.succeeded"
    assert [o["gs_uri"] for o in event["outputs"]] == [entry["gs_uri"]]
    announced = read_job(db, prediction_id)
    assert announced is not None
    assert announced.announced_at is not None

    # Replicate retrying, or Pub/Sub redelivering: nothing is archived, written or announced again.
    assert post(webhook).status_code == 200
    assert post(webhook).status_code == 200
    assert len(announcements(job_events, prediction_id, settle=4)) == 1
    assert bucket.get_blob(name).generation == blob.generation
    assert files.requests[path] == 1
    again = read_job(db, prediction_id)
    assert again is not None
    assert (again.updated_at, again.announced_at) == (announced.updated_at, announced.announced_at)


def test_job_with_files_is_made_final_by_archive_outputs_alone_and_announced_once(
    files: FileServer, post: Post, sign: Sign, db: firestore.Client, job_events: Tap
) -> None:
    """job-status records the succeeded webhook (`deferred`) but leaves the job to archive-outputs: one
    writer of the final transition, so the two handlers never contend for the job document."""
    prediction_id = unique_id()
    urls = [files.serve(f"/{prediction_id}/{n}.png", Answer(body=PNG, content_type="image/png")) for n in "ab"]
    *progress, final = prediction_lifecycle(prediction_id, output=urls)
    for body in progress:
        assert post(sign(body)).status_code == 200
    wait_for_job(db, prediction_id, "processing")
    webhook = sign(final)
    assert post(webhook).status_code == 200

    job = wait_for_job(db, prediction_id, "succeeded")
    assert job.announcer == "archive-outputs"
    assert [entry["index"] for entry in job.outputs] == [0, 1]  # in order, though copied side by side
    record = db.collection(JOBS).document(prediction_id).collection(EVENTS).document(event_key(webhook.webhook_id))
    recorded = wait_for(lambda: record.get().to_dict(), what="job-status's record of the succeeded webhook")
    assert recorded["outcome"] == "deferred"
    assert len(announcements(job_events, prediction_id)) == 1


def test_an_object_whose_name_extends_the_files_is_not_taken_for_it(
    files: FileServer, succeed: Callable[..., SignedWebhook], db: firestore.Client, bucket: storage.Bucket
) -> None:
    """Whether a file is archived already is looked up by listing with its name as the prefix."""
    prediction_id = unique_id()
    path = f"/{prediction_id}/out.png"
    bucket.blob(f"predictions/{prediction_id}/0-out.png.partial").upload_from_string(b"something else")

    succeed(prediction_id, files.serve(path, Answer(body=PNG, content_type="image/png")))
    job = wait_for_job(db, prediction_id, "succeeded")

    assert files.requests[path] == 1
    assert job.outputs[0]["gs_uri"].endswith(f"/predictions/{prediction_id}/0-out.png")
    assert bucket.blob(f"predictions/{prediction_id}/0-out.png").download_as_bytes() == PNG


def test_expired_file_fails_the_job_with_output_expired_and_is_acknowledged(
    stack: LocalStack,
    files: FileServer,
    succeed: Callable[..., SignedWebhook],
    db: firestore.Client,
    job_events: Tap,
) -> None:
    prediction_id = unique_id()
    succeed(prediction_id, files.serve(f"/{prediction_id}/gone.png", Answer(404, b"gone")))

    job = wait_for_job(db, prediction_id, "failed")
    assert job.error_code == "output_expired"
    assert job.outputs[0]["error_code"] == "output_expired"
    [event] = announcements(job_events, prediction_id)
    assert (event["type"], event["error_code"]) == ("job.failed", "output_expired")
    lines = _log_lines(stack, "archive-outputs", prediction_id)
    # Answered 200 once, not retried: "created" when it got there before job-status did.
    assert [line["outcome"] for line in lines] in (["applied"], ["created"])
    assert lines[0]["severity"] == "ERROR"


def test_server_error_is_retried_and_files_already_stored_are_not_copied_again(
    files: FileServer, succeed: Callable[..., SignedWebhook], db: firestore.Client
) -> None:
    prediction_id = unique_id()
    # Served once, then gone: a second fetch would fail the job as output_expired.
    first = files.serve(f"/{prediction_id}/a.png", Answer(body=b"first", content_type="image/png"), Answer(404))
    flaky = files.serve(
        f"/{prediction_id}/b.png", Answer(503, b"busy"), Answer(body=b"second", content_type="image/png")
    )
    succeed(prediction_id, [first, flaky])

    job = wait_for_job(db, prediction_id, "succeeded", timeout=60)  # Pub/Sub backs off 10 s first
    assert [e["size"] for e in job.outputs] == [5, 6]
    assert job.outputs[0]["already_archived"] is True  # found by name on the second attempt
    assert job.outputs[1]["already_archived"] is False
    assert files.requests[f"/{prediction_id}/b.png"] == 2
    assert files.requests[f"/{prediction_id}/a.png"] == 1


def test_refused_outputs_fail_the_job_without_any_request_to_the_refused_target(
    files: FileServer, succeed: Callable[..., SignedWebhook], db: firestore.Client
) -> None:
    big = files.serve("/refusals/big.bin", Answer(body=b"x" * (DOWNLOAD_CAP + 1)))
    cases = {
        "https://evil.example/x.png": "host_not_allowed",
        "http://replicate.delivery/x.png": "scheme_not_allowed",
        "file:///etc/passwd": "scheme_not_allowed",
        "https://replicate.delivery@evil.example/x.png": "userinfo_not_allowed",
        f"https://localhost:{files.port}/refusals/by-name.png": "address_not_allowed",
        files.serve("/refusals/to-metadata", Answer(302, headers={"Location": "http://169.254.169.254/latest"})): "",
        files.serve("/refusals/to-loopback", Answer(302, headers={"Location": "http://127.0.0.1:9/x.png"})): "",
        big: "too_large",
    }
    jobs = {}
    for url in cases:
        prediction_id = unique_id()
        jobs[url] = prediction_id
        succeed(prediction_id, url)
    for url, reason in cases.items():
        job = wait_for_job(db, jobs[url], "failed")
        assert job.error_code == "output_refused", url
        assert reason in job.outputs[0]["error"], (url, job.outputs)
        assert "gs_uri" not in job.outputs[0]
    assert files.requests["/refusals/by-name.png"] == 0
    assert files.requests["/refusals/to-metadata"] == 1  # the first hop only
    assert files.requests["/refusals/to-loopback"] == 1
    assert files.requests["/refusals/big.bin"] == 1


def test_failed_prediction_is_announced_by_job_status(
    post: Post, sign: Sign, db: firestore.Client, job_events: Tap
) -> None:
    prediction_id = unique_id()
    final = {**prediction_lifecycle(prediction_id)[-1], "status": "failed", "output": None, "error": "CUDA OOM"}
    assert post(sign(final)).status_code == 200
    job: Job = wait_for_job(db, prediction_id, "failed")
    assert (job.error, job.error_code, job.announcer) == ("CUDA OOM", "failed", "job-status")
    [event] = announcements(job_events, prediction_id)
    assert (event["type"], event["error"]) == ("job.failed", "CUDA OOM")


def _log_lines(stack: LocalStack, handler: str, prediction_id: str) -> list[dict[str, Any]]:
    lines = stack.functions[handler].log_path.read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    return [entry for entry in entries if entry.get("prediction_id") == prediction_id]
