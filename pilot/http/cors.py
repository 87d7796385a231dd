"""CORS for a frontend served from another origin: the operator's ``CORS_ORIGINS`` allow-list, nothing else.

Browsers send a preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``)
before any request that carries ``Authorization`` or a JSON body, and refuse to show an
answer that does not name the page's origin. With ``CORS_ORIGINS`` unset (the default)
Pilot answers no CORS at all, so only same-origin pages can read its answers.

For an allowed origin: a preflight gets 204 with the methods the route serves, the request
headers Pilot reads (``Authorization``, ``Content-Type``, ``Idempotency-Key``,
``Last-Event-ID``, ``X-Request-ID``) and a max-age; every answer (errors and event streams
included) names the origin exactly, allows credentials, and exposes ``X-Request-ID``,
``Retry-After`` and ``Location``. The origin is echoed only when it is on the list, never
``*``: a wildcard must not go with credentials, and a dev-mode Pilot open to every site
would let any page act as any user. A preflight from any other origin gets 403.
"""

from __future__ import annotations

from flask import Flask, Response, request
from werkzeug.datastructures import Headers

from pilot.application import current_pilot
from pilot.errors import Forbidden

ALLOWED_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "X-Request-ID")
EXPOSED_HEADERS = ("X-Request-ID", "Retry-After", "Location")
# Browsers cap it (Chromium at 2 hours, Firefox at 24): long enough to spare most preflights,
# short enough that a narrowed allow-list takes effect the same day.
MAX_AGE_SECONDS = 7200
VARY = ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers")


def allowed_origin() -> str | None:
    """The request's ``Origin`` when ``CORS_ORIGINS`` names it exactly (as browsers send it), else None."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    return origin if origin.lower() in current_pilot().settings.cors_origins else None


def _is_preflight() -> bool:
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def _route_methods() -> list[str]:
    """The methods the requested path serves, over every rule for it (OPTIONS is answered here)."""
    adapter = current_pilot().create_url_adapter(request)
    methods = set(adapter.allowed_methods()) if adapter is not None else set()
    return sorted(methods - {"OPTIONS", "HEAD"})


def preflight() -> Response | None:
    """Answer a CORS preflight before any view runs: 204 for an allowed origin, 403 for another."""
    if not _is_preflight() or not current_pilot().settings.cors_origins or request.url_rule is None:
        return None  # (no route: the 404 answers, with the CORS headers below)
    origin = allowed_origin()
    if origin is None:
        raise Forbidden(
            "this origin is not in CORS_ORIGINS; add it there to let its pages call the API",
            code="cors_origin_not_allowed",
        )
    response = Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = ", ".join(_route_methods())
    response.headers["Access-Control-Allow-Headers"] = ", ".join(ALLOWED_HEADERS)
    response.headers["Access-Control-Max-Age"] = str(MAX_AGE_SECONDS)
    return response


def add_headers(response: Response) -> Response:
    """Name an allowed origin on every answer (and tell caches the answer depends on the origin)."""
    if not current_pilot().settings.cors_origins:
        return response
    _vary(response.headers)
    origin = allowed_origin()
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        if not _is_preflight():
            response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)
    return response


def _vary(headers: Headers) -> None:
    values = [value.strip() for value in headers.get("Vary", "").split(",") if value.strip()]
    present = {value.lower() for value in values}
    headers["Vary"] = ", ".join([*values, *(name for name in VARY if name.lower() not in present)])


def init_app(app: Flask) -> None:
    """Answer preflights and add the CORS headers to every answer for the ``CORS_ORIGINS`` allow-list."""
    app.before_request(preflight)
    app.after_request(add_headers)
