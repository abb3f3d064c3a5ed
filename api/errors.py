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

    def __init_subclass__(cls, *, status: int, slug: str, title: str, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.status, cls.slug, cls.title = status, slug, title

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


# Each problem type in one line: its status, slug (the `type` URN's last part) and title.
class MalformedJson(ApiError, status=400, slug="malformed-json", title="The body is not valid JSON"): ...


class InvalidParameter(ApiError, status=400, slug="invalid-parameter", title="A query parameter is not valid"): ...


class Unauthenticated(ApiError, status=401, slug="unauthenticated", title="No valid Google ID token"): ...


class Forbidden(ApiError, status=403, slug="forbidden", title="The token is not for this service or this caller"): ...


class NotFound(ApiError, status=404, slug="not-found", title="Not found"): ...


class MethodNotAllowed(ApiError, status=405, slug="method-not-allowed", title="Method not allowed"): ...


# The first request with this Idempotency-Key is still being carried out: retry shortly.
class IdempotencyInProgress(
    ApiError, status=409, slug="idempotency-key-in-progress", title="A request with this key is in progress"
): ...


# A cancel of a job that has already ended (succeeded, failed, canceled or aborted; or archiving the
# files of a run that has ended): nothing runs to stop. The problem names the job.
class JobFinal(ApiError, status=409, slug="job-final", title="The job has already ended"): ...


class PayloadTooLarge(ApiError, status=413, slug="payload-too-large", title="The body is too large"): ...


class UnsupportedMediaType(
    ApiError, status=415, slug="unsupported-media-type", title="The body must be application/json"
): ...


class ValidationFailed(ApiError, status=422, slug="validation-error", title="The request body is not valid"): ...


class IdempotencyKeyReused(
    ApiError, status=422, slug="idempotency-key-reused", title="The key was used with another request"
): ...


# Replicate refused the prediction or training (a 4xx: no such model, version, deployment or
# destination, invalid input). The job exists and is failed (`submit_failed`); the problem names it.
class SubmitRefused(ApiError, status=422, slug="submit-refused", title="Replicate refused the submission"): ...


# Replicate could not be reached or failed (5xx, 429, network): retrying later can help. On a create,
# the job exists and is failed (`submit_failed`), and a retry creates a new one; on a cancel, the
# request is recorded on the job and may be sent again.
class ReplicateUnavailable(
    ApiError, status=502, slug="replicate-unavailable", title="Replicate could not be reached or failed"
): ...


# Firestore or Google's certificates could not be reached: retrying later can help.
class Unavailable(ApiError, status=503, slug="unavailable", title="A service the API depends on is unavailable"): ...


class InternalError(ApiError, status=500, slug="internal-error", title="Internal error"): ...


ALL_PROBLEMS: tuple[type[ApiError], ...] = tuple(ApiError.__subclasses__())
