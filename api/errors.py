"""Every way the API turns a request away, each class carrying its HTTP status and problem type.

Answered as RFC 9457 problem details (`application/problem+json`) in one place, api/main.py. The
`type` URIs are stable (docs/API.md lists them): clients branch on `type`, never on `title` or
`detail`. They are URNs, as the schemas' `$id`s are: the project owns no domain to serve pages
from, and RFC 9457 lets a type be a URI that is not dereferenced.

ApiError is a branch of the one exception tree (replicate_relay/errors.py, which says why the
problem types stay here): its `reason` is the problem type's slug, its `message` the `detail`.
The core's errors become problems where the API calls the core (api/auth.py: TokenRejected,
CertsUnavailable; api/core.py: SubmitFailed, JobNotFound, JobAlreadyFinal, ReplicateAPIError), and
TRANSIENT_ERRORS a 503 `unavailable` in main.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from replicate_relay.errors import RelayError

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:replicate-relay:problem:"


def problem_type(slug: str) -> str:
    return PROBLEM_TYPE_PREFIX + slug


class ApiError(RelayError):
    """A request the API does not carry out. `slug` names the problem type; `errors` lists the
    fields at fault ({field, message}), for validation problems."""

    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        errors: Sequence[Mapping[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, reason=self.slug)
        self.detail = detail
        self.errors = [dict(error) for error in errors]
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    @property
    def type(self) -> str:
        return problem_type(self.slug)

    def problem(self, instance: str) -> dict[str, Any]:
        """The RFC 9457 body: type, title, status, detail, instance, then the extension members."""
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


class MalformedJson(ApiError):
    status, slug, title = 400, "malformed-json", "The body is not valid JSON"


class InvalidParameter(ApiError):
    status, slug, title = 400, "invalid-parameter", "A query parameter is not valid"


class Unauthenticated(ApiError):
    status, slug, title = 401, "unauthenticated", "No valid Google ID token"


class Forbidden(ApiError):
    status, slug, title = 403, "forbidden", "The token is not for this service or this caller"


class NotFound(ApiError):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(ApiError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class IdempotencyInProgress(ApiError):
    """The first request with this Idempotency-Key is still being carried out: retry shortly."""

    status, slug, title = 409, "idempotency-key-in-progress", "A request with this Idempotency-Key is in progress"


class JobFinal(ApiError):
    """A cancel of a job that has already ended (succeeded, failed, canceled or aborted; or archiving
    the files of a run that has ended): nothing runs to stop. The problem names the job."""

    status, slug, title = 409, "job-final", "The job has already ended"


class PayloadTooLarge(ApiError):
    status, slug, title = 413, "payload-too-large", "The body is too large"


class UnsupportedMediaType(ApiError):
    status, slug, title = 415, "unsupported-media-type", "The body must be application/json"


class ValidationFailed(ApiError):
    status, slug, title = 422, "validation-error", "The request body is not valid"


class IdempotencyKeyReused(ApiError):
    status, slug, title = 422, "idempotency-key-reused", "The Idempotency-Key was used with another request"


class SubmitRefused(ApiError):
    """Replicate refused the prediction or training (a 4xx: no such model, version, deployment or
    destination, invalid input). The job exists and is failed (`submit_failed`); the problem names it."""

    status, slug, title = 422, "submit-refused", "Replicate refused the submission"


class ReplicateUnavailable(ApiError):
    """Replicate could not be reached or failed (5xx, 429, network): retrying later can help. On a
    create, the job exists and is failed (`submit_failed`), and a retry creates a new one; on a
    cancel, the request is recorded on the job and may be sent again."""

    status, slug, title = 502, "replicate-unavailable", "Replicate could not be reached or failed"


class Unavailable(ApiError):
    """Firestore or Google's certificates could not be reached: retrying later can help."""

    status, slug, title = 503, "unavailable", "A service the API depends on is unavailable"


class InternalError(ApiError):
    status, slug, title = 500, "internal-error", "Internal error"


ALL_PROBLEMS: tuple[type[ApiError], ...] = (
    MalformedJson,
    InvalidParameter,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    IdempotencyInProgress,
    JobFinal,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    IdempotencyKeyReused,
    SubmitRefused,
    ReplicateUnavailable,
    Unavailable,
    InternalError,
)
