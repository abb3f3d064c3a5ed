"""What fake-gcs-server enforces, pinned, because the archiver's idempotency leans on it.

Real Cloud Storage rejects `if_generation_match=0` on an existing object for every upload path.
fake-gcs-server (this build) enforces it on single-request uploads only. The archiver therefore
also looks the object up by its deterministic name before copying, which makes a redelivered
message a no-op on both; these tests show the emulator's side of that.
"""

from __future__ import annotations

import io
import uuid

import google.cloud.storage as storage
import pytest
from google.api_core import exceptions as google_exceptions


def test_single_request_upload_refuses_to_overwrite(bucket: storage.Bucket) -> None:
    blob = bucket.blob(f"emulator/{uuid.uuid4().hex}")
    blob.upload_from_file(io.BytesIO(b"one"), size=3, if_generation_match=0)
    with pytest.raises(google_exceptions.PreconditionFailed):
        bucket.blob(blob.name).upload_from_file(io.BytesIO(b"two"), size=3, if_generation_match=0)
    assert bucket.blob(blob.name).download_as_bytes() == b"one"


def test_fake_gcs_ignores_the_precondition_on_resumable_uploads(bucket: storage.Bucket) -> None:
    # If this starts failing, fake-gcs-server has caught up with real Cloud Storage: good news.
    name = f"emulator/{uuid.uuid4().hex}"
    bucket.blob(name).upload_from_file(io.BytesIO(b"one"), size=3, if_generation_match=0)
    resumable = bucket.blob(name, chunk_size=256 * 1024)
    resumable.upload_from_file(io.BytesIO(b"two"), size=None, if_generation_match=0)
    assert bucket.blob(name).download_as_bytes() == b"two"
