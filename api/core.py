"""What the API does with a request, apart from HTTP: parse, check, submit or read, answer.

Every operation takes the Caller (api/auth.py): a job records the app that submitted it, and an app
reads, lists and cancels its own jobs only; another app's job is answered 404, as a job that does
not exist, so an app cannot learn which ids others use. Operators read and list every job.

api/main.py adapts Flask's request to these calls and maps ApiError to a problem response; the
Google clients are passed in, so tests run this against the emulators without a server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from google.api_core import exceptions as google_exceptions
from google.cloud import firestore
from pydantic import ValidationError

from api import errors
from api.auth import Caller
from api.idempotency import MAX_KEY_CHARS, IdempotencyStore, InProgress, Proceed, Replay, Resume, Reused, fingerprint
from api.listing import DEFAULT_LIMIT, MAX_LIMIT, Cursor, InvalidCursor, list_jobs
from api.models import CreateJob, CreateTraining
from replicate_relay.errors import JobAlreadyFinal, JobNotFound
from replicate_relay.jobs import Job, JobState
from replicate_relay.jobstore import JobStore
from replicate_relay.metadata import reserved_by_firestore
from replicate_relay.replicate_api import DeploymentRef, ModelRef, ReplicateAPIError
from replicate_relay.submit import SubmitFailed, Submitter

JOBS_PATH = "/v1/jobs"
TRAININGS_PATH = "/v1/trainings"
Request = TypeVar("Request", CreateJob, CreateTraining)
# Firestore document ids: no "/", not "." or "..", at most 1,500 bytes. Relay's ids are UUID hex
# or Replicate's prediction ids; anything else cannot name a job, so it is a 404 without a read.
_JOB_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
_JSON_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json$")
_KEY = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces, as HTTP header tokens go


@dataclass(frozen=True)
class Answer:
    """A successful (or replayed) answer: status, JSON body, extra headers."""

    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


def job_json(job: Job) -> dict[str, Any]:
    """The job's JSON form (schemas/job.v1.schema.json): RFC 3339 timestamps."""
    return job.json_form()


def parse_create(body: bytes, content_type: str | None, kind: type[Request]) -> tuple[Request, Any]:
    """The request as `kind` (CreateJob or CreateTraining) and the parsed JSON (for the idempotency
    fingerprint); raises ApiError."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if not _JSON_TYPE.match(media_type):
        raise errors.UnsupportedMediaType(f"send the body as application/json, not {media_type or 'no Content-Type'}")
    try:
        parsed = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise errors.MalformedJson("the JSON is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, bad UTF-8, NaN, an integer of thousands of digits
        raise errors.MalformedJson(f"the body is not valid JSON: {str(error)[:200]}") from None
    try:
        request = kind.model_validate(parsed, strict=True)
    except ValidationError as error:
        raise errors.ValidationFailed(
            f"{error.error_count()} field(s) are not valid", errors=field_errors(error)
        ) from None
    except RecursionError:
        raise errors.ValidationFailed(
            "the input is nested too deeply", errors=[{"field": "input", "message": "too deep"}]
        ) from None
    if isinstance(request, CreateJob) and len(request.targets_given()) != 1:
        message = "give exactly one of model and deployment"
        raise errors.ValidationFailed(
            f"{message}, not {' and '.join(request.targets_given()) or 'neither'}",
            errors=[{"field": "model", "message": message}, {"field": "deployment", "message": message}],
        )
    return request, parsed


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def field_errors(error: ValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as {field, message}: `field` the dotted path (`input.prompt`,
    `webhook_events.1`), `body` for the body itself."""
    found = []
    for entry in error.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in entry["loc"]) or "body"
        message = str(entry["msg"]).removeprefix("Value error, ")
        found.append({"field": path, "message": message})
    return found


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not (1 <= len(key) <= MAX_KEY_CHARS) or not _KEY.match(key):
        raise errors.InvalidParameter(
            f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters without spaces (a UUID, say)",
            errors=[{"field": "Idempotency-Key", "message": "not a valid key"}],
        )
    return key


@dataclass
class JobsApi:
    """The operations. Clients are created by the caller and shared across requests."""

    store: JobStore
    submitter: Submitter
    idempotency: IdempotencyStore
    firestore: firestore.Client

    def create(self, body: bytes, *, content_type: str | None, idempotency_key: str | None, caller: Caller) -> Answer:
        """`POST /v1/jobs`: a prediction of a model or a deployment, recorded as the caller's."""
        key = check_idempotency_key(idempotency_key)
        request, parsed = parse_create(body, content_type, CreateJob)
        return self._create(
            JOBS_PATH, key, parsed, caller, lambda job_id: self._submit_prediction(request, job_id, caller.app)
        )

    def create_training(
        self, body: bytes, *, content_type: str | None, idempotency_key: str | None, caller: Caller
    ) -> Answer:
        """`POST /v1/trainings`: a training of a model version into a destination model, recorded as the caller's."""
        key = check_idempotency_key(idempotency_key)
        request, parsed = parse_create(body, content_type, CreateTraining)
        return self._create(
            TRAININGS_PATH, key, parsed, caller, lambda job_id: self._submit_training(request, job_id, caller.app)
        )

    def _create(
        self, path: str, key: str | None, parsed: Any, caller: Caller, submit: Callable[[str | None], Job]
    ) -> Answer:
        """Submit once per Idempotency-Key of this caller. Every check of the request comes before its
        key is claimed (the callers parse first), so a bad request never uses a key up. The
        fingerprint holds the path: one key on two endpoints is two requests."""
        if key is None:
            return self._created(self._submitted(submit, None))
        owner = caller.app
        claimed = self._claim(key, fingerprint("POST", path, parsed), owner)
        if isinstance(claimed, Replay):
            headers = {"Idempotency-Replayed": "true"}
            if claimed.status == 201:
                headers["Location"] = f"{JOBS_PATH}/{claimed.body['job_id']}"
            return Answer(claimed.status, claimed.body, headers)
        if isinstance(claimed, InProgress):
            raise errors.IdempotencyInProgress(
                "the first request with this Idempotency-Key has not been answered yet: retry after a moment",
                headers={"Retry-After": str(claimed.retry_after_seconds)},
            )
        if isinstance(claimed, Reused):
            raise errors.IdempotencyKeyReused(
                "this Idempotency-Key was sent with a different request: use a new key for a new request",
                errors=[{"field": "Idempotency-Key", "message": "already used with another body"}],
            )
        if isinstance(claimed, Resume):
            # The first attempt died after recording its job id. If its job exists, the prediction
            # may too: answer with the job rather than risk a second prediction.
            existing = self.store.load(claimed.job_id)
            if existing is not None:
                answer = self._created(existing)
                self.idempotency.answer(key, answer.status, answer.body, caller=owner)
                return answer
        job_id = claimed.job_id  # Proceed, or a Resume whose first attempt created nothing
        try:
            answer = self._created(self._submitted(submit, job_id))
        except errors.ApiError as refused:
            # Replicate's refusal is the answer (its job exists, failed): replayed like a success.
            self.idempotency.answer(key, refused.status, refused.problem(path), caller=owner)
            raise
        self.idempotency.answer(key, answer.status, answer.body, caller=owner)
        return answer

    def cancel(self, job_id: str, *, caller: Caller) -> Answer:
        """`POST /v1/jobs/{job_id}/cancel`: 202 with the job once the cancel is recorded and sent to
        Replicate; again 202 for a job already being canceled (Replicate is asked again). The job
        ends `canceled` when Replicate reports it (or the reconciler finds it so). Only the app that
        submitted the job cancels it: 404 for another app, 403 for an operator (who may read it)."""
        job = self._visible(job_id, caller)
        if not caller.may_cancel(job):
            raise errors.Forbidden(
                "operators read every app's jobs; only the app that submitted this job cancels it through the API"
            )
        try:
            job = self.submitter.cancel(job_id)
        except JobNotFound:
            raise errors.NotFound(f"there is no job {job_id[:200]!r}") from None
        except JobAlreadyFinal as final:
            raise errors.JobFinal(str(final), extra={"job_id": job_id}) from None
        except ReplicateAPIError as error:
            raise errors.ReplicateUnavailable(
                f"the cancel is recorded on job {job_id}, but Replicate could not be asked ({error}): send it again",
                extra={"job_id": job_id},
            ) from None
        return Answer(202, job_json(job), {"Location": f"{JOBS_PATH}/{job.job_id}"})

    def get(self, job_id: str, *, caller: Caller) -> Answer:
        """`GET /v1/jobs/{job_id}`: the caller's job (any job, for an operator)."""
        return Answer(200, job_json(self._visible(job_id, caller)))

    def _visible(self, job_id: str, caller: Caller) -> Job:
        """The job, if the caller may read it; NotFound alike for another app's job and for none."""
        job = self.store.load(job_id) if _can_name_a_job(job_id) else None
        if job is None or not caller.may_read(job):
            raise errors.NotFound(f"there is no job {job_id[:200]!r}")
        return job

    def list(self, args: Mapping[str, str], *, caller: Caller) -> Answer:
        """`GET /v1/jobs?state=&limit=&cursor=`: the caller's jobs (every job, for an operator)."""
        state = _state(args.get("state"))
        limit = _limit(args.get("limit"))
        cursor = None
        if args.get("cursor"):
            try:
                cursor = Cursor.decode(args["cursor"], state=state.value if state else None)
            except InvalidCursor as error:
                raise errors.InvalidParameter(str(error), errors=[{"field": "cursor", "message": str(error)}]) from None
        app = None if caller.reads_all else caller.app
        page = list_jobs(self.firestore, app=app, state=state, limit=limit, cursor=cursor)
        jobs = [self.store.resolve(job) for job in page.jobs]
        # As JobList (the OpenAPI document's), each job in its JSON form.
        body = {"jobs": [job_json(job) for job in jobs], "next_cursor": page.next_cursor}
        return Answer(200, body)

    def _claim(self, key: str, request: str, caller: str | None) -> Proceed | Resume | Replay | InProgress | Reused:
        try:
            return self.idempotency.claim(key, request, caller=caller)
        except google_exceptions.AlreadyExists:
            # Another request created the record between this one's read and its commit: decide
            # again with that record in sight.
            return self.idempotency.claim(key, request, caller=caller)

    def _for(self, request: CreateJob | CreateTraining) -> Submitter:
        """The submitter, with the request's own webhook events if it chose them."""
        if request.webhook_events is None:
            return self.submitter
        return replace(self.submitter, events_filter=tuple(request.webhook_events))

    def _submit_prediction(self, request: CreateJob, job_id: str | None, app: str | None) -> Job:
        target = ModelRef.parse(request.model) if request.model else DeploymentRef.parse(request.deployment)
        return self._for(request).submit(
            target,
            dict(request.input),
            metadata=request.metadata,
            job_id=job_id,
            deadline=request.deadline_delta(),
            app=app,
        )

    def _submit_training(self, request: CreateTraining, job_id: str | None, app: str | None) -> Job:
        return self._for(request).submit_training(
            ModelRef.parse(request.version),
            destination=request.destination,
            input=dict(request.input),
            metadata=request.metadata,
            job_id=job_id,
            deadline=request.deadline_delta(),
            app=app,
        )

    @staticmethod
    def _submitted(submit: Callable[[str | None], Job], job_id: str | None) -> Job:
        """The job `submit` made; a submission Replicate refused or failed as the problem naming its job."""
        try:
            return submit(job_id)
        except SubmitFailed as failed:
            cause = failed.__cause__
            transient = not isinstance(cause, ReplicateAPIError) or cause.transient
            problem = errors.ReplicateUnavailable if transient else errors.SubmitRefused
            raise problem(
                f"{failed} (job {failed.job.job_id} is recorded as failed, submit_failed)",
                extra={"job_id": failed.job.job_id},
            ) from None

    def _created(self, job: Job) -> Answer:
        return Answer(201, job_json(job), {"Location": f"{JOBS_PATH}/{job.job_id}"})


def _can_name_a_job(job_id: str) -> bool:
    """Whether Firestore would accept `job_id` as a document id: not "." or "..", nor of its reserved
    form `__.*__` (a read of which is refused with InvalidArgument)."""
    return bool(_JOB_ID.match(job_id)) and job_id not in {".", ".."} and not reserved_by_firestore(job_id)


def _state(value: str | None) -> JobState | None:
    if value is None or value == "":
        return None
    try:
        return JobState(value)
    except ValueError:
        allowed = ", ".join(state.value for state in JobState)
        raise errors.InvalidParameter(
            f"state must be one of {allowed}", errors=[{"field": "state", "message": f"one of {allowed}"}]
        ) from None


def _limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    if not (value.isdigit() and len(value) <= 3) or not 1 <= int(value) <= MAX_LIMIT:
        raise errors.InvalidParameter(
            f"limit must be an integer from 1 to {MAX_LIMIT}",
            errors=[{"field": "limit", "message": f"an integer from 1 to {MAX_LIMIT}"}],
        )
    return int(value)
