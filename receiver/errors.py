"""Every way the receiver turns a request away, each carrying its HTTP status."""

from __future__ import annotations


class Rejected(Exception):
    """A request the receiver does not acknowledge. `reason` is a stable code for logs and metrics."""

    status = 400

    def __init__(self, reason: str, message: str, *, verification: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.verification = verification  # the signature or its timestamp failed, not the request's form


class BadRequest(Rejected):
    """Malformed headers or body: Replicate would get the same answer on a retry."""

    status = 400


class Unauthorized(Rejected):
    """Well-formed, but the signature or timestamp is not acceptable."""

    status = 401


class MethodNotAllowed(Rejected):
    status = 405


class PayloadTooLarge(Rejected):
    status = 413


class UnsupportedMediaType(Rejected):
    status = 415


class TooManyFailures(Rejected):
    """This client has failed verification too often lately; checked before any work is spent."""

    status = 429


class PublishUnavailable(Rejected):
    """Pub/Sub did not confirm the event: 503, so Replicate retries the final webhook."""

    status = 503
