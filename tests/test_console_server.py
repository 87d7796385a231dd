"""The console's server side: served at /, strict security headers, static files, auth_mode in health."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from pilot.application import PilotApp
from pilot.http import openapi
from tests.conftest import make_app, resp_json

CONSOLE = Path(__file__).resolve().parent.parent / "pilot" / "console"


@pytest.mark.parametrize("mode", ["dev", "token"])
def test_health_says_the_auth_mode_so_the_console_can_sign_in(
    session_db: str, tmp_path: Path, fernet_key: str, mode: str
) -> None:
    app = make_app(session_db, tmp_path, (fernet_key,), auth_mode=mode, jwt_secret="s" * 32)
    try:
        body = resp_json(app.test_client().get("/api/health"))
    finally:
        app.db.close()
    assert body["auth_mode"] == mode


def test_the_console_is_served_at_root_with_strict_security_headers(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    csp = {d.split()[0]: d.split()[1:] for d in response.headers["Content-Security-Policy"].split("; ")}
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"] and csp["frame-ancestors"] == ["'none'"]
    assert csp["require-trusted-types-for"] == ["'script'"]
    assert not any("unsafe" in value for values in csp.values() for value in values)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert b'type="module" src="/console/static/js/app.js"' in response.data


def test_console_files_are_served_with_the_same_headers_and_a_missing_one_is_404(client: FlaskClient) -> None:
    script = client.get("/console/static/js/app.js")
    assert script.status_code == 200 and script.mimetype in {"text/javascript", "application/javascript"}
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" in script.headers
    missing = client.get("/console/static/js/nope.js")
    assert missing.status_code == 404 and missing.headers["X-Frame-Options"] == "DENY"


def test_the_api_keeps_its_own_responses(client: FlaskClient) -> None:
    """The console's headers are its own: JSON answers are not given a page's CSP."""
    assert "Content-Security-Policy" not in client.get("/api/health").headers


def test_console_routes_are_not_part_of_the_api_document(app: PilotApp) -> None:
    assert openapi.undocumented(app) == []
    paths = resp_json(app.test_client().get("/api/openapi.json"))["paths"]
    assert "/" not in paths and not any(path.startswith("/console") for path in paths)


def test_no_inline_script_or_style_and_no_html_sinks_in_the_console_sources() -> None:
    """What the CSP enforces at run time, checked in the files too (so a slip fails here first)."""
    template = (CONSOLE / "templates" / "console" / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", template) == []
    assert re.findall(r"\sstyle\s*=|\son[a-z]+\s*=", template) == []
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function\(")
    own = [p for p in (CONSOLE / "static" / "js").rglob("*.js")]
    assert len(own) >= 10
    offenders = [f"{p.name}: {m.group()}" for p in own for m in sinks.finditer(p.read_text())]
    assert offenders == []


def test_vendored_libraries_record_version_licence_and_their_licence_text() -> None:
    vendor = CONSOLE / "static" / "vendor"
    record = (vendor / "README.md").read_text()
    for library in (p for p in vendor.iterdir() if p.is_dir()):
        assert (library / "LICENSE").read_text().strip(), library
        assert f"`{library.name}/" in record
    banner = (vendor / "uplot" / "uPlot.iife.min.js").read_text()[:80]
    assert "(v1.6.32)" in banner and "| 1.6.32 |" in record
