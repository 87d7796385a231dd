"""The execution engine end to end: real database, real loopback upstreams, the HTTP API."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from pilot.application import PilotApp
from pilot.data import store
from tests.conftest import resp_json
from tests.fake_upstreams import (
    ECHO_KEY,
    RATE_LIMITED,
    SERVER_ERROR,
    UNAUTHORIZED,
    FakeOpenAI,
    WebhookReceiver,
)

API_KEY = "sk-test-0123456789abcdefghijklmn"


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as fake:
        yield fake


def store_openai(client: FlaskClient, user: str, fake: FakeOpenAI, key: str = API_KEY) -> None:
    response = client.post(
        "/api/provider-credentials/openai",
        json={"user_id": user, "credentials": {"api_key": key, "base_url": fake.base_url}},
    )
    assert response.status_code == 200


def execute(client: FlaskClient, user: str, step: dict[str, Any], step_results: dict | None = None):
    return client.post("/api/execute-step", json={"user_id": user, "step": step, "step_results": step_results or {}})


def logs(client: FlaskClient, user: str, **filters: Any) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    response = client.get(f"/api/logs?user_id={user}&{query}")
    assert response.status_code == 200
    return resp_json(response)["logs"]


CHAT = {"provider": "openai", "action": "chat_completion", "params": {"prompt": "Hello", "model": "gpt-4o-mini"}}


def test_logic_transform_runs_and_writes_one_log_row(client: FlaskClient, user: str) -> None:
    response = execute(client, user, {"provider": "logic", "action": "transform", "params": {"template": "Test 3"}})
    assert response.status_code == 200
    assert resp_json(response)["success"] is True and resp_json(response)["data"] == "Test 3"
    rows = logs(client, user)
    assert len(rows) == 1 and rows[0]["provider"] == "logic" and rows[0]["status"] == "success"
    assert rows[0]["input"] == {"template": "Test 3"}


def test_references_to_earlier_results_keep_their_type(client: FlaskClient, user: str) -> None:
    earlier = {"0": {"success": True, "data": {"n": 3, "words": ["a", "b"]}}}
    step = {
        "provider": "logic",
        "action": "transform",
        "params": {"template": {"count": '{{ step_results."0".data.n }}', "text": 'n={{ step_results."0".data.n }}'}},
    }
    response = execute(client, user, step, earlier)
    assert resp_json(response)["data"] == {"count": 3, "text": "n=3"}


@pytest.mark.parametrize(
    ("template", "code"),
    [
        ("{{ steps.nothing.data }}", "missing_reference"),
        ("{{ ''.__class__ }}", "missing_reference"),
        ("{% for x in y %}{% endfor %}", "template_error"),
        ("{{ __import__('os') }}", "template_error"),
    ],
)
def test_bad_or_hostile_templates_are_step_errors(client: FlaskClient, user: str, template: str, code: str) -> None:
    response = execute(client, user, {"provider": "logic", "action": "transform", "params": {"template": template}})
    assert response.status_code == 200
    assert resp_json(response)["success"] is False and resp_json(response)["error"]["code"] == code
    assert logs(client, user)[0]["error_code"] == code


@pytest.mark.parametrize(
    ("step", "needle"),
    [
        ({"provider": "nosuch", "action": "x", "params": {}}, "nosuch"),
        ({"provider": "logic", "action": "nosuch", "params": {}}, "nosuch"),
        (
            {"provider": "openai", "action": "chat_completion", "params": {"prompt": "x", "temperature": 5}},
            "temperature",
        ),
        ({"provider": "logic", "params": {}}, "action"),
        ("not an object", "step"),
    ],
)
def test_invalid_steps_are_400_naming_the_problem(client: FlaskClient, user: str, step: Any, needle: str) -> None:
    response = execute(client, user, step)
    assert response.status_code == 400
    assert needle in resp_json(response)["error"]["message"]
    assert logs(client, user) == []


def test_missing_credentials_name_the_provider_and_type_only(client: FlaskClient, user: str) -> None:
    response = execute(client, user, CHAT)
    assert response.status_code == 200
    assert resp_json(response)["error"]["code"] == "missing_credentials"
    message = resp_json(response)["error"]["message"]
    assert message == "no api_key stored for provider 'openai'"  # the engine names no route of the HTTP layer


def test_openai_step_against_loopback_server(client: FlaskClient, user: str, openai: FakeOpenAI) -> None:
    store_openai(client, user, openai)
    response = execute(client, user, CHAT)
    assert resp_json(response)["success"] is True, response.json
    assert resp_json(response)["data"]["text"] == "echo: Hello"
    assert resp_json(response)["metadata"]["usage"]["total_tokens"] == 10
    assert openai.requests[-1].header("Authorization") == f"Bearer {API_KEY}"


def test_rate_limit_is_retried_after_retry_after(client: FlaskClient, user: str, openai: FakeOpenAI) -> None:
    store_openai(client, user, openai)
    openai.script(RATE_LIMITED)
    started = time.monotonic()
    response = execute(client, user, CHAT)
    assert resp_json(response)["success"] is True
    assert resp_json(response)["metadata"]["attempts"] == 2 and len(openai.requests) == 2
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured
    assert logs(client, user)[0]["attempt"] == 2


def test_server_errors_retry_up_to_the_limit_but_401_never(client: FlaskClient, user: str, openai: FakeOpenAI) -> None:
    store_openai(client, user, openai)
    openai.script(SERVER_ERROR, SERVER_ERROR, SERVER_ERROR)
    step = {**CHAT, "retry": {"max_attempts": 3, "backoff_s": 0.01}}
    response = execute(client, user, step)
    assert resp_json(response)["error"]["code"] == "upstream_error" and len(openai.requests) == 3
    openai.requests.clear()
    openai.script(UNAUTHORIZED)
    response = execute(client, user, step)
    assert resp_json(response)["error"]["code"] == "invalid_credentials" and len(openai.requests) == 1


def test_keys_echoed_by_upstream_are_redacted_everywhere(
    client: FlaskClient, user: str, openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    odd_key = "plain-secret-without-known-shape-42"
    store_openai(client, user, openai, key=odd_key)
    openai.script(ECHO_KEY)
    response = execute(client, user, CHAT)
    assert resp_json(response)["success"] is False
    assert odd_key not in json.dumps(response.json)
    assert "[REDACTED]" in resp_json(response)["error"]["message"]
    assert odd_key not in json.dumps(logs(client, user))
    assert all(odd_key not in record.getMessage() for record in caplog.records)


def test_ssrf_blocked_webhook_makes_no_connection(client: FlaskClient, user: str, receiver: WebhookReceiver) -> None:
    port = receiver.url.rsplit(":", 1)[1]
    for url in (
        f"http://127.0.0.2:{port}/",
        f"http://[::1]:{port}/",
        "http://169.254.169.254/latest/meta-data/",
        f"http://2130706434:{port}/",
    ):
        step = {"provider": "webhook", "action": "request", "params": {"url": url, "json": {"x": 1}}}
        response = execute(client, user, step)
        assert response.status_code == 200
        assert resp_json(response)["error"]["code"] == "ssrf_blocked", (url, response.json)
    assert receiver.requests == []


def test_webhook_url_is_checked_after_rendering(client: FlaskClient, user: str, receiver: WebhookReceiver) -> None:
    port = receiver.url.rsplit(":", 1)[1]
    earlier = {"target": {"data": f"http://127.0.0.3:{port}/"}}
    step = {"provider": "webhook", "action": "request", "params": {"url": "{{ steps.target.data }}"}}
    assert resp_json(execute(client, user, step, earlier))["error"]["code"] == "ssrf_blocked"
    assert receiver.requests == []


def run_plan(client: FlaskClient, user: str, steps: list[dict[str, Any]], wait: bool = True) -> dict[str, Any]:
    plan = client.post("/api/plans", json={"user_id": user, "name": "p", "steps": steps})
    assert plan.status_code == 201, plan.json
    suffix = "?wait=true" if wait else ""
    response = client.post(f"/api/plans/{resp_json(plan)['id']}/run{suffix}", json={"user_id": user})
    assert response.status_code == (200 if wait else 202), response.json
    return resp_json(response)


def test_three_step_plan_logic_llm_webhook(
    client: FlaskClient, user: str, openai: FakeOpenAI, receiver: WebhookReceiver
) -> None:
    store_openai(client, user, openai)
    steps = [
        {"id": "topic", "provider": "logic", "action": "transform", "params": {"template": "the weather"}},
        {
            "id": "ask",
            "provider": "openai",
            "action": "chat_completion",
            "params": {"prompt": "Summarise {{ steps.topic.data }}"},
        },
        {
            "id": "notify",
            "provider": "webhook",
            "action": "request",
            "params": {"url": receiver.url + "/hook", "json": {"summary": "{{ steps.ask.data.text }}"}},
        },
    ]
    run = run_plan(client, user, steps)
    assert run["status"] == "success", run
    assert receiver.requests[-1].json == {"summary": "echo: Summarise the weather"}
    assert [entry["status"] for entry in run["step_results"]] == ["success"] * 3
    assert [log["step_id"] for log in run["logs"]] == ["topic", "ask", "notify"]
    fetched = resp_json(client.get(f"/api/runs/{run['id']}?user_id={user}"))
    assert fetched["status"] == "success" and len(fetched["logs"]) == 3
    listed = resp_json(client.get(f"/api/plans/{run['plan_id']}/runs?user_id={user}"))["runs"]
    assert [r["id"] for r in listed] == [run["id"]]
    assert len(logs(client, user, run_id=run["id"])) == 3


def test_background_run_is_queued_then_finishes(client: FlaskClient, user: str) -> None:
    steps = [{"provider": "logic", "action": "transform", "params": {"template": "x"}}]
    queued = run_plan(client, user, steps, wait=False)
    assert queued["status"] == "queued"
    deadline = time.monotonic() + 10
    status = queued["status"]
    while status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        status = resp_json(client.get(f"/api/runs/{queued['id']}?user_id={user}"))["status"]
    assert status == "success"


def test_when_skips_and_continue_on_error_goes_on(client: FlaskClient, user: str) -> None:
    steps: list[dict[str, Any]] = [
        {"id": "a", "provider": "logic", "action": "transform", "params": {"template": {"go": False}}},
        {"id": "b", "provider": "logic", "action": "transform", "params": {"template": "x"}, "when": "steps.a.data.go"},
        {
            "id": "c",
            "provider": "logic",
            "action": "extract",
            "params": {"expression": "a["},
            "continue_on_error": True,
        },
        {"id": "d", "provider": "logic", "action": "transform", "params": {"template": "done"}},
    ]
    run = run_plan(client, user, steps)
    assert [s["status"] for s in run["step_results"]] == ["success", "skipped", "error", "success"]
    assert run["status"] == "success" and len(run["logs"]) == 3


def test_failed_step_stops_the_run(client: FlaskClient, user: str) -> None:
    steps = [
        {"id": "a", "provider": "logic", "action": "transform", "params": {"template": "{{ steps.none.data }}"}},
        {"id": "b", "provider": "logic", "action": "transform", "params": {"template": "never"}},
    ]
    run = run_plan(client, user, steps)
    assert run["status"] == "error" and "step a failed" in run["error"]
    assert [s["id"] for s in run["step_results"]] == ["a"]


def test_runs_and_logs_are_invisible_to_other_users(client: FlaskClient, user: str, other_user: str) -> None:
    run = run_plan(client, user, [{"provider": "logic", "action": "transform", "params": {"template": "x"}}])
    assert client.get(f"/api/runs/{run['id']}?user_id={other_user}").status_code == 404
    assert client.get(f"/api/plans/{run['plan_id']}/runs?user_id={other_user}").status_code == 404
    assert client.post(f"/api/plans/{run['plan_id']}/run", json={"user_id": other_user}).status_code == 404
    assert logs(client, other_user) == []
    assert resp_json(client.get(f"/api/metrics/providers?user_id={other_user}"))["providers"] == []


def test_provider_metrics_on_seeded_data(app: PilotApp, client: FlaskClient, user: str) -> None:
    db = app.db
    with db.transaction(user) as cur:
        for latency in range(1, 21):  # 1..20 ms, every fifth an error
            status = "error" if latency % 5 == 0 else "success"
            store.insert_log(
                cur,
                user,
                {"provider": "openai", "action": "chat_completion", "status": status, "latency_ms": float(latency)},
            )
        store.insert_log(
            cur, user, {"provider": "logic", "action": "transform", "status": "success", "latency_ms": 2.0}
        )
    rows = {r["provider"]: r for r in resp_json(client.get(f"/api/metrics/providers?user_id={user}"))["providers"]}
    assert rows["openai"]["total_executions"] == 20 and rows["openai"]["success_rate"] == 80.0
    assert rows["openai"]["avg_latency_ms"] == 10.5 and rows["openai"]["max_latency_ms"] == 20.0
    assert rows["openai"]["p95_latency_ms"] == pytest.approx(19.05)
    assert rows["logic"]["success_rate"] == 100.0
    trends = resp_json(client.get(f"/api/metrics/errors?user_id={user}"))["trends"]
    openai_trend = [t for t in trends if t["provider"] == "openai"]
    assert openai_trend[0]["errors"] == 4 and openai_trend[0]["error_rate"] == 20.0


def test_providers_endpoints(client: FlaskClient) -> None:
    names = resp_json(client.get("/api/providers"))["providers"]
    assert {"openai", "groq", "anthropic", "webhook", "logic"} <= set(names)
    described = resp_json(client.get("/api/providers/openai"))
    assert "chat_completion" in described["actions"] and "api_key" in described["credential_types"]
    assert client.get("/api/providers/nosuch").status_code == 404


def test_credential_check_endpoint(client: FlaskClient, user: str, openai: FakeOpenAI) -> None:
    assert client.post(f"/api/provider-credentials/openai/test?user_id={user}").status_code == 404
    store_openai(client, user, openai)
    response = client.post(f"/api/provider-credentials/openai/test?user_id={user}")
    assert response.status_code == 200 and resp_json(response)["success"] is True
    assert openai.requests[-1].path == "/v1/models"


def test_checklist_load_test_ten_concurrent_requests_over_http(app: PilotApp) -> None:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/api/execute-step"
    tag = f"load_{time.time_ns()}"

    def call(i: int) -> bool:
        body = {
            "step": {"provider": "logic", "action": "transform", "params": {"template": f"Test {i}"}},
            "user_id": f"{tag}_{i}",
            "step_results": {},
        }
        response = requests.post(url, json=body, timeout=10)
        return response.status_code == 200 and response.json()["data"] == f"Test {i}"

    try:
        with ThreadPoolExecutor(max_workers=10) as pool:
            results = list(pool.map(call, range(10)))
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert sum(results) == 10
    db = app.db
    for i in range(10):
        with db.transaction(f"{tag}_{i}") as cur:
            assert len(store.list_logs(cur, f"{tag}_{i}", limit=10, offset=0)) == 1


def test_deleting_a_plan_removes_its_runs_and_keeps_its_logs(client: FlaskClient, user: str) -> None:
    run = run_plan(client, user, [{"provider": "logic", "action": "transform", "params": {"template": "x"}}])
    assert client.delete(f"/api/plans/{run['plan_id']}?user_id={user}").status_code == 204
    assert client.get(f"/api/runs/{run['id']}?user_id={user}").status_code == 404
    kept = logs(client, user)
    assert len(kept) == 1 and kept[0]["plan_id"] is None and kept[0]["run_id"] is None
