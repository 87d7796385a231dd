"""One exception root for Pilot; each subclass says what went wrong (its ``code``), never an HTTP status.

Domain code (engine, scheduler, templating, vault, outbound client, data layer) raises
these; the HTTP layer alone decides what status each class answers with
(``pilot.http.errors.STATUS``), and the CLI turns them into click errors. Library
errors (psycopg2, requests) are translated into these where they happen, never in views.
"""

from __future__ import annotations

from typing import Any


class PilotError(Exception):
    """Base of every error Pilot raises on purpose: a stable ``code``, a message for people, ``details``."""

    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class ValidationError(PilotError, ValueError):
    """The caller's input is not valid; the message names the field."""

    code = "invalid_request"


class Unauthorized(PilotError):
    """No usable credentials identify the caller."""

    code = "unauthorized"


class Forbidden(PilotError):
    """The caller is known but may not do this."""

    code = "forbidden"


class NotFound(PilotError, LookupError):
    """No such record for this user."""

    code = "not_found"


class Conflict(PilotError):
    """The request clashes with what is stored (a duplicate key, say)."""

    code = "conflict"


class Unprocessable(PilotError):
    """The request is well formed but cannot be taken as it is (an idempotency key reused for another request)."""

    code = "unprocessable"


class ServiceUnavailable(PilotError):
    """Pilot cannot take this now (run queue full, shutting down, database slow); try again shortly."""

    code = "service_unavailable"


class TooManyRequests(PilotError):
    """The caller has too much waiting already (its queue of runs is full); retry after ``retry_after`` s."""

    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None, details: Any = None) -> None:
        super().__init__(message, code=code, details=details)
        self.retry_after = retry_after


class DatabaseError(PilotError):
    """A database failure that is not the caller's fault."""

    code = "database_error"


class ConfigurationError(PilotError):
    """Startup configuration is missing or malformed; the process must not serve."""

    code = "configuration_error"


class UnsupportedMediaType(PilotError):
    """The request body is not in a format Pilot reads."""

    code = "unsupported_media_type"
