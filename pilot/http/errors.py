"""Errors as HTTP answers: the one table from error class to status, and the handlers that use it.

Domain errors carry a code and a message, never a status (``pilot.errors``). The
status of an error is that of the most specific class in ``STATUS`` it inherits
from (its method resolution order is walked), so a new subclass answers like its
parent until a row says otherwise. Every error answers
``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from pilot.errors import (
    ConfigurationError,
    Conflict,
    DatabaseError,
    Forbidden,
    NotFound,
    PilotError,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
    ValidationError,
)
from pilot.planner.drafting import DraftInvalid, ModelCallFailed
from pilot.security.outbound import InvalidURL, OutboundConnectionError, OutboundTimeout
from pilot.security.ssrf import OutboundError, SSRFBlocked
from pilot.security.vault import CredentialDecryptError
from pilot.steps.templating import TemplateError

log = logging.getLogger("pilot")

STATUS: dict[type[PilotError], int] = {
    PilotError: 500,
    ConfigurationError: 500,
    ValidationError: 400,
    TemplateError: 400,  # a param template the caller wrote is malformed or failed
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,  # includes the registry's UnknownProviderError and UnknownActionError
    Conflict: 409,
    CredentialDecryptError: 409,  # the request is fine, the stored value is not
    UnsupportedMediaType: 415,
    Unprocessable: 422,
    TooManyRequests: 429,  # with Retry-After
    OutboundError: 502,  # an upstream failed: too large, too many redirects, …
    OutboundConnectionError: 502,
    SSRFBlocked: 400,  # the caller named an address Pilot may not reach
    InvalidURL: 400,
    OutboundTimeout: 504,
    ServiceUnavailable: 503,
    DatabaseError: 503,
    DraftInvalid: 422,  # the model answered, but no answer was a valid plan
    ModelCallFailed: 502,  # the user's model server failed or refused
}


def status_for(error: PilotError) -> int:
    """The HTTP status of ``error``: the row of the most specific class it is an instance of."""
    for cls in type(error).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


def error_response(code: str, message: str, status: int, details: Any = None) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message, "details": details}}), status


def init_app(app: Flask) -> None:
    """Answer every error with the JSON shape above; unexpected ones as a bare 500 (logged, never echoed)."""

    @app.errorhandler(PilotError)
    def pilot_error(exc: PilotError) -> tuple[Response, int]:
        status = status_for(exc)
        if status >= 500:
            log.error("request failed: %s", exc.message, extra={"code": exc.code})
        response, status = error_response(exc.code, exc.message, status, exc.details)
        if isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> WerkzeugResponse:
        response = exc.get_response()
        code = re.sub(r"[^a-z]+", "_", (exc.name or "error").lower()).strip("_")
        response.set_data(jsonify({"error": {"code": code, "message": exc.description, "details": None}}).get_data())
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return error_response("internal_error", "internal server error", 500)
