"""Every error Relay raises on purpose, in one tree (as httpx keeps its own in `_exceptions.py`):

RelayError                      `reason`: a stable code for logs and metrics; `message`: one sentence
├── ConfigError                 a setting is missing or malformed; `relay` exits 2
│   └── OpsError                an operator command cannot go on (no credentials, a service unreachable)
├── DeployError                 a `relay deploy` step failed; `step` names it; `relay deploy` exits 1
├── VerificationError           a webhook that is not validly signed; `malformed`: not even of the right form
├── PayloadError                a body that is not a usable prediction
├── TokenRejected               a Google ID token missing or not acceptable; `status`: 401 or 403
├── CertsUnavailable            Google's signing certificates could not be fetched
├── PublishError                Pub/Sub did not confirm a message within the deadline
├── ReplicateAPIError           Replicate refused or could not be reached; `status`, `transient`
├── DownloadError               an output file was not downloaded; `url`, never with its query string
│   ├── DownloadRefused         the URL, a redirect or the file is not allowed
│   ├── DownloadGone            404 or 410: the output has expired
│   ├── DownloadUnavailable     another 4xx, or an unusable answer
│   └── DownloadFailed          network, timeout, 429 or 5xx: trying later may succeed
├── ArchiveConflict             another object already sits at an output's name
├── Unstorable                  Firestore refused a write as invalid: no retry can change it
│
│   what an app catches (exported by `replicate_relay`):
├── SubmitFailed                Replicate did not accept the prediction; `job` is recorded failed
├── JobAlreadyFinal             `cancel`: the job is final, or its run has ended at Replicate; `job`
├── JobNotFound (LookupError)   `cancel`: there is no such job
├── JobFailed                   `wait`: the job ended failed, canceled or aborted; `job`
├── JobGone (LookupError)       the job's document was deleted while it was watched
├── JobWaitTimeout (TimeoutError)  not final within the timeout; `last_job`
├── ClientClosed (RuntimeError) the client was closed while a wait or watch was blocked
│
│   what a service answers, each class carrying its HTTP `status`:
├── Rejected                    the receiver's refusals; `verification`: the signature or timestamp failed
│   ├── BadRequest              400
│   ├── Unauthorized            401
│   ├── MethodNotAllowed        405
│   ├── PayloadTooLarge         413
│   ├── UnsupportedMediaType    415
│   ├── TooManyFailures         429
│   └── PublishUnavailable      503: Replicate retries the webhook
├── HandlerError                a push handler's failure (500: not configured)
│   ├── TransientError          503: Pub/Sub redelivers with backoff, then dead-letters
│   ├── PermanentError          200: logged at ERROR, acknowledged so it is not redelivered forever
│   └── Unauthenticated         401 or 403: the push request lacks Pub/Sub's token for this service
└── ApiError                    the API's RFC 9457 problem types (api/errors.py)

TRANSIENT_ERRORS is what the Google clients, requests and the network raise when a service is
unavailable: the one tuple the push handlers retry on (503) and the API answers 503 for.

The services' classes carry their status, as starlette's HTTPException does, rather than a mapping
table per service: the answer is decided where the error is raised, often deep in the core (the
receiver's body limit, a push envelope that does not parse, a token check), and each service has
one place that writes it (receiver/main.py, handlers/main.py `_failed`, api/main.py
`problem_response`). The core's errors carry no status: one error is answered differently by
different services (a PayloadError is a 400 to Replicate, but an acknowledged 200 to Pub/Sub, which
must not redeliver it), so each service turns them into its own answers where it calls the core,
keeping their `reason`. receiver/errors.py and handlers/errors.py name what each service raises.

The API's problem types stay beside the API, on a branch of this tree (ApiError derives from
RelayError): each is a `type` URI and title of the API's documented contract (docs/API.md, the
OpenAPI document generated from them), and their names (NotFound, PayloadTooLarge, Unauthenticated)
are the API's own. The Replicate simulator's errors (replicate_relay/simulator/errors.py) are
tooling, not Relay's, and stay apart.

Each error keeps its name where it was defined before this module (`replicate_relay.client.JobFailed`,
`replicate_relay.downloads.DownloadError`, …): those modules import it from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import google.auth.exceptions
import requests
from google.api_core import exceptions as google_exceptions

if TYPE_CHECKING:
    from replicate_relay.jobs import Job

# What "Firestore, Cloud Storage, Pub/Sub or the network is unavailable" looks like from their clients.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    google_exceptions.GoogleAPIError,
    requests.RequestException,
    google.auth.exceptions.TransportError,
    ConnectionError,
    TimeoutError,
)


class RelayError(Exception):
    """The root of every error Relay raises. `reason` is a stable code for logs and metrics (a
    class's own, or a more precise one per instance); `message` is the sentence `str()` gives."""

    reason: str = "relay_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


# ---- configuration ---------------------------------------------------------------------------


class ConfigError(RelayError):
    """A configuration variable is missing or malformed; the message names it."""

    reason = "invalid_config"


class OpsError(ConfigError):
    """Something the operator can fix; one sentence. A ConfigError, so `relay` exits 2."""

    reason = "operator_error"


class DeployError(RelayError):
    """A `relay deploy` step failed; `step` names it ("6. Terraform phase 1: ..."). `relay deploy` exits 1."""

    reason = "deploy_failed"

    def __init__(self, message: str, *, step: str = "") -> None:
        super().__init__(message)
        self.step = step


# ---- the core: webhooks, events, tokens, Google's services, Replicate, downloads ----------------


class VerificationError(RelayError):
    """The request is not a validly signed webhook. `reason` is a stable code for logs/metrics."""

    # True: the request is not even of the right form (400); False: the form is right but the
    # signature or timestamp is not acceptable (401).
    malformed: bool

    def __init__(self, reason: str, message: str, *, malformed: bool) -> None:
        super().__init__(message, reason=reason)
        self.malformed = malformed


class PayloadError(RelayError):
    """A body that is not a usable prediction. `reason` is a stable code for logs."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason=reason)


class TokenRejected(RelayError):
    """The request's token is missing or not acceptable. `reason` is a stable code for logs and
    metrics; `status` is 401 (no valid Google token) or 403 (a valid one for another audience or
    caller). No message ever contains the token."""

    def __init__(self, reason: str, message: str, *, status: int = 401) -> None:
        super().__init__(message, reason=reason)
        self.status = status


class CertsUnavailable(RelayError):
    """Google's signing certificates could not be fetched: retrying later can help, so a push
    handler and the API answer 503 rather than refusing the token."""

    reason = "certs_unavailable"


class PublishError(RelayError):
    """Pub/Sub did not confirm the message within the deadline; the caller must not acknowledge."""

    reason = "publish_failed"


class ReplicateAPIError(RelayError):
    """Replicate refused or could not be reached. `status` is Replicate's HTTP status (None: no
    answer); `transient` says whether trying later may help. `reason`: replicate_unavailable when
    it may, replicate_refused when it may not."""

    def __init__(self, message: str, *, status: int | None) -> None:
        transient = status is None or status == 429 or status >= 500
        super().__init__(message, reason="replicate_unavailable" if transient else "replicate_refused")
        self.status = status
        self.transient = transient


class DownloadError(RelayError):
    """A download did not happen. `reason` is a stable code; `url` and `message` never carry a query string."""

    def __init__(self, reason: str, message: str, *, url: str) -> None:
        super().__init__(message, reason=reason)
        self.url = url


class DownloadRefused(DownloadError):
    """Permanent: the URL, a redirect or the file is not allowed; nothing was requested from the refused target."""


class DownloadGone(DownloadError):
    """Permanent: the host answered 404 or 410, as Replicate does once an output has expired."""


class DownloadUnavailable(DownloadError):
    """Permanent: the host answered another 4xx, or an unusable response."""


class DownloadFailed(DownloadError):
    """Transient: network error, timeout, 429 or 5xx; trying again later may succeed."""


class ArchiveConflict(RelayError):
    """A different object already sits at the deterministic name: never overwritten, never retried."""

    reason = "archive_conflict"


class Unstorable(RelayError):
    """Firestore refused a write as invalid (a document too large, a value it cannot hold): retrying
    the same write can never succeed."""

    reason = "unstorable"


# ---- what an app catches ----------------------------------------------------------------------


class SubmitFailed(RelayError):
    """Replicate did not accept the prediction; the job is recorded as failed (submit_failed)."""

    reason = "submit_failed"

    def __init__(self, job: Job, message: str) -> None:
        super().__init__(message)
        self.job = job


class JobAlreadyFinal(RelayError):
    """`cancel`: the job is final, or archiving the files of a run that has already ended at Replicate:
    there is nothing left to cancel. `job` is the job as it stands."""

    reason = "job_final"

    def __init__(self, job: Job) -> None:
        ended = "is final" if job.is_terminal else "has already ended at Replicate"
        super().__init__(f"job {job.job_id} {ended} ({job.state}): there is nothing to cancel")
        self.job = job


class JobNotFound(RelayError, LookupError):
    """`cancel`: there is no job with this id."""

    reason = "job_not_found"


class JobFailed(RelayError):
    """`wait`: the job ended failed, canceled or aborted; `job` holds its `error` and `error_code`.
    `reason` is `job_` and the state: job_failed, job_canceled, job_aborted."""

    def __init__(self, job: Job) -> None:
        super().__init__(
            f"job {job.job_id} {job.state} ({job.error_code or '-'}): {job.error or '-'}", reason=f"job_{job.state}"
        )
        self.job = job


class JobGone(RelayError, LookupError):
    """The job's document was deleted while it was watched: a submitted job whose prediction's first
    webhook had already made a job of its own (JobStore.attach_prediction keeps that one; `submit`
    returns its id, so waiting on what `submit` returned never ends here)."""

    reason = "job_gone"


class JobWaitTimeout(RelayError, TimeoutError):
    """The job was not final within the timeout; `last_job` is the last version the listener saw."""

    reason = "wait_timeout"

    def __init__(self, job_id: str, timeout: float, last_job: Job | None) -> None:
        seen = last_job.state if last_job is not None else "no such job yet"
        super().__init__(f"job {job_id} has not ended after {timeout:g} s (last seen: {seen})")
        self.job_id = job_id
        self.timeout = timeout
        self.last_job = last_job

    @property
    def last_state(self) -> str | None:
        return self.last_job.state if self.last_job is not None else None


class ClientClosed(RelayError, RuntimeError):
    """`RelayClient.close()` closed the listener this wait or watch was blocked on (from another thread)."""

    reason = "client_closed"


# ---- the receiver's answers ---------------------------------------------------------------------


class Rejected(RelayError):
    """A request the receiver does not acknowledge. `reason` is a stable code for logs and metrics;
    each subclass names its `status` in its class statement."""

    status: ClassVar[int] = 400

    def __init_subclass__(cls, *, status: int, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.status = status

    def __init__(self, reason: str, message: str, *, verification: bool = False) -> None:
        super().__init__(message, reason=reason)
        self.verification = verification  # the signature or its timestamp failed, not the request's form


class BadRequest(Rejected, status=400): ...  # malformed headers or body: a retry would get the same


class Unauthorized(Rejected, status=401): ...  # well-formed, but the signature or timestamp is not acceptable


class MethodNotAllowed(Rejected, status=405): ...


class PayloadTooLarge(Rejected, status=413): ...


class UnsupportedMediaType(Rejected, status=415): ...


class TooManyFailures(Rejected, status=429): ...  # failed verification too often lately: checked before any work


class PublishUnavailable(Rejected, status=503): ...  # Pub/Sub did not confirm the event, so Replicate retries it


# ---- the push handlers' answers: retry it (non-2xx) or record it and move on (2xx) ---------------


class HandlerError(RelayError):
    """Base of the handlers' errors. `reason` is a stable code for logs and metrics; a subclass names
    its `status` in its class statement."""

    status: int = 500

    def __init_subclass__(cls, *, status: int, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.status = status

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason=reason)


# Firestore, Cloud Storage or the network is unavailable: Pub/Sub redelivers with backoff, then dead-letters.
class TransientError(HandlerError, status=503): ...


# Retrying cannot help (an undecodable message, say): logged at ERROR, then acknowledged so it is not
# redelivered forever.
class PermanentError(HandlerError, status=200): ...


class Unauthenticated(HandlerError, status=401):
    """The push request lacks the OIDC token Pub/Sub signs (401), or its token was made for another
    audience or sender (403). Nothing is processed; a real message refused so (a misconfiguration)
    is redelivered by Pub/Sub, then dead-lettered, never lost."""

    def __init__(self, reason: str, message: str, *, status: int = 401) -> None:
        super().__init__(reason, message)
        self.status = status
