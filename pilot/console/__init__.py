"""The web console: a single page served at ``/`` that works on the same ``/api`` any frontend uses.

Everything it needs lives in this folder (``templates/``, ``static/``, vendored
browser libraries under ``static/vendor/``); nothing is built and nothing is
fetched from another origin. Its responses carry a strict Content-Security-Policy
(no inline script or style, no other origins, Trusted Types so that no string can
become HTML) and frame denial; the pages render every value from the API as text.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, render_template

# Every directive the console needs, nothing more. 'self' scripts only (ES modules and one
# vendored file); styles from files only (scripts set styles through the CSSOM, which CSP
# allows); fetch only to this origin; Trusted Types with no policy, so innerHTML and other
# HTML sinks throw instead of parsing a string.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}

bp = Blueprint(
    "console",
    __name__,
    static_folder="static",
    static_url_path="/console/static",
    template_folder="templates",
)


@bp.get("/")
def index() -> Response:
    """The console's one HTML page; the hash part of the URL picks the view (#/runs, #/plans/3/edit, …)."""
    response = Response(render_template("console/index.html"), mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.after_request
def security_headers(response: Response) -> Response:
    """Every console response (page, script, style, a static 404) gets the same protective headers."""
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


def init_app(app: Flask) -> None:
    """Serve the console at ``/`` and its files under ``/console/static/``."""
    app.register_blueprint(bp)
