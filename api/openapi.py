"""The API's OpenAPI 3.1 document, generated from the code: `python -m api.openapi` writes
schemas/openapi.v1.json, `--check` fails when the checked-in file differs (make test runs it
through tests/unit/test_api.py). `make schemas` runs both generators.

Bodies come from the pydantic models (api/models.py, replicate_relay.jobs.Job); each error status lists the
problem types (api/errors.py) the API answers it with.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, models_json_schema
from pydantic_core import CoreSchema, core_schema

from api import errors
from api.idempotency import MAX_KEY_CHARS
from api.listing import CURSOR_FORMAT, CURSOR_PATTERN, DEFAULT_LIMIT, MAX_LIMIT
from api.models import CreateJob, CreateTraining, JobList, Problem
from replicate_relay.jobs import Job, JobState

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "schemas" / "openapi.v1.json"
_REF = "#/components/schemas/{model}"
_PROBLEM = errors.PROBLEM_MEDIA_TYPE
_LOCATION = {"Location": {"description": "`/v1/jobs/{job_id}` of the job.", "schema": {"type": "string"}}}


class _Schema(GenerateJsonSchema):
    """No per-field titles derived from names ("Job Id"), as in the published schemas."""

    def field_title_should_be_set(self, schema: CoreSchema | core_schema.ModelField) -> bool:
        return False


def _components() -> dict[str, Any]:
    _, generated = models_json_schema(
        [
            (CreateJob, "validation"),
            (CreateTraining, "validation"),
            (Job, "serialization"),
            (JobList, "serialization"),
            (Problem, "serialization"),
        ],
        ref_template=_REF,
        schema_generator=_Schema,
    )
    schemas: dict[str, Any] = generated["$defs"]
    return dict(sorted(schemas.items()))


# What every operation that needs a token may answer, besides its own problems.
_EVERY_OPERATION: tuple[type[errors.ApiError], ...] = (
    errors.Unauthenticated,
    errors.Forbidden,
    errors.Unavailable,
    errors.InternalError,
)


def _problems(*kinds: type[errors.ApiError]) -> dict[str, Any]:
    """The error responses of an operation: per status, the problem types it may carry. A status of
    one problem type refers to that type's response in components.responses (`_problem_responses`)."""
    by_status: dict[int, list[type[errors.ApiError]]] = {}
    for kind in (*kinds, *_EVERY_OPERATION):
        by_status.setdefault(kind.status, []).append(kind)
    responses: dict[str, Any] = {}
    for status, found in sorted(by_status.items()):
        if len(found) == 1:
            responses[str(status)] = {"$ref": f"#/components/responses/{found[0].__name__}"}
        else:
            responses[str(status)] = _response(found)
    return responses


def _response(kinds: Sequence[type[errors.ApiError]]) -> dict[str, Any]:
    """A problem response whose `type` is one of `kinds`' (all of one status)."""
    status = kinds[0].status
    return {
        "description": "; ".join(f"`{kind.slug}`: {kind.title}" for kind in kinds),
        "content": {
            _PROBLEM: {
                "schema": {
                    "allOf": [{"$ref": _REF.format(model="Problem")}],
                    "properties": {
                        "type": {"enum": [errors.problem_type(kind.slug) for kind in kinds]},
                        "status": {"const": status},
                    },
                }
            }
        },
    }


def _problem_responses(paths: dict[str, Any]) -> dict[str, Any]:
    """components.responses: the response of each problem type an operation refers to."""
    referred = {
        response["$ref"].rpartition("/")[2]
        for operations in paths.values()
        for operation in operations.values()
        for response in operation["responses"].values()
        if "$ref" in response
    }
    return {kind.__name__: _response([kind]) for kind in errors.ALL_PROBLEMS if kind.__name__ in referred}


def _json(model: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(model=model)}}}


def _create(operation_id: str, summary: str, request: str) -> dict[str, Any]:
    """A create operation: `request` in, 201 with the job, idempotent with a key."""
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
        "requestBody": {"required": True, "content": _json(request)},
        "responses": {
            "201": {
                "description": "The job, linked to its prediction or training (a replay also carries "
                "`Idempotency-Replayed: true`).",
                "headers": _LOCATION,
                "content": _json("Job"),
            },
            **_problems(
                errors.MalformedJson,
                errors.InvalidParameter,
                errors.IdempotencyInProgress,
                errors.PayloadTooLarge,
                errors.UnsupportedMediaType,
                errors.ValidationFailed,
                errors.IdempotencyKeyReused,
                errors.SubmitRefused,
                errors.ReplicateUnavailable,
            ),
        },
    }


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "description": "The job's id (`job_id` of the job document).",
        "schema": {"type": "string"},
    }
    whole: dict[str, Any] = {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Replicate Relay API",
            "version": "1",
            "description": "Submit Replicate predictions and trainings, read and cancel their jobs over HTTP "
            "(docs/API.md). Every "
            "error is an RFC 9457 problem (`application/problem+json`) whose `type` is stable.",
        },
        "security": [{"googleIdToken": []}],
        "paths": {
            "/v1/jobs": {
                "post": _create(
                    "createJob",
                    "Submit a prediction of a model or a deployment: the job, then the prediction with Relay's "
                    "webhook.",
                    "CreateJob",
                ),
                "get": {
                    "operationId": "listJobs",
                    "summary": "The caller's jobs (an operator's: every app's), newest `created_at` first, a page "
                    "at a time.",
                    "parameters": [
                        {
                            "name": "state",
                            "in": "query",
                            "description": "Only jobs in this state.",
                            "schema": {"enum": [state.value for state in JobState]},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "description": f"Jobs per page (default {DEFAULT_LIMIT}).",
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "description": "`next_cursor` of the previous page, with the same `state`; empty for "
                            "the first page. Only a cursor this API made is accepted (format `relay-cursor`: opaque, "
                            "base64url without padding); any other string, or one made for another `state`, is a "
                            "400 (`invalid-parameter`).",
                            "schema": {"type": "string", "format": CURSOR_FORMAT, "pattern": CURSOR_PATTERN},
                        },
                    ],
                    "responses": {
                        "200": {"description": "One page of jobs.", "content": _json("JobList")},
                        **_problems(errors.InvalidParameter),
                    },
                },
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "The job document (schemas/job.v1.schema.json), timestamps as RFC 3339. Another "
                    "app's job is a 404, as a job that does not exist (an operator reads every job).",
                    "parameters": [job_id],
                    "responses": {
                        "200": {"description": "The job.", "content": _json("Job")},
                        **_problems(errors.NotFound),
                    },
                }
            },
            "/v1/jobs/{job_id}/cancel": {
                "post": {
                    "operationId": "cancelJob",
                    "summary": "Cancel a job: record the request, ask Replicate to cancel its run. Idempotent; the "
                    "job ends `canceled` when Replicate reports it. Only the app that submitted the job cancels it: "
                    "another app's job is a 404, and an operator gets a 403.",
                    "parameters": [job_id],
                    "responses": {
                        "202": {
                            "description": "The job, still open, `cancel_requested_at` set (again for a job whose "
                            "cancel is under way).",
                            "headers": _LOCATION,
                            "content": _json("Job"),
                        },
                        **_problems(errors.NotFound, errors.JobFinal, errors.ReplicateUnavailable),
                    },
                }
            },
            "/v1/trainings": {
                "post": _create(
                    "createTraining",
                    "Submit a training of a model version into a destination model: the job (kind `training`), "
                    "then the training with Relay's webhook.",
                    "CreateTraining",
                )
            },
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "200 once the service serves; needs no token.",
                    "security": [],
                    "responses": {
                        "200": {"description": "`ok`", "content": {"text/plain": {"schema": {"type": "string"}}}}
                    },
                }
            },
        },
        "components": {
            "schemas": _components(),
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "Any unique string (a UUID): a retry with the same key and body gets the first "
                    "answer and never makes a second prediction; the same key with another body is a 422 "
                    "(`idempotency-key-reused`); while the first is in progress, a 409 with Retry-After. "
                    "Remembered for RELAY_API_IDEMPOTENCY_HOURS (24 by default). Keys are the caller's own: the "
                    "same key from another app is another request.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS, "pattern": "^[!-~]+$"},
                }
            },
            "securitySchemes": {
                "googleIdToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A Google-signed ID token whose audience is the service's URL (or "
                    "RELAY_API_AUDIENCE) and whose e-mail is one of RELAY_API_INVOKERS (Terraform's api_invokers) "
                    "or RELAY_API_OPERATORS (api_operators). That e-mail is the app recorded on the jobs it "
                    "submits.",
                }
            },
        },
    }
    whole["components"]["responses"] = _problem_responses(whole["paths"])
    return whole


def render() -> str:
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.openapi", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the checked-in file differs")
    args = parser.parse_args(argv)
    expected = render()
    current = DOCUMENT.read_text(encoding="utf-8") if DOCUMENT.exists() else None
    if args.check:
        if current != expected:
            print(f"{DOCUMENT.relative_to(ROOT)} is out of date: run python -m api.openapi", file=sys.stderr)
            return 1
        return 0
    if current != expected:
        DOCUMENT.write_text(expected, encoding="utf-8")
        print(f"wrote {DOCUMENT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
