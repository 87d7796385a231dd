"""CORS with real preflight requests over HTTP, judged by the Fetch standard's checks written out here.

A live server (werkzeug, threaded) answers ``OPTIONS`` preflights and actual requests as a
browser sends them. ``browser_allows`` is the reference: the CORS check and the
CORS-preflight checks of the WHATWG Fetch standard (origin named exactly, credentials only
without a wildcard, the method and every non-safelisted header allowed).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from pilot.application import PilotApp
from pilot.errors import ConfigurationError
from pilot.settings import load_settings
from tests.conftest import make_app

FRONTEND = "http://localhost:5173"
CDN = "https://app.example.com"
SIMPLE_METHODS = {"GET", "HEAD", "POST"}


def browser_allows(
    response: requests.Response,
    origin: str,
    *,
    credentials: bool,
    method: str | None = None,
    headers: tuple[str, ...] | list[str] = (),
) -> bool:
    """Fetch standard: the CORS check, plus for a preflight its method and header checks."""
    allow_origin = response.headers.get("Access-Control-Allow-Origin")
    if allow_origin is None or (allow_origin == "*" and credentials) or allow_origin not in ("*", origin):
        return False
    if credentials and response.headers.get("Access-Control-Allow-Credentials") != "true":
        return False
    if method is None:
        return True
    if not 200 <= response.status_code < 300:
        return False
    methods = {m.strip() for m in response.headers.get("Access-Control-Allow-Methods", "").split(",") if m.strip()}
    if method not in methods and method not in SIMPLE_METHODS:
        return False
    allowed = {h.strip().lower() for h in response.headers.get("Access-Control-Allow-Headers", "").split(",")}
    return all(header.lower() in allowed for header in headers)


@pytest.fixture
def served(session_db: str, tmp_path: Path, fernet_key: str) -> Iterator[tuple[str, PilotApp]]:
    app = make_app(session_db, tmp_path, (fernet_key,), cors_origins=(FRONTEND, CDN))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        thread.join(timeout=5)
        app.db.close()


def preflight(base: str, path: str, origin: str, method: str, headers: list[str]) -> requests.Response:
    return requests.options(
        base + path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": ", ".join(h.lower() for h in headers),
        },
        timeout=10,
    )


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        ("/api/plans", "POST", ["Authorization", "Content-Type", "Idempotency-Key"]),
        ("/api/plans/1", "PATCH", ["Authorization", "Content-Type"]),
        ("/api/plans/1", "DELETE", ["Authorization"]),
        ("/api/execute-step", "POST", ["Content-Type", "Last-Event-ID", "X-Request-ID"]),
    ],
)
def test_preflight_from_an_allowed_origin_passes_the_browsers_check(
    served: tuple[str, PilotApp], path: str, method: str, headers: list[str]
) -> None:
    base, _ = served
    response = preflight(base, path, FRONTEND, method, headers)
    assert response.status_code == 204
    assert browser_allows(response, FRONTEND, credentials=True, method=method, headers=headers)
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in [v.strip() for v in response.headers["Vary"].split(",")]
    assert not browser_allows(response, CDN, credentials=True, method=method, headers=headers)  # named exactly


def test_preflight_names_only_the_methods_the_route_serves(served: tuple[str, PilotApp]) -> None:
    base, _ = served
    response = preflight(base, "/api/plans/1", CDN, "PUT", ["Content-Type"])
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert methods == {"GET", "PUT", "PATCH", "DELETE"}
    assert not browser_allows(preflight(base, "/api/health", CDN, "DELETE", []), CDN, credentials=True, method="DELETE")


def test_other_origins_and_unlisted_headers_are_refused(served: tuple[str, PilotApp]) -> None:
    base, _ = served
    refused = preflight(base, "/api/plans", "https://evil.example", "POST", ["Content-Type"])
    assert refused.status_code == 403 and "Access-Control-Allow-Origin" not in refused.headers
    assert refused.json()["error"]["code"] == "cors_origin_not_allowed"
    lookalike = preflight(base, "/api/plans", FRONTEND + ".evil.example", "POST", ["Content-Type"])
    assert lookalike.status_code == 403
    odd_header = preflight(base, "/api/plans", FRONTEND, "POST", ["X-Custom-Thing"])
    assert not browser_allows(odd_header, FRONTEND, credentials=True, method="POST", headers=["X-Custom-Thing"])


def test_actual_answers_name_the_origin_and_expose_request_id_and_retry_after(
    served: tuple[str, PilotApp], user: str
) -> None:
    base, _ = served
    ok = requests.get(f"{base}/api/plans?user_id={user}", headers={"Origin": CDN}, timeout=10)
    assert ok.status_code == 200 and browser_allows(ok, CDN, credentials=True)
    exposed = {h.strip().lower() for h in ok.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-request-id", "retry-after"} <= exposed
    missing = requests.get(f"{base}/api/plans/999999999?user_id={user}", headers={"Origin": CDN}, timeout=10)
    assert missing.status_code == 404 and browser_allows(missing, CDN, credentials=True)  # errors readable too
    stranger = requests.get(f"{base}/api/plans?user_id={user}", headers={"Origin": "https://evil.example"}, timeout=10)
    assert not browser_allows(stranger, "https://evil.example", credentials=False)


def test_event_streams_work_cross_origin(served: tuple[str, PilotApp], user: str) -> None:
    base, _ = served
    assert preflight(base, "/api/execute-step", FRONTEND, "POST", ["Content-Type"]).status_code == 204
    body = {"user_id": user, "step": {"provider": "logic", "action": "transform", "params": {"template": "hi"}}}
    headers = {"Origin": FRONTEND, "Accept": "text/event-stream"}
    with requests.post(f"{base}/api/execute-step", json=body, headers=headers, stream=True, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert browser_allows(response, FRONTEND, credentials=True)
        text = b"".join(response.iter_content(None)).decode()
    assert "event: result" in text


def test_without_cors_origins_no_cors_is_answered(session_db: str, tmp_path: Path, fernet_key: str) -> None:
    app = make_app(session_db, tmp_path, (fernet_key,))
    try:
        client = app.test_client()
        headers: dict[str, Any] = {"Origin": FRONTEND, "Access-Control-Request-Method": "POST"}
        answer = client.options("/api/plans", headers=headers)
        assert "Access-Control-Allow-Origin" not in answer.headers
        assert "Access-Control-Allow-Origin" not in client.get("/api/health", headers={"Origin": FRONTEND}).headers
    finally:
        app.db.close()


@pytest.mark.parametrize(
    "value", ["*", "https://app.example.com/path", "app.example.com", "null", "https://*.example.com"]
)
def test_cors_origins_takes_exact_origins_only(value: str) -> None:
    with pytest.raises(ConfigurationError, match="CORS_ORIGINS"):
        load_settings(cors_origins=value)


def test_cors_origins_are_read_as_browsers_send_them() -> None:
    settings = load_settings(cors_origins="HTTP://Localhost:5173/, https://app.example.com:8443,http://[::1]:3000")
    assert settings.cors_origins == ("http://localhost:5173", "https://app.example.com:8443", "http://[::1]:3000")
