"""The exceptions sendq raises, split by what the caller must do about them.

::

    SendqError
    ├── ValidationError        bad input: name the field, store nothing, enqueue nothing (CLI exit 2)
    ├── NotFoundError          no message or record with that id
    ├── ConflictError          valid, but the message's state does not allow it (cancel after sending)
    ├── ConfigurationError     the deployment is missing something (an API key, a public key)
    ├── SignatureError         a webhook failed verification: change nothing (HTTP 401)
    │   └── StaleTimestamp     signed outside the +-300 s tolerance
    ├── DependencyUnavailable  the store or Redis cannot be reached: wait for it, spend no retry (CLI exit 1)
    │   ├── StoreUnavailable
    │   └── RedisUnavailable
    └── TelnyxError            Telnyx answered with an error, or could not be reached
        ├── TelnyxRefused      a 4xx refusal: retrying the same request cannot help
        └── TelnyxUnavailable  429, 5xx or a transport failure: retry later, same Idempotency-Key

Only ``worker.telnyx`` turns ``httpx`` exceptions and HTTP statuses into these; the store's engine
(:mod:`worker.store.engine`) and :func:`worker.dependencies.unavailable` turn lost connections into
``DependencyUnavailable``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class SendqError(Exception):
    """Root of every error sendq raises on purpose."""


class ValidationError(SendqError):
    """Input that sendq refuses, with the offending field named."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFoundError(SendqError):
    pass


class ConflictError(SendqError):
    """The request is well-formed, but the message is past the point where it could be honoured."""

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConfigurationError(SendqError):
    pass


class SignatureError(SendqError):
    """A webhook whose signature, key or timestamp does not verify."""


class StaleTimestamp(SignatureError):
    """A webhook signed too long ago (or too far ahead): a possible replay."""


class DependencyUnavailable(SendqError):
    """A service sendq needs did not answer. Not the message's fault: the work waits and is tried again."""

    dependency = "dependency"

    def __init__(self, reason: str) -> None:
        super().__init__(f"{self.dependency} unavailable: {reason}")
        self.reason = reason


class StoreUnavailable(DependencyUnavailable):
    dependency = "store"


class RedisUnavailable(DependencyUnavailable):
    dependency = "redis"


@dataclass(frozen=True)
class ApiError:
    """One entry of Telnyx's ``{"errors": [...]}`` envelope. ``code`` is a string, as Telnyx sends it."""

    code: str
    title: str
    detail: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "title": self.title, "detail": self.detail}


class TelnyxError(SendqError):
    """Telnyx answered with an error status (``status``), or could not be reached (``status`` None)."""

    def __init__(self, message: str, *, status: int | None = None, errors: list[ApiError] | None = None):
        super().__init__(message)
        self.status = status
        self.errors = errors or []

    @property
    def codes(self) -> list[str]:
        return [e.code for e in self.errors]


class TelnyxRefused(TelnyxError):
    """A 4xx answer other than 429: the request itself is wrong or not allowed."""


class TelnyxUnavailable(TelnyxError):
    """Worth retrying later with the same Idempotency-Key.

    ``retry_after_s`` is Telnyx's hint (``x-ratelimit-reset`` / ``Retry-After``) when it gave one.
    ``ambiguous`` is true when the request may have reached Telnyx before the failure (a read timeout, a
    dropped connection mid-response): only the Idempotency-Key keeps a retry from sending twice.
    """

    def __init__(self, message: str, *, status: int | None = None, errors: list[ApiError] | None = None,
                 retry_after_s: float | None = None, ambiguous: bool = False):
        super().__init__(message, status=status, errors=errors)
        self.retry_after_s = retry_after_s
        self.ambiguous = ambiguous
