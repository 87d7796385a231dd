"""One exception root for Pilot; each subclass carries an HTTP status and an error code.

The single error handler in ``app.py`` turns any ``PilotError`` into
``{"error": {"code", "message", "details"}}``. Library errors (psycopg2, requests)
are translated into these where they happen, never in views.
"""

from __future__ import annotations

from typing import Any


class PilotError(Exception):
    """Base of every error Pilot raises on purpose."""

    status = 500
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
    status = 400
    code = "invalid_request"


class Unauthorized(PilotError):
    status = 401
    code = "unauthorized"


class Forbidden(PilotError):
    status = 403
    code = "forbidden"


class NotFound(PilotError, LookupError):
    status = 404
    code = "not_found"


class Conflict(PilotError):
    status = 409
    code = "conflict"


class ServiceUnavailable(PilotError):
    status = 503
    code = "service_unavailable"


class DatabaseError(PilotError):
    """A database failure that is not the caller's fault."""

    status = 503
    code = "database_error"


class ConfigurationError(PilotError):
    """Startup configuration is missing or malformed; the process must not serve."""

    code = "configuration_error"


class UnsupportedMediaType(PilotError):
    status = 415
    code = "unsupported_media_type"
