"""Webhook header auth from stored (encrypted) credentials, and secret-looking headers kept out of logs.

A step names the credential it sends (``auth: "bearer_token" | "basic_auth" | "header:<Name>"``);
nothing stored is sent unless the step asks, nor to another origin after a redirect. Header
values whose names look secret (authorization, *key*, *token*, *secret*, cookie, …) are
redacted in logs and answers even when written inline in the step, and in response headers.
Every check goes through the HTTP API to real loopback servers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from flask.testing import FlaskClient

from pilot.security.redaction import REDACTED
from tests.conftest import resp_json
from tests.fake_upstreams import FakeServer, RecordedRequest, Reply, WebhookReceiver

TOKEN = "tok-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
API_KEY = "xk-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
BASIC = "alice:pa55-w0rd-Very-Secret"
BASIC_B64 = base64.b64encode(BASIC.encode()).decode()
SECRETS = (TOKEN, API_KEY, BASIC, BASIC_B64, "pa55-w0rd-Very-Secret")


class Echo(FakeServer):
    """Answers every request with the headers it received, under a key that is not 'headers'."""

    def reply_for(self, behaviour: str, request: RecordedRequest) -> Reply:
        return Reply(json={"seen": dict(request.headers)})


@pytest.fixture
def echo() -> Iterator[Echo]:
    with Echo() as fake:
        yield fake


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as fake:
        yield fake


def store(client: FlaskClient, user: str, provider: str = "webhook", **credentials: str) -> Any:
    return client.post(f"/api/provider-credentials/{provider}", json={"user_id": user, "credentials": credentials})


def store_all(client: FlaskClient, user: str) -> None:
    response = client.post(
        "/api/provider-credentials/webhook",
        json={
            "user_id": user,
            "credentials": {"bearer_token": TOKEN, "basic_auth": BASIC, "header:X-Api-Key": API_KEY},
        },
    )
    assert response.status_code == 200, response.json
    assert TOKEN not in json.dumps(response.json) and API_KEY not in json.dumps(response.json)


def execute(client: FlaskClient, user: str, params: dict[str, Any]) -> dict[str, Any]:
    step = {"provider": "webhook", "action": "request", "params": params}
    response = client.post("/api/execute-step", json={"user_id": user, "step": step})
    assert response.status_code == 200, response.json
    return resp_json(response)


def stored_text(dsn: str, user: str) -> str:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT coalesce(error, ''), input::text, output::text FROM execution_logs WHERE user_id = %s", (user,)
        )
        rows = cur.fetchall()
    conn.close()
    return json.dumps(rows)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


@pytest.mark.parametrize(
    ("auth", "header", "expected"),
    [
        ("bearer_token", "Authorization", f"Bearer {TOKEN}"),
        ("basic_auth", "Authorization", f"Basic {BASIC_B64}"),
        ("header:X-Api-Key", "X-Api-Key", API_KEY),
    ],
)
def test_stored_credential_is_sent_as_the_header_the_step_names(
    client: FlaskClient, user: str, session_db: str, echo: Echo, auth: str, header: str, expected: str
) -> None:
    store_all(client, user)
    result = execute(client, user, {"url": echo.url + "/hook", "json": {"n": 1}, "auth": auth})
    assert result["success"] is True, result
    [sent] = echo.requests
    assert sent.header(header) == expected
    others = {"Authorization", "X-Api-Key"} - {header}
    assert all(sent.header(name) is None for name in others)  # only what the step asked for
    logged = resp_json(client.get(f"/api/logs?user_id={user}"))["logs"]
    assert logged[0]["input"]["auth"] == auth
    assert_no_secret(json.dumps(result), json.dumps(logged), stored_text(session_db, user))


def test_several_credentials_and_an_inline_header_of_the_same_name(client: FlaskClient, user: str, echo: Echo) -> None:
    store_all(client, user)
    params = {
        "url": echo.url + "/hook",
        "method": "GET",
        "headers": {"x-api-key": "inline-value-loses", "X-Trace": "t-1"},
        "auth": ["bearer_token", "header:X-Api-Key"],
    }
    assert execute(client, user, params)["success"] is True
    [sent] = echo.requests
    assert sent.header("Authorization") == f"Bearer {TOKEN}"
    assert sent.header("X-Api-Key") == API_KEY
    assert sent.header("X-Trace") == "t-1"


def test_stored_credentials_are_not_sent_unless_the_step_asks(client: FlaskClient, user: str, echo: Echo) -> None:
    store_all(client, user)
    assert execute(client, user, {"url": echo.url + "/hook", "method": "GET"})["success"] is True
    [sent] = echo.requests
    assert sent.header("Authorization") is None and sent.header("X-Api-Key") is None


def test_credentials_do_not_follow_a_redirect_to_another_origin(client: FlaskClient, user: str, echo: Echo) -> None:
    store_all(client, user)
    with WebhookReceiver() as first:
        first.script(Reply(307, headers={"Location": echo.url + "/elsewhere"}))
        params = {"url": first.url + "/hook", "json": {}, "auth": ["bearer_token", "header:X-Api-Key"]}
        assert execute(client, user, params)["success"] is True
        assert first.requests[0].header("Authorization") == f"Bearer {TOKEN}"
    [redirected] = echo.requests
    assert redirected.path == "/elsewhere"
    assert redirected.header("Authorization") is None and redirected.header("X-Api-Key") is None


def test_a_missing_credential_fails_without_a_request(client: FlaskClient, user: str, echo: Echo) -> None:
    result = execute(client, user, {"url": echo.url + "/hook", "auth": "header:X-Api-Key"})
    assert result["success"] is False and result["error"]["code"] == "missing_credentials", result
    assert "header:X-Api-Key" in result["error"]["message"]
    assert echo.requests == []


def test_two_credentials_for_one_header_are_refused(client: FlaskClient, user: str, echo: Echo) -> None:
    store_all(client, user)
    result = execute(client, user, {"url": echo.url + "/hook", "auth": ["bearer_token", "basic_auth"]})
    assert result["success"] is False and result["error"]["code"] == "invalid_params", result
    assert echo.requests == []


def test_an_echoed_credential_is_redacted_in_every_form(
    client: FlaskClient, user: str, session_db: str, echo: Echo
) -> None:
    store_all(client, user)
    for auth in ("bearer_token", "basic_auth", "header:X-Api-Key"):
        result = execute(client, user, {"url": echo.url + "/hook", "auth": auth})
        assert result["success"] is True
        seen = result["data"]["json"]["seen"]
        assert REDACTED in json.dumps(seen)
    logged = resp_json(client.get(f"/api/logs?user_id={user}"))
    assert_no_secret(json.dumps(logged), stored_text(session_db, user))


def test_inline_secret_headers_are_redacted_in_logs_and_answers(
    client: FlaskClient, user: str, session_db: str, receiver: WebhookReceiver
) -> None:
    inline = {
        "X-Api-Key": "inline-key-value-1234",
        "Authorization": "Token inline-authz-5678",
        "cookie": "sid=inline-cookie-9012",
        "X-Client-Secret": "inline-secret-3456",
        "X-Auth-Token": "inline-token-7890",
        "X-Trace": "trace-visible",
    }
    receiver.script(
        Reply(json={"ok": True}, headers={"Set-Cookie": "session=reply-cookie-1111", "X-Request-Id": "rid-visible"})
    )
    result = execute(client, user, {"url": receiver.url + "/hook", "json": {"a": 1}, "headers": inline})
    assert result["success"] is True
    assert receiver.requests[0].header("X-Api-Key") == "inline-key-value-1234"  # sent as written
    headers = result["data"]["headers"]
    assert headers["set-cookie"] == REDACTED and headers["x-request-id"] == "rid-visible"
    [row] = resp_json(client.get(f"/api/logs?user_id={user}"))["logs"]
    logged_headers = row["input"]["headers"]
    assert logged_headers["X-Trace"] == "trace-visible"
    assert all(logged_headers[name] == REDACTED for name in inline if name != "X-Trace")
    secrets = [value for name, value in inline.items() if name != "X-Trace"] + ["reply-cookie-1111"]
    for text in (json.dumps(result), json.dumps(row), stored_text(session_db, user)):
        assert not [secret for secret in secrets if secret in text]


def test_inline_secret_headers_are_redacted_in_runs(client: FlaskClient, user: str, receiver: WebhookReceiver) -> None:
    receiver.script(Reply(json={"ok": True}, headers={"Set-Cookie": "session=run-cookie-2222"}))
    step = {
        "provider": "webhook",
        "action": "request",
        "params": {"url": receiver.url + "/h", "headers": {"X-Api-Key": "run-inline-key-3333"}},
    }
    plan = client.post("/api/plans", json={"user_id": user, "name": "p", "steps": [step]})
    run = resp_json(client.post(f"/api/plans/{resp_json(plan)['id']}/run?wait=true", json={"user_id": user}))
    assert run["status"] == "success", run
    text = json.dumps(run) + json.dumps(client.get(f"/api/runs/{run['id']}?user_id={user}").json)
    assert "run-cookie-2222" not in text and "run-inline-key-3333" not in text


def test_plan_steps_can_use_stored_auth(client: FlaskClient, user: str, echo: Echo) -> None:
    store_all(client, user)
    step = {"provider": "webhook", "action": "request", "params": {"url": echo.url + "/h", "auth": "header:X-Api-Key"}}
    plan = client.post("/api/plans", json={"user_id": user, "name": "p", "steps": [step]})
    assert plan.status_code == 201, plan.json
    run = resp_json(client.post(f"/api/plans/{resp_json(plan)['id']}/run?wait=true", json={"user_id": user}))
    assert run["status"] == "success", run
    assert echo.requests[0].header("X-Api-Key") == API_KEY
    assert API_KEY not in json.dumps(plan.json) + json.dumps(run)


@pytest.mark.parametrize(
    ("credentials", "status"),
    [
        ({"header:X-Api-Key": "v" * 12}, 200),
        ({"header:Authorization": "Token abc123"}, 200),
        ({"header:": "v"}, 400),
        ({"header:X Api": "v"}, 400),
        ({"header:Host": "evil.example"}, 400),
        ({"header:Content-Length": "1"}, 400),
        ({"header:X-Pilot-Signature": "sha256=00"}, 400),
        ({"x:y": "v"}, 400),
        ({"header:X-Api-Key": "line\r\nX-Injected: 1"}, 400),
        ({"bearer_token": "has space"}, 400),
        ({"basic_auth": "no-colon-here"}, 400),
        ({"basic_auth": "user:pass:with:colons"}, 200),
    ],
)
def test_header_credentials_are_validated_when_stored(
    client: FlaskClient, user: str, credentials: dict[str, str], status: int
) -> None:
    response = store(client, user, **credentials)
    assert response.status_code == status, response.json


def test_header_credentials_belong_to_the_webhook_only(client: FlaskClient, user: str) -> None:
    assert store(client, user, "openai", **{"header:X-Api-Key": "v" * 12}).status_code == 400


def test_a_header_credential_is_listed_masked_and_deleted(client: FlaskClient, user: str) -> None:
    store_all(client, user)
    listed = resp_json(client.get(f"/api/provider-credentials/webhook?user_id={user}"))["credentials"]
    assert {row["type"] for row in listed} == {"bearer_token", "basic_auth", "header:X-Api-Key"}
    assert_no_secret(json.dumps(listed))
    deleted = client.delete(f"/api/provider-credentials/webhook/header:X-Api-Key?user_id={user}")
    assert deleted.status_code == 204


def test_the_webhook_description_documents_header_auth(client: FlaskClient) -> None:
    described = resp_json(client.get("/api/providers/webhook"))
    assert {"bearer_token", "basic_auth", "header:<Name>"} <= set(described["credential_types"])
    auth = described["actions"]["request"]["params_schema"]["properties"]["auth"]
    assert "header:" in json.dumps(auth) and auth["description"]
