"""Idempotency-Key on POST routes (issue 11 item 4): one execution per key, the first answer replayed,
422 for a reused key, 409 with Retry-After while the first is running, per user, pruned after 24 hours."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from pilot.application import PilotApp
from pilot.data import store
from pilot.ops import maintenance
from tests.conftest import make_app, resp_json
from tests.fake_upstreams import SLOW, FakeOpenAI
from tests.llm_support import chat, completions, llm_app, store_key

KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"
LOGIC = {"provider": "logic", "action": "transform", "params": {"template": {"x": 1}}}


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def llm(session_db: str, tmp_path: Path, fernet_key: str, openai: FakeOpenAI) -> Iterator[PilotApp]:
    app = llm_app(session_db, tmp_path, fernet_key, openai)
    yield app
    app.engine.shutdown(wait=True)
    app.db.close()


def post(client: FlaskClient, path: str, body: dict[str, Any], key: str | None = KEY) -> Any:
    return client.post(path, json=body, headers={"Idempotency-Key": key} if key is not None else {})


def plan_count(client: FlaskClient, user: str) -> int:
    return len(resp_json(client.get(f"/api/plans?user_id={user}"))["plans"])


def key_row(app: PilotApp, user: str, key: str = KEY) -> dict[str, Any] | None:
    with app.db.transaction(user) as cur:
        return store.get_idempotency_key(cur, user, key)


def test_a_repeated_create_returns_the_first_answer_without_creating_again(client: FlaskClient, user: str) -> None:
    body = {"user_id": user, "name": "once", "steps": [LOGIC]}
    first = post(client, "/api/plans", body)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = post(client, "/api/plans", body)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data() and again.headers["Content-Type"] == first.headers["Content-Type"]
    assert plan_count(client, user) == 1
    # The same JSON written differently is the same request.
    reordered = client.post(
        "/api/plans",
        data='{ "steps": [{"params": {"template": {"x": 1}}, "action": "transform", "provider": "logic"}],'
        f' "name": "once", "user_id": "{user}" }}',
        content_type="application/json",
        headers={"Idempotency-Key": KEY},
    )
    assert reordered.status_code == 201 and reordered.headers["Idempotent-Replayed"] == "true"
    assert plan_count(client, user) == 1
    without_key = client.post("/api/plans", json=body)
    assert without_key.status_code == 201 and plan_count(client, user) == 2


def test_the_same_key_with_another_request_is_422(client: FlaskClient, user: str) -> None:
    assert post(client, "/api/plans", {"user_id": user, "name": "a", "steps": [LOGIC]}).status_code == 201
    for path, body in (
        ("/api/plans", {"user_id": user, "name": "b", "steps": [LOGIC]}),
        ("/api/execute-step", {"user_id": user, "step": LOGIC}),
    ):
        response = post(client, path, body)
        assert response.status_code == 422, response.get_data(as_text=True)
        assert resp_json(response)["error"]["code"] == "idempotency_key_reused"
    assert plan_count(client, user) == 1


def test_keys_are_per_user(client: FlaskClient, user: str, other_user: str) -> None:
    assert post(client, "/api/plans", {"user_id": user, "name": "a", "steps": [LOGIC]}).status_code == 201
    theirs = post(client, "/api/plans", {"user_id": other_user, "name": "b", "steps": [LOGIC]})
    assert theirs.status_code == 201 and "Idempotent-Replayed" not in theirs.headers
    assert resp_json(theirs)["user_id"] == other_user and plan_count(client, other_user) == 1


@pytest.mark.parametrize("key", ["", " padded", "ключ", "x" * 256])
def test_a_malformed_key_is_400_and_nothing_runs(client: FlaskClient, user: str, key: str) -> None:
    response = client.post(
        "/api/plans",
        json={"user_id": user, "name": "a", "steps": [LOGIC]},
        headers=[("Idempotency-Key", key.encode("utf-8").decode("latin-1"))],
    )
    assert response.status_code == 400 and resp_json(response)["error"]["code"] == "invalid_idempotency_key"
    assert plan_count(client, user) == 0


def test_an_executed_step_is_replayed_without_a_second_call(llm: PilotApp, user: str, openai: FakeOpenAI) -> None:
    client = llm.test_client()
    store_key(client, user)
    body = {"user_id": user, "step": chat()}
    first = post(client, "/api/execute-step", body)
    again = post(client, "/api/execute-step", body)
    assert first.status_code == again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert resp_json(again) == resp_json(first) and len(completions(openai)) == 1
    assert len(resp_json(client.get(f"/api/logs?user_id={user}"))["logs"]) == 1


def test_ten_concurrent_identical_requests_execute_once(llm: PilotApp, user: str, openai: FakeOpenAI) -> None:
    client = llm.test_client()
    store_key(client, user)
    openai.script(SLOW)  # the first call takes 1.5 s: the others arrive while it runs
    body = {"user_id": user, "step": chat()}
    start = threading.Barrier(10)

    def send(_: int) -> Any:
        own = llm.test_client()
        start.wait(timeout=30)
        return post(own, "/api/execute-step", body)

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(send, range(10), timeout=120))
    assert len(completions(openai)) == 1  # executed once
    executed = [r for r in responses if r.status_code == 200 and "Idempotent-Replayed" not in r.headers]
    replayed = [r for r in responses if r.status_code == 200 and r.headers.get("Idempotent-Replayed") == "true"]
    in_use = [r for r in responses if r.status_code == 409]
    assert len(executed) == 1 and len(executed) + len(replayed) + len(in_use) == 10
    assert in_use, "the duplicates that arrived while the first ran were told so"
    for response in in_use:
        assert response.headers["Retry-After"] == "1"
        assert resp_json(response)["error"]["code"] == "idempotency_key_in_use"
    assert all(resp_json(r) == resp_json(executed[0]) for r in replayed)
    settled = post(client, "/api/execute-step", body)  # after the first finished: its answer
    assert settled.headers["Idempotent-Replayed"] == "true" and resp_json(settled) == resp_json(executed[0])
    assert len(completions(openai)) == 1


def test_a_plan_run_with_a_key_runs_once(client: FlaskClient, user: str) -> None:
    plan = resp_json(client.post("/api/plans", json={"user_id": user, "name": "p", "steps": [LOGIC]}))
    path = f"/api/plans/{plan['id']}/run?wait=true"
    first = post(client, path, {"user_id": user})
    again = post(client, path, {"user_id": user})
    assert first.status_code == again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert resp_json(again)["id"] == resp_json(first)["id"]
    assert len(resp_json(client.get(f"/api/plans/{plan['id']}/runs?user_id={user}"))["runs"]) == 1
    queued = post(client, f"/api/plans/{plan['id']}/run", {"user_id": user})  # another path (no ?wait): 422
    assert queued.status_code == 422


def test_client_errors_are_kept_and_try_again_errors_release_the_key(
    fresh_db: str, tmp_path: Path, fernet_key: str, user: str
) -> None:
    app = make_app(fresh_db, tmp_path, (fernet_key,), run_queue_max_per_user=1)  # its queued run stays here
    client = app.test_client()
    try:
        missing = post(client, "/api/plans/999999999/run", {"user_id": user}, key="k-404")
        assert missing.status_code == 404
        replay = post(client, "/api/plans/999999999/run", {"user_id": user}, key="k-404")
        assert replay.status_code == 404 and replay.headers["Idempotent-Replayed"] == "true"
        plan = resp_json(client.post("/api/plans", json={"user_id": user, "name": "p", "steps": [LOGIC]}))
        app.engine.shutdown(wait=True)  # this process claims no more: its runs stay queued
        assert post(client, f"/api/plans/{plan['id']}/run", {"user_id": user}, key=None).status_code == 202
        refused = post(client, f"/api/plans/{plan['id']}/run", {"user_id": user}, key="k-429")
        assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit()
        assert key_row(app, user, "k-429") is None  # released: may be sent again
        retried = post(client, f"/api/plans/{plan['id']}/run", {"user_id": user}, key="k-429")
        assert retried.status_code == 429 and "Idempotent-Replayed" not in retried.headers
    finally:
        app.db.close()


def test_a_key_answers_for_24_hours_then_executes_again(app: PilotApp, client: FlaskClient, user: str) -> None:
    body = {"user_id": user, "name": "daily", "steps": [LOGIC]}
    assert post(client, "/api/plans", body).status_code == 201
    with app.db.transaction(user) as cur:
        cur.execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '23 hours 59 minutes' WHERE user_id = %s",
            (user,),
        )
    assert post(client, "/api/plans", body).headers.get("Idempotent-Replayed") == "true"
    with app.db.transaction(user) as cur:
        cur.execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '24 hours 1 minute' WHERE user_id = %s", (user,)
        )
    again = post(client, "/api/plans", body)
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert plan_count(client, user) == 2


def test_a_key_left_in_progress_by_a_dead_process_is_taken_over_after_its_lock(
    app: PilotApp, client: FlaskClient, user: str
) -> None:
    body = {"user_id": user, "name": "p", "steps": [LOGIC]}
    assert post(client, "/api/plans", body).status_code == 201
    with app.db.transaction(user) as cur:  # as a process that died mid-request leaves it
        cur.execute(
            "UPDATE idempotency_keys SET state = 'in_progress', response_status = NULL, response_body = NULL,"
            " locked_until = now() + interval '1 hour' WHERE user_id = %s",
            (user,),
        )
    assert post(client, "/api/plans", body).status_code == 409
    with app.db.transaction(user) as cur:
        cur.execute(
            "UPDATE idempotency_keys SET locked_until = now() - interval '1 second' WHERE user_id = %s", (user,)
        )
    assert post(client, "/api/plans", {**body, "name": "other"}).status_code == 422  # only the same request
    taken = post(client, "/api/plans", body)
    assert taken.status_code == 201 and "Idempotent-Replayed" not in taken.headers
    assert key_row(app, user)["state"] == "done"  # type: ignore[index]


def test_prune_logs_deletes_keys_older_than_24_hours(fresh_db: str, tmp_path: Path, fernet_key: str, user: str) -> None:
    from tests.conftest import make_app

    app = make_app(fresh_db, tmp_path, (fernet_key,))
    try:
        client = app.test_client()
        for key in ("old", "new"):
            assert (
                post(client, "/api/plans", {"user_id": user, "name": key, "steps": [LOGIC]}, key=key).status_code == 201
            )
        with app.db.transaction(user) as cur:
            cur.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old'")
        result = maintenance.prune_history(app.db, 30)
        assert result.idempotency_keys == 1 and "1 idempotency key(s)" in maintenance.describe(result)
        assert key_row(app, user, "old") is None and key_row(app, user, "new") is not None
    finally:
        app.db.close()
