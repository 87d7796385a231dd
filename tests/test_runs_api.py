"""GET /api/runs: the caller's runs across plans, newest first, filtered and paged by id, under RLS."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from pilot.application import PilotApp
from pilot.data import store
from tests.conftest import resp_json

OK_STEP = {"id": "hello", "provider": "logic", "action": "transform", "params": {"template": "hi"}}
# A missing reference is a step error, so a run of this plan ends in 'error' with no network involved.
BAD_STEP = {"id": "broken", "provider": "logic", "action": "transform", "params": {"template": "{{ input.nope.x }}"}}


def make_plan(client: FlaskClient, user: str, name: str, step: dict[str, Any]) -> int:
    response = client.post("/api/plans", json={"user_id": user, "name": name, "steps": [step]})
    assert response.status_code == 201, response.json
    return int(resp_json(response)["id"])


def run(client: FlaskClient, user: str, plan_id: int, trigger: str = "manual") -> dict[str, Any]:
    response = client.post(f"/api/plans/{plan_id}/run?wait=true", json={"user_id": user, "trigger": trigger})
    assert response.status_code == 200, response.json
    return resp_json(response)


def listed(client: FlaskClient, user: str, query: str = "") -> list[dict[str, Any]]:
    response = client.get(f"/api/runs?user_id={user}{query}")
    assert response.status_code == 200, response.json
    return resp_json(response)["runs"]


@pytest.fixture
def history(app: PilotApp, client: FlaskClient, user: str) -> dict[str, Any]:
    """Two plans of ``user``: good (manual, api and schedule runs) and bad (one failed run)."""
    good = make_plan(client, user, "Good plan", OK_STEP)
    bad = make_plan(client, user, "Bad plan", BAD_STEP)
    runs = [run(client, user, good), run(client, user, bad), run(client, user, good, trigger="api")]
    with app.db.transaction(user) as cur:
        scheduled = store.insert_run(
            cur, user, good, trigger="schedule", owner_id="test", scheduled_for="2026-01-01T09:00:00Z"
        )
    assert scheduled is not None
    return {"good": good, "bad": bad, "ids": [r["id"] for r in runs] + [scheduled["id"]]}


def test_runs_of_every_plan_newest_first_with_plan_names(client: FlaskClient, user: str, history: dict) -> None:
    runs = listed(client, user)
    assert [r["id"] for r in runs] == sorted(history["ids"], reverse=True)
    by_id = {r["id"]: r for r in runs}
    first, second, third, fourth = history["ids"]
    assert by_id[first]["plan_name"] == "Good plan" and by_id[first]["status"] == "success"
    assert by_id[second]["plan_name"] == "Bad plan" and by_id[second]["status"] == "error"
    assert "broken" in by_id[second]["error"]
    assert by_id[third]["trigger"] == "api" and by_id[fourth]["trigger"] == "schedule"
    # A list stays light: step outputs are read one run at a time from GET /api/runs/<id>.
    assert all("step_results" not in r for r in runs)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("&status=error", lambda h: [h["ids"][1]]),
        ("&status=success", lambda h: [h["ids"][2], h["ids"][0]]),
        ("&trigger=api", lambda h: [h["ids"][2]]),
        ("&trigger=schedule", lambda h: [h["ids"][3]]),
        ("&plan_id={bad}", lambda h: [h["ids"][1]]),
        ("&plan_id={good}&trigger=manual", lambda h: [h["ids"][0]]),
        ("&plan_id={good}&status=queued", lambda h: [h["ids"][3]]),
        ("&status=interrupted", lambda h: []),
    ],
)
def test_filters_combine(client: FlaskClient, user: str, history: dict, query: str, expected: Any) -> None:
    query = query.format(good=history["good"], bad=history["bad"])
    assert [r["id"] for r in listed(client, user, query)] == expected(history)


def test_before_pages_through_by_id_without_gaps_or_repeats(client: FlaskClient, user: str, history: dict) -> None:
    seen: list[int] = []
    query = "&limit=1"
    for _ in range(10):  # four runs: the loop must end well before this bound
        response = client.get(f"/api/runs?user_id={user}{query}")
        assert response.status_code == 200
        body = resp_json(response)
        seen += [r["id"] for r in body["runs"]]
        if body["next_before"] is None:
            break
        query = f"&limit=1&before={body['next_before']}"
    assert seen == sorted(history["ids"], reverse=True)


def test_another_users_runs_are_never_listed(client: FlaskClient, user: str, other_user: str, history: dict) -> None:
    assert listed(client, other_user) == []
    assert listed(client, other_user, f"&plan_id={history['good']}") == []


@pytest.mark.parametrize(
    "query",
    [
        "status=done",
        "trigger=cron",
        "limit=0",
        "limit=501",
        "limit=x",
        "before=-1",
        "before=abc",
        "plan_id=1.5",
        "before=%C2%B9",
        "plan_id=%C2%B9",
        "limit=%C2%B9",
    ],
)
def test_bad_filters_are_400_naming_the_parameter(client: FlaskClient, user: str, query: str) -> None:
    response = client.get(f"/api/runs?user_id={user}&{query}")
    assert response.status_code == 400
    assert query.split("=")[0] in resp_json(response)["error"]["message"]


def test_runs_list_needs_a_user(client: FlaskClient) -> None:
    assert client.get("/api/runs").status_code == 400


def test_the_answer_matches_its_openapi_schema(client: FlaskClient, user: str, history: dict) -> None:
    from tests.test_openapi import check

    document = resp_json(client.get("/api/openapi.json"))
    assert "get" in document["paths"]["/api/runs"]
    check(document, "RunSummaryList", resp_json(client.get(f"/api/runs?user_id={user}")))
    check(document, "RunSummaryList", resp_json(client.get(f"/api/runs?user_id={user}&limit=1")))
