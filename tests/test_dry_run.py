"""Dry runs (``POST /api/plans/<id>/run?dry_run=true``): logic for real, nothing sent, spent or written.

Zero outbound calls is checked where it matters: TCP connections accepted by the loopback
servers the plan names (a webhook receiver and an OpenAI-compatible model), counted at the
listener. Nothing written is checked in the tables (no run, no log row).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from pilot.application import PilotApp
from pilot.data import store
from tests.conftest import resp_json
from tests.fake_upstreams import FakeOpenAI, WebhookReceiver
from tests.test_openapi import check

TOKEN = "tok-0123456789-secret"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as fake:
        yield fake


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def create_plan(client: FlaskClient, user: str, steps: list[dict[str, Any]]) -> int:
    response = client.post("/api/plans", json={"user_id": user, "name": "dry", "steps": steps})
    assert response.status_code == 201, response.get_data(as_text=True)
    return int(resp_json(response)["id"])


def dry_run(client: FlaskClient, user: str, plan_id: int, input_: dict[str, Any] | None = None) -> Any:
    return client.post(f"/api/plans/{plan_id}/run?dry_run=true", json={"user_id": user, "input": input_ or {}})


def written(app: PilotApp, user: str) -> tuple[int, int]:
    """(runs, log rows) the user has."""
    with app.db.transaction(user) as cur:
        runs = store.list_user_runs(cur, user, limit=100, plan_id=None, status=None, trigger=None, before=None)
        logs = store.list_logs(cur, user, limit=100, offset=0)
    return len(runs), len(logs)


def test_dry_run_executes_logic_renders_the_rest_and_connects_nowhere(
    app: PilotApp, client: FlaskClient, user: str, receiver: WebhookReceiver, openai: FakeOpenAI
) -> None:
    creds = {"user_id": user, "credentials": {"api_key": "sk-live-abcdefghijklmnop0123", "base_url": openai.base_url}}
    assert client.post("/api/provider-credentials/openai", json=creds).status_code == 200
    token = {"user_id": user, "credentials": {"bearer_token": TOKEN}}
    assert client.post("/api/provider-credentials/webhook", json=token).status_code == 200
    steps = [
        {"id": "greet", "provider": "logic", "action": "transform", "params": {"template": "hi {{ input.name }}"}},
        {
            "id": "hook",
            "provider": "webhook",
            "action": "request",
            "params": {
                "url": receiver.url + "/hook",
                "json": {"text": "{{ steps.greet.data }}", "echo": "{{ input.token }}"},
                "auth": "bearer_token",
            },
        },
        {
            "id": "ask",
            "provider": "openai",
            "action": "chat_completion",
            "params": {"prompt": "Summarise {{ steps.hook.data.body }}"},
        },
        {"id": "seen", "provider": "logic", "action": "extract", "params": {"expression": "steps.hook"}},
        {"id": "later", "provider": "logic", "action": "transform", "params": {"template": "x"}, "when": "input.no"},
    ]
    plan_id = create_plan(client, user, steps)
    response = dry_run(client, user, plan_id, {"name": "Ada", "token": TOKEN})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = resp_json(response)
    assert body["dry_run"] is True and body["plan_id"] == plan_id and body["status"] == "success"
    greet, hook, ask, seen, later = body["steps"]
    assert greet["status"] == "success" and greet["result"]["data"] == "hi Ada"  # evaluated for real
    assert hook["status"] == "would_run" and hook["params"]["url"] == receiver.url + "/hook"
    assert hook["params"]["json"] == {"text": "hi Ada", "echo": "[REDACTED]"}  # a stored value, redacted
    assert "missing_credentials" not in hook
    assert ask["status"] == "unresolved" and "did not execute" in ask["error"]["message"]
    assert seen["status"] == "success" and seen["result"]["data"] == {"dry_run": True}
    assert later["status"] == "skipped"
    assert TOKEN not in response.get_data(as_text=True)
    check(resp_json(client.get("/api/openapi.json")), "DryRun", body)
    assert receiver.connections == 0 and openai.connections == 0 and not receiver.requests
    assert written(app, user) == (0, 0)


def test_dry_run_reports_missing_credentials_and_stops_at_an_error(
    app: PilotApp, client: FlaskClient, user: str
) -> None:
    steps = [
        {"id": "ask", "provider": "anthropic", "action": "messages", "params": {"prompt": "hello"}},
        {"id": "bad", "provider": "logic", "action": "transform", "params": {"template": "{{ input.missing }}"}},
        {"id": "never", "provider": "logic", "action": "transform", "params": {"template": "x"}},
    ]
    body = resp_json(dry_run(client, user, create_plan(client, user, steps)))
    assert body["status"] == "error" and "bad" in body["error"]
    ask, bad = body["steps"]  # the walk stopped at the error, as a run would
    assert ask["status"] == "would_run" and ask["missing_credentials"] == ["api_key"]
    assert bad["status"] == "error" and bad["error"]["code"] == "missing_reference"
    assert written(app, user) == (0, 0)


def test_a_failing_logic_step_is_an_error_and_continue_on_error_goes_on(client: FlaskClient, user: str) -> None:
    steps: list[dict[str, Any]] = [
        {
            "provider": "logic",
            "action": "extract",
            "params": {"expression": "ceil(`1e400`)"},
            "continue_on_error": True,
        },
        {"provider": "logic", "action": "transform", "params": {"template": 1}},
    ]
    body = resp_json(dry_run(client, user, create_plan(client, user, steps)))
    assert [step["status"] for step in body["steps"]] == ["error", "success"] and body["status"] == "success"


def test_dry_run_of_someone_elses_plan_is_404(client: FlaskClient, user: str, other_user: str) -> None:
    plan_id = create_plan(client, user, [{"provider": "logic", "action": "transform", "params": {"template": 1}}])
    assert dry_run(client, other_user, plan_id).status_code == 404
    assert dry_run(client, user, 987654321).status_code == 404
