"""pilot/http/errors.py: one table from error class to status; bad requests of every kind get a 4xx JSON
error, never a 500 or a traceback."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient

from pilot.application import PilotApp
from pilot.errors import DatabaseError, NotFound, PilotError, ServiceUnavailable, ValidationError
from pilot.http.errors import STATUS, status_for
from pilot.security.outbound import InvalidURL, OutboundTimeout, ResponseTooLarge
from pilot.security.ssrf import OutboundError, SSRFBlocked
from pilot.security.vault import CredentialDecryptError
from pilot.steps.templating import MissingReference, TemplateError
from provider_registry import UnknownProviderError
from tests.conftest import resp_json


def assert_json_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    error = resp_json(response)["error"]
    assert set(error) == {"code", "message", "details"} and error["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    if code:
        assert error["code"] == code
    return error


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        ("{not json", "application/json", 400, "invalid_request"),
        ("[1, 2]", "application/json", 400, "invalid_request"),
        ('"text"', "application/json", 400, "invalid_request"),
        ("name=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        ("hello", "text/plain", 415, "unsupported_media_type"),
        ("", "application/json", 400, "invalid_request"),
        (b"\xff\xfe\x00", "application/json", 400, "invalid_request"),
    ],
)
def test_malformed_bodies(client: FlaskClient, data, content_type: str, status: int, code: str) -> None:
    for url in ("/api/plans", "/api/provider-credentials/openai"):
        assert_json_error(client.post(url, data=data, content_type=content_type), status, code)


def test_oversize_body_is_413(client: FlaskClient, user: str) -> None:
    body = json.dumps({"user_id": user, "name": "x" * 2_000_000})
    assert_json_error(client.post("/api/plans", data=body, content_type="application/json"), 413)


def test_wrong_method_is_405_with_allow_header(client: FlaskClient) -> None:
    response = client.delete("/api/health")
    assert_json_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


def test_unknown_route_is_json_404(client: FlaskClient) -> None:
    assert_json_error(client.get("/api/nothing-here"), 404, "not_found")


@pytest.mark.parametrize(
    "query",
    ["", "?user_id=", "?user_id=%20padded", "?user_id=" + "u" * 256, "?user_id=a%00b"],
)
def test_missing_or_bad_user_id_is_400(client: FlaskClient, query: str) -> None:
    assert_json_error(client.get(f"/api/plans{query}"), 400, "invalid_request")


@pytest.mark.parametrize("user_id", [123, ["a"], {"a": 1}, True])
def test_non_string_user_id_in_body_is_400(client: FlaskClient, user_id) -> None:
    response = client.post("/api/plans", json={"user_id": user_id, "name": "x"})
    assert_json_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "body",
    [
        {"credentials": {}},
        {"credentials": "sk-abc"},
        {"credentials": {"api_key": ""}},
        {"credentials": {"api_key": 42}},
        {"credentials": {"bad type!": "x"}},
        {"credentials": {"api_key\n": "x"}},  # '$' in a .match() pattern let a final newline through
        {"credentials": {"api_key": "x" * 10_001}},
        {},
    ],
)
def test_bad_credential_bodies_are_400(client: FlaskClient, user: str, body: dict) -> None:
    response = client.post("/api/provider-credentials/openai", json={"user_id": user, **body})
    assert_json_error(response, 400, "invalid_request")


def test_unknown_provider_for_credentials_is_404(client: FlaskClient, user: str) -> None:
    response = client.post("/api/provider-credentials/nosuch", json={"user_id": user, "credentials": {"k": "v"}})
    assert_json_error(response, 404, "unknown_provider")


@pytest.mark.parametrize("path", ["/api/plans/abc", "/api/plans/-1", "/api/plans/99999999999999999999999"])
def test_bad_plan_ids_are_404(client: FlaskClient, user: str, path: str) -> None:
    assert_json_error(client.get(f"{path}?user_id={user}"), 404)


@pytest.mark.parametrize(("limit", "offset"), [("0", "0"), ("501", "0"), ("x", "0"), ("10", "-1")])
def test_bad_paging_is_400(client: FlaskClient, user: str, limit: str, offset: str) -> None:
    assert_json_error(client.get(f"/api/plans?user_id={user}&limit={limit}&offset={offset}"), 400)


def test_request_id_is_echoed(client: FlaskClient) -> None:
    response = client.get("/api/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"


def every_subclass(cls: type[PilotError]) -> list[type[PilotError]]:
    found, stack = [], [cls]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(current.__subclasses__())
    return found


def test_domain_errors_carry_no_http_status() -> None:
    """Only the HTTP layer's table knows statuses: no error class defines a ``status`` of its own."""
    import app  # noqa: F401 - every module that defines an error class is imported by now

    for cls in every_subclass(PilotError):
        assert "status" not in vars(cls), cls


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (PilotError("x"), 500),
        (ValidationError("x"), 400),
        (NotFound("x"), 404),
        (UnknownProviderError("x"), 404),  # no row of its own: its parent NotFound's
        (TemplateError("x"), 400),
        (MissingReference("x"), 400),
        (CredentialDecryptError("x"), 409),
        (DatabaseError("x"), 503),
        (OutboundError("x"), 502),
        (ResponseTooLarge("x"), 502),
        (OutboundTimeout("x"), 504),
        (SSRFBlocked("x"), 400),
        (InvalidURL("x"), 400),  # an OutboundError and a ValidationError: its own row decides
    ],
)
def test_the_most_specific_class_in_the_table_decides(error: PilotError, status: int) -> None:
    assert status_for(error) == status


def test_a_new_subclass_answers_like_its_parent_until_the_table_says_otherwise() -> None:
    class QuotaExceeded(ServiceUnavailable):
        code = "quota_exceeded"

    assert QuotaExceeded not in STATUS and status_for(QuotaExceeded("x")) == 503


def test_an_error_raised_in_a_view_answers_with_its_tables_status(app: PilotApp) -> None:
    def refuse() -> str:
        raise CredentialDecryptError("stored value unreadable", details={"types": ["api_key"]})

    app.add_url_rule("/api/refuse", "refuse", refuse)
    error = assert_json_error(app.test_client().get("/api/refuse"), 409, "credential_unreadable")
    assert error == {
        "code": "credential_unreadable",
        "message": "stored value unreadable",
        "details": {"types": ["api_key"]},
    }
