"""The published contracts: checked-in files match the models, and job-events kept its v1 bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest

from replicate_relay import schemas
from replicate_relay.jobevents import EventType, FinalState, job_event
from replicate_relay.jobs import TERMINAL_STATES, Job
from replicate_relay.outputs import FailedOutput
from tests.outputs import ARCHIVED

FAILED = FailedOutput(
    index=1, source_url="https://replicate.delivery/x/out-1.png", error_code="output_expired", error="gone"
).to_document()
COMPLETED = datetime(2026, 11, 29, 20, 4, 46, 71000, tzinfo=UTC)

JOBS = {
    "succeeded with files": Job(
        job_id="j1", prediction_id="p1", state="succeeded", model="o/m", outputs=[ARCHIVED], completed_at=COMPLETED
    ),
    "failed, one file expired": Job(
        job_id="j2",
        prediction_id="p2",
        state="failed",
        outputs=[ARCHIVED, FAILED],
        error="output 1: gone",
        error_code="output_expired",
        metadata={"order": "A-1042", "note": "café ☕"},
        completed_at=COMPLETED.replace(microsecond=0),
    ),
    "succeeded with text": Job(
        job_id="j3", prediction_id="p3", state="succeeded", output_value={"text": "é", "n": 1.5}
    ),
    "refused submission": Job(
        job_id="j4", source="submit", state="failed", error="invalid version", error_code="submit_failed"
    ),
    "aborted, empty prediction id": Job(job_id="j5", prediction_id="", state="aborted", error_code="aborted"),
    "succeeded training": Job(
        job_id="j6",
        prediction_id="t6",
        state="succeeded",
        kind="training",
        trained_version="acme/tuned:v2",
        outputs=[ARCHIVED],
        output={"version": "acme/tuned:v2", "weights": "https://replicate.delivery/x/weights.tar"},
    ),
}


def _v1_job_event(job: Job) -> tuple[bytes, dict[str, str]]:
    """job_event as v1 writes it, by hand: the first version's keys, plus `output`, `stored_values`,
    `kind` and `trained_version`."""
    body: dict[str, Any] = {
        "schema_version": "1",
        "event_id": f"{job.job_id}:{job.state}",
        "type": f"job.{job.state}",
        **{key: getattr(job, key) for key in ("job_id", "prediction_id", "state", "model", "kind", "trained_version")},
        "outputs": [
            {key: entry.get(key) for key in ("index", "gs_uri", "content_type", "size", "crc32c")}
            for entry in job.outputs
            if entry.get("gs_uri")
        ],
        **{key: getattr(job, key) for key in ("output", "output_value", "error", "error_code", "metadata")},
        "stored_values": {name: stored.model_dump() for name, stored in job.stored_values.items()},
        "completed_at": job.completed_at.isoformat() if job.completed_at else None,
    }
    attributes = {"event_id": body["event_id"], "type": body["type"], "job_id": job.job_id, "state": job.state}
    if job.prediction_id:
        attributes["prediction_id"] = job.prediction_id
    return json.dumps(body, default=str, separators=(",", ":")).encode("utf-8"), attributes


def _validator(contract: schemas.Contract) -> jsonschema.Draft202012Validator:
    path = schemas.ROOT / schemas.SCHEMA_DIR / contract.file_name
    return jsonschema.Draft202012Validator(json.loads(path.read_text(encoding="utf-8")))


CONTRACT = {contract.name: contract for contract in schemas.CONTRACTS}


def test_checked_in_schemas_and_docs_are_what_the_models_generate() -> None:
    stale = schemas.stale()
    assert not stale, f"run `python -m replicate_relay.schemas` (make schemas): {[str(p) for p in stale]}"


def test_check_mode_fails_on_an_edited_schema_file(tmp_path: Path) -> None:
    for path, content in schemas.expected_files().items():
        copy = tmp_path / path.relative_to(schemas.ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(content, encoding="utf-8")
    assert schemas.stale(tmp_path) == []
    edited = tmp_path / schemas.SCHEMA_DIR / "job.v1.schema.json"
    edited.write_text(edited.read_text().replace('"job_id"', '"jobId"'), encoding="utf-8")
    assert schemas.stale(tmp_path) == [edited]


def test_every_schema_is_a_valid_2020_12_schema_with_a_stable_id() -> None:
    for contract in schemas.CONTRACTS:
        generated = schemas.schema(contract)
        jsonschema.Draft202012Validator.check_schema(generated)
        assert generated["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert generated["$id"] == f"urn:replicate-relay:{contract.name}:v1"
        assert generated["description"]


def test_every_field_of_every_contract_is_described() -> None:
    def undescribed(node: dict[str, Any], where: str) -> list[str]:
        missing = [
            f"{where}.{name}" for name, prop in node.get("properties", {}).items() if not prop.get("description")
        ]
        for name, definition in node.get("$defs", {}).items():
            missing += undescribed(definition, name)
        return missing

    for contract in schemas.CONTRACTS:
        assert undescribed(schemas.schema(contract), contract.name) == []


@pytest.mark.parametrize("job", JOBS.values(), ids=JOBS.keys())
def test_job_events_bytes_and_attributes_are_those_of_v1(job: Job) -> None:
    assert job_event(job) == _v1_job_event(job)


@pytest.mark.parametrize("job", JOBS.values(), ids=JOBS.keys())
def test_job_events_message_validates_against_its_schemas(job: Job) -> None:
    data, attributes = job_event(job)
    _validator(CONTRACT["job-event"]).validate(json.loads(data))
    _validator(CONTRACT["job-event-attributes"]).validate(attributes)


@pytest.mark.parametrize("job", JOBS.values(), ids=JOBS.keys())
def test_job_document_in_json_form_validates_against_the_job_schema(job: Job) -> None:
    _validator(CONTRACT["job"]).validate(job.model_dump(mode="json"))


def test_an_outputs_entry_of_neither_shape_is_refused_by_the_job_schema() -> None:
    document = JOBS["succeeded with files"].model_dump(mode="json")
    document["outputs"] = [{"index": 0, "url": "https://replicate.delivery/x"}]
    with pytest.raises(jsonschema.ValidationError):
        _validator(CONTRACT["job"]).validate(document)


def test_final_state_types_name_exactly_the_terminal_states() -> None:
    assert set(get_args(FinalState)) == set(TERMINAL_STATES)
    assert set(get_args(EventType)) == {f"job.{state}" for state in TERMINAL_STATES}


def test_json_form_turns_firestore_timestamps_into_rfc_3339_strings() -> None:
    document = {"at": COMPLETED, "nested": [{"at": COMPLETED}], "n": 1}
    assert schemas.to_json_form(document) == {
        "at": "2026-11-29T20:04:46.071000+00:00",
        "nested": [{"at": "2026-11-29T20:04:46.071000+00:00"}],
        "n": 1,
    }
