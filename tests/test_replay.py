"""Replay of a run from a step (issue 11 item 3): POST /api/runs/<id>/replay, plan versions.

Real PostgreSQL through the request path (RLS applies), a loopback webhook receiver and a
loopback OpenAI fake counting what reaches them.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from flask.testing import FlaskClient

from database import MIGRATIONS_DIR
from pilot.application import PilotApp
from pilot.data import store
from pilot.errors import PilotError
from pilot.execution.replay import not_whole, replayed_steps
from tests.conftest import make_app, resp_json
from tests.fake_upstreams import FakeOpenAI, Reply, WebhookReceiver
from tests.llm_support import STEP_COST, chat, llm_app, store_key

REPLAY_MIGRATION = MIGRATIONS_DIR / "016_plan_versions_and_replay.sql"


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as fake:
        yield fake


@pytest.fixture
def llm(session_db: str, tmp_path: Path, fernet_key: str, openai: FakeOpenAI) -> Iterator[PilotApp]:
    app = llm_app(session_db, tmp_path, fernet_key, openai)
    yield app
    app.db.close()


def closed_port_url() -> str:
    """A loopback URL nothing listens on: a webhook step sent there fails (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/nobody"


def make_plan(client: FlaskClient, user: str, steps: list[dict[str, Any]], name: str = "replayed") -> int:
    response = client.post("/api/plans", json={"user_id": user, "name": name, "steps": steps})
    assert response.status_code == 201, response.get_data(as_text=True)
    return int(resp_json(response)["id"])


def run_plan(client: FlaskClient, user: str, plan_id: int) -> dict[str, Any]:
    response = client.post(f"/api/plans/{plan_id}/run?wait=true", json={"user_id": user})
    assert response.status_code == 200, response.get_data(as_text=True)
    return resp_json(response)


def replay(client: FlaskClient, user: str, run_id: int, expect: int = 200, **body: Any) -> dict[str, Any]:
    response = client.post(f"/api/runs/{run_id}/replay?wait=true", json={"user_id": user, **body})
    assert response.status_code == expect, response.get_data(as_text=True)
    return resp_json(response)


def finished(client: FlaskClient, user: str, run: dict[str, Any]) -> dict[str, Any]:
    """The run once it has ended (polled for up to 20 s)."""
    deadline = time.monotonic() + 20
    while run["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        run = resp_json(client.get(f"/api/runs/{run['id']}?user_id={user}"))
    return run


def webhook(step_id: str, url: str, payload: Any = None, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"url": url, "json": payload if payload is not None else {"step": step_id}}
    return {"id": step_id, "provider": "webhook", "action": "request", "params": params, **extra}


def logic(step_id: str, template: Any, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "provider": "logic", "action": "transform", "params": {"template": template}, **extra}


def spent(client: FlaskClient, user: str) -> float:
    return float(resp_json(client.get(f"/api/budget?user_id={user}"))["spent_usd"])


# --- replay from the failed step ---------------------------------------------------------


def test_replay_from_the_failed_step_reuses_earlier_results_with_no_call_and_no_cost(
    llm: PilotApp, user: str, openai: FakeOpenAI, receiver: WebhookReceiver
) -> None:
    client = llm.test_client()
    store_key(client, user)
    no_retry = {"retry": {"max_attempts": 1, "backoff_s": 0}}
    deliver = {"answer": "{{ steps.ask.data.text }}", "first": "{{ steps.notify.data.json }}"}
    steps = [
        webhook("notify", receiver.url + "/first"),
        {"id": "ask", **chat(prompt="summarize")},
        webhook("deliver", closed_port_url(), deliver, **no_retry),
    ]
    plan_id = make_plan(client, user, steps)
    original = run_plan(client, user, plan_id)
    assert original["status"] == "error" and "deliver" in original["error"]
    assert (len(receiver.requests), len(openai.requests)) == (1, 1)
    spent_before = spent(client, user)
    assert spent_before == pytest.approx(float(STEP_COST))

    fixed = replay(client, user, original["id"], params={"deliver": {"url": receiver.url + "/second"}})

    assert fixed["status"] == "success", fixed
    assert (fixed["trigger"], fixed["replayed_from"]) == ("replay", original["id"])
    # The reused steps made no call: one new request, the fixed step's, and none to the model.
    assert len(openai.requests) == 1
    assert [request.path for request in receiver.requests] == ["/first", "/second"]
    # ... and the re-executed step got the recorded results of the earlier steps.
    answer = original["step_results"][1]["result"]["data"]["text"]
    assert receiver.requests[1].json == {"answer": answer, "first": {"received": True, "method": "POST"}}
    # No cost, no log rows for reused steps: they are marked in step_results instead.
    assert [log["step_id"] for log in fixed["logs"]] == ["deliver"]
    assert fixed["usage"]["cost_usd"] == 0 and fixed["usage"]["llm_steps"] == 0
    assert spent(client, user) == pytest.approx(spent_before)
    reused = fixed["step_results"][:2]
    assert [entry["reused_from_run"] for entry in reused] == [original["id"], original["id"]]
    assert [entry["result"] for entry in reused] == [entry["result"] for entry in original["step_results"][:2]]
    assert "reused_from_run" not in fixed["step_results"][2]

    shown = resp_json(client.get(f"/api/runs/{fixed['id']}?user_id={user}"))
    assert (shown["trigger"], shown["replayed_from"], shown["plan_version"]) == ("replay", original["id"], 1)
    assert shown["replay"]["from_index"] == 2 and shown["replay"]["from_step"] == "deliver"
    listed = resp_json(client.get(f"/api/runs?user_id={user}&trigger=replay"))["runs"]
    assert [(r["id"], r["replayed_from"]) for r in listed] == [(fixed["id"], original["id"])]


def test_replay_from_an_interrupted_step_by_default(client: FlaskClient, app: PilotApp, user: str) -> None:
    plan_id = make_plan(client, user, [logic("a", "one"), logic("b", "{{ steps.a.data }} two")])
    done = run_plan(client, user, plan_id)
    # As a process that died mid-step leaves it: step b in flight, the run interrupted.
    entries = [done["step_results"][0], {"index": 1, "id": "b", "status": "running"}]
    with app.db.transaction(user) as cur:
        cur.execute(
            "UPDATE plan_runs SET status = 'interrupted', step_results = %s WHERE id = %s",
            (store.PgJson(entries), done["id"]),
        )
    again = replay(client, user, done["id"])
    assert again["status"] == "success" and again["replay"]["from_index"] == 1
    assert again["step_results"][1]["result"]["data"] == "one two"


def test_params_override_is_validated_like_a_plan_save(client: FlaskClient, user: str) -> None:
    plan_id = make_plan(client, user, [logic("a", "ok"), logic("b", "{{ input.missing.x }}")])
    failed = run_plan(client, user, plan_id)
    assert failed["status"] == "error"
    # 400: the body's shape (the model); 409: a well-formed body that does not fit this run's steps
    cases: list[tuple[Any, int, str]] = [
        ({"b": {"nope": 1}}, 409, "params.b.params: Additional properties"),  # not a param of logic.transform
        ({"b": {"template": "x"}, "a": {}}, 409, "params.a: the step is before from_step"),
        ({"b": "text"}, 400, "params.b: Input should be a valid dictionary"),  # the body model (pydantic's msg)
        ({"zzz": {"template": "x"}}, 409, "params.zzz: no step"),
        ({"a": {"template": "x"}}, 409, "params.a: the step is before from_step"),
        ("all", 400, "params: Input should be a valid dictionary"),
    ]
    for params, status, message in cases:
        error = replay(client, user, failed["id"], expect=status, params=params)["error"]
        assert message in error["message"], (params, error)
    fixed = replay(client, user, failed["id"], params={"b": {"template": "{{ steps.a.data }}!"}})
    assert fixed["status"] == "success" and fixed["step_results"][1]["result"]["data"] == "ok!"
    assert fixed["replay"]["params"] == {"1": {"template": "{{ steps.a.data }}!"}}


# --- plan versions -------------------------------------------------------------------------


def test_a_plan_edited_after_the_run_is_replayed_as_it_was(client: FlaskClient, user: str) -> None:
    plan_id = make_plan(client, user, [logic("a", "old"), logic("b", "{{ input.missing.x }}")])
    failed = run_plan(client, user, plan_id)
    assert failed["plan_version"] == 1
    new_steps = [logic("a", "new"), logic("b", "{{ steps.a.data }}")]
    response = client.put(f"/api/plans/{plan_id}", json={"user_id": user, "name": "edited", "steps": new_steps})
    assert response.status_code == 200

    old = replay(client, user, failed["id"], from_step=0, params={"b": {"template": "{{ steps.a.data }}"}})
    assert old["plan_version"] == 1 and old["plan_version_id"] == failed["plan_version_id"]
    assert [entry["result"]["data"] for entry in old["step_results"]] == ["old", "old"]
    fresh = run_plan(client, user, plan_id)
    assert fresh["plan_version"] == 2 and fresh["step_results"][1]["result"]["data"] == "new"


def test_a_version_is_written_per_change_of_steps_only(app: PilotApp, client: FlaskClient, user: str) -> None:
    steps = [logic("a", "one")]
    plan_id = make_plan(client, user, steps)
    assert client.patch(f"/api/plans/{plan_id}", json={"user_id": user, "name": "renamed"}).status_code == 200
    assert client.put(f"/api/plans/{plan_id}", json={"user_id": user, "name": "n", "steps": steps}).status_code == 200
    changed = {"user_id": user, "steps": [logic("a", "two")]}
    assert client.patch(f"/api/plans/{plan_id}", json=changed).status_code == 200
    with app.db.transaction(user) as cur:
        versions = store.list_plan_versions(cur, user, plan_id)
        # Every way a run is created gets the plan's latest version (a trigger: API, scheduler, psql).
        run = store.insert_run(cur, user, plan_id, trigger="schedule", owner_id="t", scheduled_for="2026-01-01T00:00Z")
    assert [(v["version"], v["steps"][0]["params"]["template"]) for v in versions] == [(1, "one"), (2, "two")]
    assert run is not None and run["plan_version_id"] == versions[-1]["id"]


def test_versions_are_immutable_and_private(app: PilotApp, client: FlaskClient, user: str, other_user: str) -> None:
    plan_id = make_plan(client, user, [logic("a", "one")])
    with app.db.transaction(other_user) as cur:
        assert store.list_plan_versions(cur, other_user, plan_id) == []
        cur.execute("SELECT count(*) AS n FROM plan_versions WHERE plan_id = %s", (plan_id,))
        assert cur.fetchone()["n"] == 0  # RLS: not even without the user filter
    with pytest.raises(PilotError), app.db.transaction(user) as cur:  # UPDATE is not granted
        cur.execute("UPDATE plan_versions SET steps = '[]' WHERE plan_id = %s", (plan_id,))
    with app.db.transaction(user) as cur:
        assert [v["steps"][0]["params"] for v in store.list_plan_versions(cur, user, plan_id)] == [{"template": "one"}]


def test_the_migration_backfills_versions_of_existing_plans_and_runs(
    fresh_db: str, tmp_path: Path, fernet_key: str, user: str
) -> None:
    app = make_app(fresh_db, tmp_path, (fernet_key,))
    try:
        client = app.test_client()
        plan_id = make_plan(client, user, [logic("a", "one")])
        run = run_plan(client, user, plan_id)
        plan_steps = resp_json(client.get(f"/api/plans/{plan_id}?user_id={user}"))["steps"]
    finally:
        app.db.close()
    conn = psycopg2.connect(fresh_db)
    try:
        with conn, conn.cursor() as cur:  # as before migration 016: no versions, runs without one
            cur.execute("UPDATE plan_runs SET plan_version_id = NULL")
            cur.execute("DELETE FROM plan_versions")
            cur.execute(REPLAY_MIGRATION.read_text())
            cur.execute(REPLAY_MIGRATION.read_text())  # and it can run twice
            cur.execute("SELECT plan_id, version, steps FROM plan_versions")
            assert cur.fetchall() == [(plan_id, 1, plan_steps)]
            cur.execute("SELECT v.version FROM plan_runs r JOIN plan_versions v ON v.id = r.plan_version_id")
            assert cur.fetchall() == [(1,)]
            cur.execute("SELECT id FROM plan_runs WHERE id = %s", (run["id"],))
            assert cur.fetchone() == (run["id"],)
    finally:
        conn.close()


# --- results that are not whole -------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(json={"token": "sk-abcdefghijklmnopqrstuvwxyz012345"}), "was redacted"),
        (Reply(body="x" * (64 * 1024 + 10)), "was truncated"),
    ],
)
def test_a_redacted_or_truncated_result_is_not_reused(
    client: FlaskClient, user: str, receiver: WebhookReceiver, reply: Reply, reason: str
) -> None:
    receiver.script(reply)
    plan_id = make_plan(client, user, [webhook("fetch", receiver.url + "/data"), logic("use", "{{ input.no.x }}")])
    failed = run_plan(client, user, plan_id)
    assert failed["status"] == "error" and len(receiver.requests) == 1
    assert not_whole(failed["step_results"][0]) == reason

    error = replay(client, user, failed["id"], expect=409)["error"]
    assert error["code"] == "result_not_reusable"
    assert "step 'fetch' (index 0)" in error["message"] and reason in error["message"]
    assert len(receiver.requests) == 1  # refused before anything ran

    # Replaying from that step executes it again: a whole new result, fed to the next step.
    again = replay(
        client, user, failed["id"], from_step="fetch", params={"use": {"template": "{{ steps.fetch.success }}"}}
    )
    assert again["status"] == "success" and len(receiver.requests) == 2
    assert [log["step_id"] for log in again["logs"]] == ["fetch", "use"]


def test_markers_of_results_that_are_not_whole() -> None:
    assert not_whole({"status": "success"}) == "was not stored"
    assert not_whole({"result": {"data": {"deep": [{"x": "a [REDACTED] b"}]}}}) == "was redacted"
    assert not_whole({"result": {"data": {"truncated": True, "preview": "…"}}}) == "was truncated"
    assert not_whole({"result": {"data": "x", "metadata": {"body_truncated": True}}}) == "was truncated"
    assert not_whole({"result": {"data": {"truncated": False}, "metadata": {"body_truncated": False}}}) is None
    steps = [logic("a", "x"), logic("b", "y")]
    replay_doc = {"params": {"1": {"template": "z"}}, "reused": [{"index": 0}]}
    merged, reused = replayed_steps(steps, replay_doc)
    assert merged[1]["params"] == {"template": "z"} and merged[0] is steps[0] and reused == [{"index": 0}]
    assert replayed_steps(steps, None) == (steps, [])


# --- refusals ---------------------------------------------------------------------------------


def test_replay_of_another_users_run_or_no_run_is_404(client: FlaskClient, user: str, other_user: str) -> None:
    plan_id = make_plan(client, user, [logic("a", "{{ input.x.y }}")])
    failed = run_plan(client, user, plan_id)
    assert replay(client, other_user, failed["id"], expect=404)["error"]["code"] == "not_found"
    assert replay(client, user, 987_654_321, expect=404)["error"]["code"] == "not_found"
    assert client.post(f"/api/runs/{10**30}/replay", json={"user_id": user}).status_code == 404


def test_bad_from_step_and_body_are_400(app: PilotApp, client: FlaskClient, user: str) -> None:
    plan_id = make_plan(client, user, [logic("a", "one"), logic("b", "two")])
    done = run_plan(client, user, plan_id)
    assert done["status"] == "success"
    # 400: the body's shape (the model); 409: a well-formed body that does not fit this run
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({}, 409, "no failed or interrupted step"),
        ({"from_step": "nope"}, 409, "no step of the run's plan version has the id 'nope'"),
        ({"from_step": 2}, 409, "index 2 is out of range"),
        ({"from_step": -1}, 400, "from_step must be a step id"),
        ({"from_step": True}, 400, "from_step must be a step id"),
        ({"from_step": [0]}, 400, "from_step must be a step id"),
        ({"from_step": 0, "extra": 1}, 400, "extra: Extra inputs are not permitted"),  # pydantic's msg
    ]
    for body, status, message in cases:
        error = replay(client, user, done["id"], expect=status, **body)["error"]
        assert message in error["message"], (body, error)
    assert replay(client, user, done["id"], from_step="b")["status"] == "success"  # a successful run, by choice
    with app.db.transaction(user) as cur:
        queued = store.insert_run(cur, user, plan_id, trigger="manual", owner_id="elsewhere")
    assert queued is not None
    assert replay(client, user, queued["id"], expect=409, from_step=0)["error"]["code"] == "run_not_finished"


def test_a_step_that_failed_or_never_ran_cannot_be_reused(client: FlaskClient, user: str) -> None:
    steps = [logic("a", "{{ input.x.y }}"), logic("b", "two"), logic("c", "three")]
    failed = run_plan(client, user, make_plan(client, user, steps))
    error = replay(client, user, failed["id"], expect=409, from_step="c")["error"]
    assert error["code"] == "result_not_reusable" and "step 'a' (index 0) failed" in error["message"]
    steps[0]["continue_on_error"] = True
    tolerated = run_plan(client, user, make_plan(client, user, steps))
    assert tolerated["status"] == "success"
    # The default is still the first failed step; a tolerated failure before from_step is reused as recorded.
    assert replay(client, user, tolerated["id"])["replay"]["from_index"] == 0
    later = replay(client, user, tolerated["id"], from_step="c")
    assert later["status"] == "success" and later["step_results"][0]["status"] == "error"


def test_replay_honours_idempotency_keys(client: FlaskClient, user: str) -> None:
    failed = run_plan(client, user, make_plan(client, user, [logic("a", "{{ input.x.y }}")]))
    body = {"user_id": user, "params": {"a": {"template": "fine"}}}
    headers = {"Idempotency-Key": "replay-once"}
    first = client.post(f"/api/runs/{failed['id']}/replay?wait=true", json=body, headers=headers)
    second = client.post(f"/api/runs/{failed['id']}/replay?wait=true", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert resp_json(first)["id"] == resp_json(second)["id"]
    listed = resp_json(client.get(f"/api/runs?user_id={user}&trigger=replay"))["runs"]
    assert len(listed) == 1
    other = client.post(f"/api/runs/{failed['id']}/replay", json={"user_id": user}, headers=headers)
    assert other.status_code == 422


def test_budget_refusal_applies_to_re_executed_llm_steps(llm: PilotApp, user: str, openai: FakeOpenAI) -> None:
    client = llm.test_client()
    store_key(client, user)
    done = run_plan(client, user, make_plan(client, user, [{"id": "ask", **chat()}, logic("after", "x")]))
    assert done["status"] == "success" and len(openai.requests) == 1
    put = client.put("/api/budget", json={"user_id": user, "monthly_usd": 0, "on_exceed": "refuse"})
    assert put.status_code == 200
    refused = replay(client, user, done["id"], from_step="ask")
    assert refused["status"] == "error"
    assert refused["step_results"][0]["result"]["error"]["code"] == "budget_exceeded"
    assert len(openai.requests) == 1  # refused before any call
    reused = replay(client, user, done["id"], from_step="after")  # nothing re-executed is an LLM step
    assert reused["status"] == "success" and len(openai.requests) == 1


def test_a_replay_without_wait_is_queued_and_runs(client: FlaskClient, user: str) -> None:
    failed = run_plan(client, user, make_plan(client, user, [logic("a", "1"), logic("b", "{{ input.x.y }}")]))
    response = client.post(
        f"/api/runs/{failed['id']}/replay", json={"user_id": user, "params": {"b": {"template": "2"}}}
    )
    assert response.status_code == 202
    queued = resp_json(response)
    assert queued["trigger"] == "replay" and queued["replayed_from"] == failed["id"]
    shown = finished(client, user, queued)
    assert shown["status"] == "success" and [e["result"]["data"] for e in shown["step_results"]] == ["1", "2"]


def test_replay_answers_match_their_documented_schemas(client: FlaskClient, user: str) -> None:
    from tests.test_openapi import check

    document = resp_json(client.get("/api/openapi.json"))
    operation = document["paths"]["/api/runs/{run_id}/replay"]["post"]
    assert {"$ref": "#/components/parameters/IdempotencyKey"} in operation["parameters"]
    failed = run_plan(client, user, make_plan(client, user, [logic("a", "1"), logic("b", "{{ input.x.y }}")]))
    check(document, "RunWithLogs", failed)
    done = replay(client, user, failed["id"], params={"b": {"template": "2"}})
    check(document, "RunWithLogs", done)
    check(document, "RunWithLogs", resp_json(client.get(f"/api/runs/{done['id']}?user_id={user}")))
    queued = client.post(
        f"/api/runs/{failed['id']}/replay", json={"user_id": user, "from_step": "a", "params": {"b": {"template": "3"}}}
    )
    check(document, "Run", resp_json(queued))
    assert finished(client, user, resp_json(queued))["status"] == "success"
    check(document, "RunSummaryList", resp_json(client.get(f"/api/runs?user_id={user}&trigger=replay")))


def test_a_plan_with_versions_runs_and_replays_can_be_deleted(app: PilotApp, client: FlaskClient, user: str) -> None:
    plan_id = make_plan(client, user, [logic("a", "{{ input.x.y }}")])
    failed = run_plan(client, user, plan_id)
    assert (
        client.put(f"/api/plans/{plan_id}", json={"user_id": user, "name": "n", "steps": [logic("a", "2")]}).status_code
        == 200
    )
    assert replay(client, user, failed["id"], params={"a": {"template": "1"}})["status"] == "success"
    assert client.delete(f"/api/plans/{plan_id}?user_id={user}").status_code == 204
    with app.db.transaction(user) as cur:
        assert store.list_plan_versions(cur, user, plan_id) == []
        assert store.get_run(cur, user, failed["id"]) is None


def test_a_replay_is_a_queued_run_under_the_users_queue_limit(fresh_db: str, tmp_path: Path, fernet_key: str) -> None:
    """The replay goes through the run queue (issue 9): 429 when the user's queue is full, else a queued
    row (trigger ``replay``) that a claim starts and runs on its pinned plan version."""
    app = make_app(fresh_db, tmp_path, (fernet_key,), run_queue_max_per_user=1)
    try:
        client = app.test_client()
        plan_id = make_plan(client, "alice", [logic("a", "1"), logic("b", "{{ input.x.y }}")])
        failed = run_plan(client, "alice", plan_id)
        assert failed["status"] == "error"
        app.engine.pause_claiming()  # nothing is claimed: queued runs stay queued
        assert client.post(f"/api/plans/{plan_id}/run", json={"user_id": "alice"}).status_code == 202
        refused = client.post(f"/api/runs/{failed['id']}/replay", json={"user_id": "alice"})
        assert refused.status_code == 429 and refused.json["error"]["code"] == "run_queue_full"  # type: ignore[index]
        with app.db.transaction("alice") as cur:
            queued = store.list_runs(cur, "alice", plan_id, limit=10, offset=0)
            assert store.queued_count(cur, "alice") == 1 and not [r for r in queued if r["trigger"] == "replay"]
            cur.execute("UPDATE plan_runs SET status = 'error', finished_at = now() WHERE status = 'queued'")
        response = client.post(
            f"/api/runs/{failed['id']}/replay", json={"user_id": "alice", "params": {"b": {"template": "2"}}}
        )
        assert response.status_code == 202
        row = resp_json(response)
        assert row["status"] == "queued" and row["trigger"] == "replay" and row["owner_id"] is None
        assert row["plan_version_id"] == failed["plan_version_id"]
        app.engine._claiming_paused = False
        assert app.engine.claim_now() == 1  # the claimer's path, not start_run
        shown = finished(client, "alice", row)
        assert shown["status"] == "success" and [e["result"]["data"] for e in shown["step_results"]] == ["1", "2"]
    finally:
        app.engine.shutdown()
        app.db.close()
