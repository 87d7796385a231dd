"""Whole runs through the HTTP API: their input, and how every failure ends (never a run left running).

Each case runs twice: ``?wait=true`` (the answer is the finished run) and 202 then polling
``GET /api/runs/<id>`` until the run is no longer queued or running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from flask.testing import FlaskClient

from execution_engine import ExecutionEngine
from pilot.application import PilotApp
from pilot.data import store
from provider_registry import ActionSpec, ExecutionContext, Provider, ProviderRegistry, ProviderResult
from providers.logic import LogicProvider
from tests.conftest import resp_json
from tests.fake_upstreams import Reply, WebhookReceiver

ACTIVE = ("queued", "running")


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as fake:
        yield fake


def finished_run(client: FlaskClient, user: str, run: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
    """``run`` as ``GET /api/runs/<id>`` shows it once it left queued/running (or when ``timeout`` s passed)."""
    deadline = time.monotonic() + timeout
    current = resp_json(client.get(f"/api/runs/{run['id']}?user_id={user}"))
    while current["status"] in ACTIVE and time.monotonic() < deadline:
        time.sleep(0.05)
        current = resp_json(client.get(f"/api/runs/{run['id']}?user_id={user}"))
    return current


def run_through_api(
    client: FlaskClient, user: str, steps: list[dict[str, Any]], mode: str, input_: Any = None
) -> dict[str, Any]:
    """Create a plan of ``steps`` and run it with ``input_``; the finished run with its logs."""
    plan = client.post("/api/plans", json={"user_id": user, "name": "p", "steps": steps})
    assert plan.status_code == 201, plan.json
    body: dict[str, Any] = {"user_id": user}
    if input_ is not None:
        body["input"] = input_
    if mode == "wait":
        response = client.post(f"/api/plans/{resp_json(plan)['id']}/run?wait=true", json=body)
        assert response.status_code == 200, response.json
        return resp_json(response)
    response = client.post(f"/api/plans/{resp_json(plan)['id']}/run", json=body)
    assert response.status_code == 202, response.json
    assert resp_json(response)["status"] == "queued"
    return finished_run(client, user, resp_json(response))


MODES = pytest.mark.parametrize("mode", ["wait", "poll"])


# --- input (issue 7, item 13) ----------------------------------------------------


@MODES
def test_a_runs_input_reaches_its_steps(client: FlaskClient, user: str, mode: str) -> None:
    steps = [
        {"id": "greet", "provider": "logic", "action": "transform", "params": {"template": "hi {{ input.name }}"}},
        {"id": "count", "provider": "logic", "action": "transform", "params": {"template": "{{ input.n }}"}},
    ]
    run = run_through_api(client, user, steps, mode, input_={"name": "Ada", "n": 3})
    assert run["status"] == "success", run
    assert [s["result"]["data"] for s in run["step_results"]] == ["hi Ada", 3]
    assert run["input"] == {"name": "Ada", "n": 3}  # kept with the run row


@MODES
def test_a_run_without_input_sees_an_empty_one(client: FlaskClient, user: str, mode: str) -> None:
    steps = [{"id": "a", "provider": "logic", "action": "transform", "params": {"template": "{{ input.name }}"}}]
    run = run_through_api(client, user, steps, mode)
    assert run["status"] == "error" and run["step_results"][0]["result"]["error"]["code"] == "missing_reference"
    assert run["input"] == {}


# --- failures end the step and the run (issue 7, item 3) -------------------------


def webhook_step(url: str) -> dict[str, Any]:
    return {
        "id": "notify",
        "provider": "webhook",
        "action": "request",
        "params": {"url": url, "json": {"n": 1}},
        "retry": {"max_attempts": 1},
    }


@MODES
def test_a_nul_in_an_upstream_error_fails_the_step_with_its_log_row(
    client: FlaskClient, user: str, receiver: WebhookReceiver, mode: str
) -> None:
    receiver.script(Reply(500, json={"error": {"message": "broken\u0000here", "detail\u0000key": "x\u0000y"}}))
    run = run_through_api(client, user, [webhook_step(receiver.url + "/hook")], mode)
    assert len(receiver.requests) == 1  # the webhook was delivered ...
    assert run["status"] == "error", run
    assert [s["status"] for s in run["step_results"]] == ["error"]
    assert [(log["step_id"], log["status"]) for log in run["logs"]] == [("notify", "error")]  # ... and logged
    message = run["logs"][0]["error"]
    assert "broken" in message and "here" in message and "\u0000" not in message
    assert "\u0000" not in repr(run)  # nowhere in the run, its results or its logs


def wrap(levels: int, inner: str) -> str:
    """A JMESPath multiselect that wraps ``inner`` in ``levels`` one-element lists."""
    return "[" * levels + inner + "]" * levels


@MODES
def test_a_result_nested_a_thousand_deep_fails_the_step_with_its_log_row(
    client: FlaskClient, user: str, mode: str
) -> None:
    # Each expression stays under the 1,000-character limit; together they nest ~1,300 deep.
    literal = "`" + "[" * 400 + "]" * 400 + "`"
    steps = [
        {"id": "a", "provider": "logic", "action": "extract", "params": {"expression": literal}},
        *(
            {
                "id": name,
                "provider": "logic",
                "action": "extract",
                "params": {"expression": wrap(300, f"steps.{inner}.data")},
            }
            for name, inner in (("b", "a"), ("c", "b"), ("d", "c"))
        ),
    ]
    run = run_through_api(client, user, steps, mode)
    assert run["status"] == "error", run
    results = run["step_results"]
    assert results[-1]["status"] == "error" and all(s["status"] == "success" for s in results[:-1])
    # Every step that ran has exactly one log row, the failed one included.
    assert [(log["step_id"], log["status"]) for log in run["logs"]] == [(s["id"], s["status"]) for s in results]
    assert run["error"].startswith(f"step {results[-1]['id']} failed")


# --- a provider bug inside a step (issue 7, item 3) ------------------------------


class ReturnsBytes(Provider):
    """A buggy provider: its result is not JSON, so PostgreSQL cannot store it."""

    name = "returns_bytes"
    description = "test double of a provider bug"
    actions: ClassVar[dict[str, ActionSpec]] = {"go": ActionSpec("return bytes", {"type": "object"})}

    def execute(
        self, action: str, params: dict[str, Any], credentials: dict[str, str], context: ExecutionContext
    ) -> ProviderResult:
        return ProviderResult.ok({"raw": b"\x00\x01"})

    def test_credentials(self, credentials: dict[str, str], context: ExecutionContext) -> ProviderResult:
        return ProviderResult.ok()


def test_a_result_postgres_cannot_store_fails_only_its_step_with_its_log_row(app: PilotApp, user: str) -> None:
    registry = ProviderRegistry()
    registry.register(ReturnsBytes)
    registry.register(LogicProvider)
    engine = ExecutionEngine(app.settings, app.db, app.vault, registry)
    steps = [
        {"id": "bug", "provider": "returns_bytes", "action": "go", "params": {}, "continue_on_error": True},
        {"id": "after", "provider": "logic", "action": "transform", "params": {"template": "still runs"}},
    ]
    with app.db.transaction(user) as cur:
        plan = store.insert_plan(cur, user, {"name": "p", "steps": steps, "timezone": "UTC", "enabled": True})
    try:
        run = engine.create_run(user, plan["id"], "manual")
        assert run is not None
        finished = engine.run(user, run["id"])
    finally:
        engine.shutdown(wait=True)
    assert finished is not None and finished["status"] == "success"
    assert [(s["id"], s["status"]) for s in finished["step_results"]] == [("bug", "error"), ("after", "success")]
    assert finished["step_results"][0]["result"]["error"]["code"] == "result_unstorable"
    with app.db.transaction(user) as cur:
        logged = store.run_logs(cur, user, run["id"])
    assert [(row["step_id"], row["status"], row["error_code"]) for row in logged] == [
        ("bug", "error", "result_unstorable"),
        ("after", "success", None),
    ]
