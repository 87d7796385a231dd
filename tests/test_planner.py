"""``POST /api/plans/draft`` against loopback model servers speaking OpenAI's and Anthropic's wire formats.

The fakes answer with scripted chat completions / messages (the shapes of the vendors'
documentation: ``choices[0].message.content``; a ``tool_use`` content block). Checked: a
valid draft in one attempt, a repair, a model that never gets it right (422 with every
attempt), a failing model server (502), the missing-credential 400s, saving (disabled,
with provenance), a dry run that connects nowhere, and that no credential value ever
appears in what the model receives while the credential type names do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from pilot.application import PilotApp
from pilot.data import store
from providers import registry
from tests.conftest import make_app, resp_json
from tests.fake_upstreams import SERVER_ERROR, FakeAnthropic, FakeOpenAI, Reply, WebhookReceiver
from tests.test_openapi import check

OPENAI_KEY = "sk-openai-planner-0123456789abcd"
PROMPT = "Every morning at 8, say hello to the team webhook at https://hooks.example.com/team"
VALID_PLAN: dict[str, Any] = {
    "name": "Morning hello",
    "schedule": {"cron": "0 8 * * *", "timezone": "Europe/Berlin"},
    "steps": [
        {"id": "greeting", "provider": "logic", "action": "transform", "params": {"template": "Hello team"}},
        {
            "id": "post",
            "provider": "webhook",
            "action": "request",
            "params": {"url": "https://hooks.example.com/team", "json": {"text": "{{ steps.greeting.data }}"}},
        },
    ],
}
UNKNOWN_PROVIDER = {"name": "Bad", "steps": [{"id": "x", "provider": "slack", "action": "post", "params": {}}]}
STORED_STEPS = [{**step, "continue_on_error": False} for step in VALID_PLAN["steps"]]  # as POST /api/plans stores
BAD_PARAMS = {"name": "Bad", "steps": [{"id": "x", "provider": "webhook", "action": "request", "params": {}}]}


def completion(content: str, model: str = "gpt-4o-mini") -> Reply:
    """An OpenAI chat completion carrying ``content``, as the API documents it."""
    return Reply(
        json={
            "id": "chatcmpl-plan",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100},
        }
    )


def tool_use(plan: Any) -> Reply:
    """An Anthropic message whose content is one ``tool_use`` block, as the API documents it."""
    return Reply(
        json={
            "id": "msg_plan",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-haiku-latest",
            "content": [{"type": "tool_use", "id": "toolu_01", "name": "submit_plan", "input": plan}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 900, "output_tokens": 80},
        }
    )


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def store_credentials(client: FlaskClient, user: str, provider: str, credentials: dict[str, str]) -> None:
    response = client.post(f"/api/provider-credentials/{provider}", json={"user_id": user, "credentials": credentials})
    assert response.status_code == 200, response.get_data(as_text=True)


def with_openai(client: FlaskClient, user: str, fake: FakeOpenAI) -> None:
    store_credentials(client, user, "openai", {"api_key": OPENAI_KEY, "base_url": fake.base_url})


def draft(client: FlaskClient, user: str, **body: Any) -> Any:
    return client.post("/api/plans/draft", json={"user_id": user, "prompt": PROMPT, **body})


def model_logs(app: PilotApp, user: str) -> list[dict[str, Any]]:
    with app.db.transaction(user) as cur:
        return store.list_logs(cur, user, limit=50, offset=0)


def test_a_valid_draft_in_one_attempt(app: PilotApp, client: FlaskClient, user: str, openai: FakeOpenAI) -> None:
    with_openai(client, user, openai)
    openai.script(completion(json.dumps(VALID_PLAN)))
    response = draft(client, user)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = resp_json(response)
    plan = body["plan"]
    assert plan["steps"] == STORED_STEPS and plan["schedule"] == VALID_PLAN["schedule"]
    assert plan["enabled"] is False and plan["original_prompt"] == PROMPT and plan["name"] == "Morning hello"
    assert body["provider"] == "openai" and body["model"] == "gpt-4o-mini" and body["saved"] is False
    (attempt,) = body["attempts"]
    assert attempt["attempt"] == 1 and attempt["valid"] is True and attempt["errors"] == []
    assert attempt["usage"] == {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
    assert body["usage"] == {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
    sent = openai.requests[-1].json
    assert sent["model"] == "gpt-4o-mini"  # PLANNER_MODEL_OPENAI's default
    schema = sent["response_format"]["json_schema"]["schema"]
    providers = {
        variant["properties"]["provider"]["enum"][0] for variant in schema["properties"]["steps"]["items"]["anyOf"]
    }
    assert providers == set(registry.names())  # from the registry, not a hand-kept list
    system = sent["messages"][0]["content"]
    assert sent["messages"][0]["role"] == "system" and sent["messages"][-1] == {"role": "user", "content": PROMPT}
    for needle in ("chat_completion", "hmac_secret", "{{ steps.ask.data.text }}", "Weekday news summary"):
        assert needle in system
    webhook_schema = json.dumps(registry.get("webhook").actions["request"].params_schema, separators=(",", ":"))
    assert webhook_schema in system  # each action's params JSON Schema, as the registry has it
    check(resp_json(client.get("/api/openapi.json")), "DraftAnswer", body)
    (row,) = model_logs(app, user)  # the model call is logged like any step; nothing else is stored
    assert row["step_id"] == "plan_draft" and row["provider"] == "openai" and row["status"] == "success"
    assert client.get(f"/api/plans?user_id={user}").get_json()["plans"] == []


def test_an_invalid_draft_is_repaired_with_the_validation_errors(
    client: FlaskClient, user: str, openai: FakeOpenAI
) -> None:
    with_openai(client, user, openai)
    openai.script(
        completion("Here you go:\n```json\n" + json.dumps(UNKNOWN_PROVIDER) + "\n```"),
        completion(json.dumps(VALID_PLAN)),
    )
    body = resp_json(draft(client, user))
    first, second = body["attempts"]
    assert first["valid"] is False and second["valid"] is True
    assert first["errors"][0]["code"] == "unknown_provider" and "slack" in first["errors"][0]["message"]
    assert body["usage"]["total_tokens"] == 2200
    repair = openai.requests[1].json["messages"]
    assert repair[-2]["role"] == "assistant" and "slack" in repair[-2]["content"]  # the answer it gave
    assert repair[-1]["role"] == "user" and first["errors"][0]["message"] in repair[-1]["content"]


def test_a_model_that_never_produces_a_valid_plan_is_422_with_every_attempt(
    client: FlaskClient, user: str, openai: FakeOpenAI
) -> None:
    with_openai(client, user, openai)
    openai.script(
        completion("I cannot do that."), completion(json.dumps(UNKNOWN_PROVIDER)), completion(json.dumps(BAD_PARAMS))
    )
    response = draft(client, user, save=True)
    assert response.status_code == 422
    error = resp_json(response)["error"]
    assert error["code"] == "draft_invalid"
    attempts = error["details"]["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3] and not any(a["valid"] for a in attempts)  # 1 + 2 repairs
    assert [a["errors"][0]["code"] for a in attempts] == ["not_json", "unknown_provider", "invalid_params"]
    assert error["details"]["errors"] == attempts[-1]["errors"] and "params" in error["message"]
    document = resp_json(client.get("/api/openapi.json"))
    assert document["paths"]["/api/plans/draft"]["post"]["responses"]["422"]
    check(document, "Error", resp_json(response))
    assert len(openai.requests) == 3
    assert client.get(f"/api/plans?user_id={user}").get_json()["plans"] == []  # nothing saved


def test_planner_max_repairs_is_a_setting(session_db: str, tmp_path: Path, fernet_key: str, user: str) -> None:
    app = make_app(session_db, tmp_path, (fernet_key,), planner_max_repairs=0)
    try:
        client = app.test_client()
        with FakeOpenAI() as fake:
            with_openai(client, user, fake)
            fake.script(completion(json.dumps(UNKNOWN_PROVIDER)))
            response = draft(client, user)
            assert response.status_code == 422 and len(resp_json(response)["error"]["details"]["attempts"]) == 1
            assert len(fake.requests) == 1
    finally:
        app.db.close()


def test_no_credential_value_is_ever_sent_to_the_model(client: FlaskClient, user: str, openai: FakeOpenAI) -> None:
    values = {
        "openai": {"api_key": OPENAI_KEY, "base_url": openai.base_url},
        "groq": {"api_key": "gsk_groqsecretvalue0123456789"},
        "webhook": {
            "bearer_token": "bearer-secret-value-42",
            "header:X-Api-Key": "xkey-9f8e7d6c",
            "hmac_secret": "hm4c-s3cret",
        },
    }
    for provider, credentials in values.items():
        store_credentials(client, user, provider, credentials)
    openai.script(completion(json.dumps(BAD_PARAMS)), completion(json.dumps(VALID_PLAN)))
    assert draft(client, user).status_code == 200
    assert len(openai.requests) == 2
    secrets = [value for credentials in values.values() for value in credentials.values()]
    for request in openai.requests:
        body = request.body.decode()
        assert [secret for secret in secrets if secret in body] == []
    system = openai.requests[0].json["messages"][0]["content"]
    for type_name in ("api_key", "base_url", "bearer_token", "header:X-Api-Key", "hmac_secret"):
        assert type_name in system  # the types are named, so the model can use them


def test_missing_credentials_are_409_naming_what_is_missing(client: FlaskClient, user: str, openai: FakeOpenAI) -> None:
    """409 since issue 8 item 3 (was 400): the request is valid, the user's stored state lacks a key."""
    response = draft(client, user)
    assert response.status_code == 409
    error = resp_json(response)["error"]
    assert error["code"] == "missing_credentials" and "api_key" in error["message"] and "openai" in error["message"]
    with_openai(client, user, openai)
    response = draft(client, user, provider="groq")
    assert response.status_code == 409 and "'groq'" in resp_json(response)["error"]["message"]
    assert draft(client, user, provider="slack").status_code == 400
    assert client.post("/api/plans/draft", json={"user_id": user}).status_code == 400  # no prompt
    assert openai.requests == []


def test_the_default_provider_is_the_first_with_a_key_and_anthropic_uses_a_tool(client: FlaskClient, user: str) -> None:
    with FakeAnthropic() as fake:
        store_credentials(
            client, user, "anthropic", {"api_key": "sk-ant-planner-key-0123456789", "base_url": fake.base_url}
        )
        fake.script(tool_use(VALID_PLAN))
        body = resp_json(draft(client, user))
        assert body["provider"] == "anthropic" and body["plan"]["steps"] == STORED_STEPS
        assert body["usage"] == {"input_tokens": 900, "output_tokens": 80}
        sent = fake.requests[-1].json
        assert sent["tool_choice"] == {"type": "tool", "name": "submit_plan"}
        assert sent["tools"][0]["input_schema"]["required"] == ["name", "steps"]
        assert "Pilot" in sent["system"] and sent["max_tokens"] >= 4096


def test_groq_uses_json_mode(client: FlaskClient, user: str, openai: FakeOpenAI) -> None:
    store_credentials(client, user, "groq", {"api_key": "gsk_planner0123456789abcdef", "base_url": openai.base_url})
    openai.script(completion(json.dumps(VALID_PLAN), model="llama-3.3-70b-versatile"))
    body = resp_json(draft(client, user, model="llama-3.3-70b-versatile"))
    assert body["provider"] == "groq" and openai.requests[-1].json["response_format"] == {"type": "json_object"}


def test_a_failing_model_server_is_502(client: FlaskClient, user: str, openai: FakeOpenAI) -> None:
    with_openai(client, user, openai)
    openai.script(SERVER_ERROR, SERVER_ERROR, SERVER_ERROR)
    response = draft(client, user)
    assert response.status_code == 502
    error = resp_json(response)["error"]
    assert error["code"] == "model_failed" and error["details"]["error"]["code"] == "upstream_error"
    assert len(openai.requests) == 3  # the engine's retries, as for any step


def test_save_stores_the_draft_disabled_with_its_provenance(client: FlaskClient, user: str, openai: FakeOpenAI) -> None:
    with_openai(client, user, openai)
    openai.script(completion(json.dumps(BAD_PARAMS)), completion(json.dumps(VALID_PLAN)))
    response = draft(client, user, save=True, name="Hello plan")
    assert response.status_code == 201
    body = resp_json(response)
    plan = body["plan"]
    assert response.headers["Location"] == f"/api/plans/{plan['id']}" and body["saved"] is True
    assert plan["enabled"] is False and plan["name"] == "Hello plan" and plan["original_prompt"] == PROMPT
    provenance = plan["provenance"]
    assert {k: provenance[k] for k in ("provider", "model", "attempts")} == {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "attempts": 2,
    }
    assert provenance["drafted_at"].endswith("+00:00")
    document = resp_json(client.get("/api/openapi.json"))
    check(document, "DraftAnswer", body)
    stored = resp_json(client.get(f"/api/plans/{plan['id']}?user_id={user}"))
    assert stored["provenance"] == provenance and stored["enabled"] is False
    check(document, "Plan", stored)
    (job,) = resp_json(client.get(f"/api/scheduler/jobs?user_id={user}"))["jobs"]
    assert job["plan_id"] == plan["id"] and job["next_run_time"] is None  # fires only once a person resumes it


def test_a_draft_dry_run_connects_to_nothing_but_the_model(
    app: PilotApp, client: FlaskClient, user: str, openai: FakeOpenAI
) -> None:
    with WebhookReceiver() as receiver:
        plan = json.loads(json.dumps(VALID_PLAN).replace("https://hooks.example.com/team", receiver.url + "/team"))
        with_openai(client, user, openai)
        openai.script(completion(json.dumps(plan)))
        body = resp_json(draft(client, user, dry_run=True))
        greeting, post = body["dry_run"]["steps"]
        assert greeting["status"] == "success" and greeting["result"]["data"] == "Hello team"
        assert post["status"] == "would_run" and post["params"]["json"] == {"text": "Hello team"}
        assert receiver.connections == 0 and receiver.requests == []
    check(resp_json(client.get("/api/openapi.json")), "DraftAnswer", body)
    assert len(openai.requests) == 1
    assert len(model_logs(app, user)) == 1  # the model call's row; the dry run wrote none


def test_a_saved_draft_with_an_idempotency_key_is_drafted_and_stored_once(
    client: FlaskClient, user: str, openai: FakeOpenAI
) -> None:
    """Issue 11's Idempotency-Key on POST /api/plans/draft: one model call, one plan, the first answer replayed."""
    with_openai(client, user, openai)
    openai.script(completion(json.dumps(VALID_PLAN)))
    headers = {"Idempotency-Key": "draft-0001"}
    body = {"user_id": user, "prompt": PROMPT, "save": True}
    first = client.post("/api/plans/draft", json=body, headers=headers)
    again = client.post("/api/plans/draft", json=body, headers=headers)
    assert first.status_code == again.status_code == 201, again.get_data(as_text=True)
    assert again.headers["Idempotent-Replayed"] == "true" and resp_json(again) == resp_json(first)
    calls = [r for r in openai.requests if r.path.endswith("/chat/completions")]
    assert len(calls) == 1
    assert len(resp_json(client.get(f"/api/plans?user_id={user}"))["plans"]) == 1
