"""What the real handlers write and announce validates against the checked-in schemas/, with nothing extra."""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from typing import Any

import jsonschema
from google.cloud import firestore

from replicate_relay import schemas
from replicate_relay.jobs import Job
from replicate_relay.jobstore import JOBS
from replicate_relay.testing import prediction_lifecycle
from tests.integration.conftest import INLINE_VALUE_BYTES, Post, Sign, Tap, announcements, unique_id, wait_for
from tests.integration.fileserver import Answer, FileServer

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
_RFC_3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _is_rfc_3339(value: object) -> bool:
    # jsonschema checks date-time only with an optional package; this is the same rule, here.
    if not isinstance(value, str):
        return True
    if not _RFC_3339.fullmatch(value):
        raise ValueError(f"{value!r} is not RFC 3339")
    datetime.fromisoformat(value.replace("z", "Z"))
    return True


def _strict(contract: str) -> jsonschema.Draft202012Validator:
    """The checked-in schema with additional properties refused everywhere: the published schema
    allows them (v1 may grow), but a property the handlers write that it does not name is drift."""
    by_name = {c.name: c for c in schemas.CONTRACTS}
    path = schemas.ROOT / schemas.SCHEMA_DIR / by_name[contract].file_name
    published = json.loads(path.read_text(encoding="utf-8"))

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for item in node:
                close(item)

    strict = copy.deepcopy(published)
    close(strict)
    return jsonschema.Draft202012Validator(strict, format_checker=_FORMATS)


def _run(post: Post, sign: Sign, prediction_id: str, *, output: Any = None, **final: Any) -> None:
    """A signed lifecycle, starting → processing → the final webhook (succeeded unless `final` says)."""
    bodies = prediction_lifecycle(prediction_id, output=output)
    bodies[-1].update(final)
    for body in bodies:
        assert post(sign(body)).status_code == 200


def _check(db: firestore.Client, job_events: Tap, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate the job (as the client and the API read it) and its one job-events message; return both (JSON form)."""
    [data] = announcements(job_events, job_id)

    def announced() -> dict[str, Any] | None:
        snapshot = db.collection(JOBS).document(job_id).get()
        document = snapshot.to_dict() if snapshot.exists else None
        return document if document and document.get("announced_at") else None

    # The document as it stays: final, announced (mark_announced is the last write).
    document = Job.from_document(wait_for(announced, what=f"jobs/{job_id} marked announced")).model_dump(mode="json")
    _strict("job").validate(document)
    _strict("job-event").validate(data)
    [message] = [m.message for m in job_events.received if m.message.attributes.get("job_id") == job_id]
    _strict("job-event-attributes").validate(dict(message.attributes))
    assert data["schema_version"] == "1"
    assert (data["job_id"], data["state"]) == (document["job_id"], document["state"])
    return document, data


def test_job_with_an_archived_file_and_its_announcement_match_the_schemas(
    post: Post, sign: Sign, files: FileServer, db: firestore.Client, job_events: Tap
) -> None:
    prediction_id = unique_id()
    url = files.serve(f"/{prediction_id}/restored.png", Answer(body=PNG, content_type="image/png"))
    _run(post, sign, prediction_id, output=[url])

    document, data = _check(db, job_events, prediction_id)
    assert document["state"] == "succeeded"
    [entry] = document["outputs"]
    assert (entry["index"], entry["size"], entry["content_type"]) == (0, len(PNG), "image/png")
    assert [o["gs_uri"] for o in data["outputs"]] == [entry["gs_uri"]]


def test_job_failed_by_an_expired_output_matches_the_schemas(
    post: Post, sign: Sign, files: FileServer, db: firestore.Client, job_events: Tap
) -> None:
    prediction_id = unique_id()
    kept = files.serve(f"/{prediction_id}/kept.png", Answer(body=PNG, content_type="image/png"))
    gone = files.serve(f"/{prediction_id}/gone.png", Answer(status=404, body=b"not found"))
    _run(post, sign, prediction_id, output=[kept, gone])

    document, data = _check(db, job_events, prediction_id)
    assert (document["state"], document["error_code"]) == ("failed", "output_expired")
    archived, failed = document["outputs"]
    assert "gs_uri" in archived
    assert (failed["index"], failed["error_code"]) == (1, "output_expired")
    assert [o["index"] for o in data["outputs"]] == [0]  # the failed entry has no copy to announce
    assert data["type"] == "job.failed"


def test_failed_prediction_without_files_matches_the_schemas(
    post: Post, sign: Sign, db: firestore.Client, job_events: Tap
) -> None:
    prediction_id = unique_id()
    _run(post, sign, prediction_id, status="failed", output=None, error="CUDA out of memory")

    document, data = _check(db, job_events, prediction_id)
    assert (document["state"], document["error_code"], document["outputs"]) == ("failed", "failed", [])
    assert (data["error"], data["outputs"]) == ("CUDA out of memory", [])


def test_text_output_job_matches_the_schemas(post: Post, sign: Sign, db: firestore.Client, job_events: Tap) -> None:
    prediction_id = unique_id()
    _run(post, sign, prediction_id, output=["A restored ", "photo, café."])

    document, data = _check(db, job_events, prediction_id)
    assert (document["output_value"], document["outputs"]) == ("A restored photo, café.", [])
    assert data["output_value"] == "A restored photo, café."


def test_output_too_large_for_the_document_matches_the_schemas(
    post: Post, sign: Sign, db: firestore.Client, job_events: Tap
) -> None:
    prediction_id = unique_id()
    _run(post, sign, prediction_id, output="x" * (INLINE_VALUE_BYTES + 1))

    document, data = _check(db, job_events, prediction_id)
    assert (document["outputs"], document["output"], document["output_value_too_large"]) == ([], None, True)
    assert document["stored_values"]["output"]["gs_uri"].endswith(".json")
    assert (data["output"], data["stored_values"]) == (None, document["stored_values"])


def test_strict_validation_catches_a_property_the_schema_does_not_name() -> None:
    document = {"job_id": "j", "unexpected": 1}
    errors = [error.message for error in _strict("job").iter_errors(document)]
    assert any("unexpected" in message for message in errors)
