"""Every way the receiver turns a request away, each class carrying its HTTP status.

The classes are the `Rejected` branch of the one exception tree (replicate_relay/errors.py, where
it is drawn). The receiver raises them, turning the core's errors into them where it calls the core
(receiver/intake.py: a VerificationError is a 400 or a 401 of the same `reason`, a PayloadError a
400, a PublishError a 503 `publish_failed`), and answers them in one place, receiver/main.py.
"""

from __future__ import annotations

from replicate_relay.errors import (
    BadRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    PublishUnavailable,
    Rejected,
    TooManyFailures,
    Unauthorized,
    UnsupportedMediaType,
)

__all__ = [
    "BadRequest",
    "MethodNotAllowed",
    "PayloadTooLarge",
    "PublishUnavailable",
    "Rejected",
    "TooManyFailures",
    "Unauthorized",
    "UnsupportedMediaType",
]
