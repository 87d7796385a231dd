"""Plans through the HTTP API: validation, CRUD, and isolation between users."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import resp_json

STEP = {"id": "hello", "provider": "logic", "action": "transform", "params": {"template": "hi"}}


def create(client: FlaskClient, user: str, **fields: Any):
    body = {"user_id": user, "name": "Plan", "steps": [STEP], **fields}
    return client.post("/api/plans", json=body)


def test_checklist_integration_test_3(client: FlaskClient) -> None:
    response = client.post(
        "/api/plans", json={"user_id": "test_user_123", "name": "Test Plan", "original_prompt": "Test", "steps": []}
    )
    assert response.status_code == 201
    assert resp_json(response)["name"] == "Test Plan" and resp_json(response)["steps"] == []


def test_create_get_list_put_patch_delete(client: FlaskClient, user: str) -> None:
    plan = resp_json(create(client, user, original_prompt="say hi"))
    assert plan["steps"][0]["provider"] == "logic"
    got = client.get(f"/api/plans/{plan['id']}?user_id={user}")
    assert got.status_code == 200 and resp_json(got)["id"] == plan["id"]
    assert [p["id"] for p in resp_json(client.get(f"/api/plans?user_id={user}"))["plans"]] == [plan["id"]]

    put = client.put(f"/api/plans/{plan['id']}", json={"user_id": user, "name": "Renamed", "steps": []})
    assert put.status_code == 200 and resp_json(put)["name"] == "Renamed" and resp_json(put)["original_prompt"] is None
    patch = client.patch(f"/api/plans/{plan['id']}", json={"user_id": user, "enabled": False})
    assert patch.status_code == 200 and resp_json(patch)["name"] == "Renamed" and resp_json(patch)["enabled"] is False

    assert client.delete(f"/api/plans/{plan['id']}?user_id={user}").status_code == 204
    assert client.get(f"/api/plans/{plan['id']}?user_id={user}").status_code == 404


def test_plans_survive_a_new_app_on_the_same_database(session_db: str, tmp_path, fernet_key: str, user: str) -> None:
    from tests.conftest import make_app, resp_json

    first = make_app(session_db, tmp_path, (fernet_key,))
    plan_id = resp_json(create(first.test_client(), user))["id"]
    first.db.close()
    second = make_app(session_db, tmp_path, (fernet_key,))
    assert second.test_client().get(f"/api/plans/{plan_id}?user_id={user}").status_code == 200
    second.db.close()


def test_another_user_can_never_read_change_or_delete_a_plan(client: FlaskClient, user: str, other_user: str) -> None:
    plan_id = resp_json(create(client, user))["id"]
    assert client.get(f"/api/plans/{plan_id}?user_id={other_user}").status_code == 404
    assert resp_json(client.get(f"/api/plans?user_id={other_user}"))["plans"] == []
    for method in ("put", "patch"):
        response = getattr(client, method)(f"/api/plans/{plan_id}", json={"user_id": other_user, "name": "x"})
        assert response.status_code == 404
    assert client.delete(f"/api/plans/{plan_id}?user_id={other_user}").status_code == 404
    still = resp_json(client.get(f"/api/plans/{plan_id}?user_id={user}"))
    assert still["name"] == "Plan"


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"steps": "nope"}, "steps"),
        ({"steps": [{"provider": "logic"}]}, "steps[0].action"),
        ({"steps": [{"provider": "logic", "action": "transform", "params": []}]}, "steps[0].params"),
        ({"steps": [{"provider": "lo gic", "action": "transform"}]}, "steps[0].provider"),
        ({"steps": [{**STEP, "bogus": 1}]}, "steps[0].bogus"),
        ({"steps": [STEP, STEP]}, "used by an earlier step"),
        ({"steps": [STEP] * 101}, "steps"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"schedule": {"cron": "61 * * * *"}}, "schedule"),
        ({"schedule": {"cron": "* * *"}}, "5 fields"),
        ({"schedule": {"interval_seconds": 0}}, "schedule.interval_seconds"),
        ({"schedule": {"cron": "* * * * *", "interval_seconds": 5}}, "exactly one"),
        ({"schedule": {"cron": "0 9 * * *", "timezone": "Nowhere/Town"}}, "unknown timezone"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_invalid_plans_get_400_naming_the_field(client: FlaskClient, user: str, fields: dict, needle: str) -> None:
    response = create(client, user, **fields)
    assert response.status_code == 400, response.json
    error = resp_json(response)["error"]
    assert error["code"] == "invalid_request"
    assert needle in error["message"], error


def test_valid_schedules_are_stored(client: FlaskClient, user: str) -> None:
    response = create(client, user, schedule={"cron": "30 2 * * 1-5", "timezone": "Europe/Berlin"})
    assert response.status_code == 201
    assert resp_json(response)["schedule"] == {"cron": "30 2 * * 1-5", "timezone": "Europe/Berlin"}


@pytest.mark.parametrize(
    ("step", "needle"),
    [
        ({"provider": "nosuch", "action": "x"}, "steps[0]: unknown provider 'nosuch'"),
        ({"provider": "logic", "action": "nosuch"}, "steps[0]: provider 'logic' has no action 'nosuch'"),
        (
            {"provider": "openai", "action": "chat_completion", "params": {"prompt": "x", "temperature": 9}},
            "steps[0].params.temperature",
        ),
        ({"provider": "webhook", "action": "request", "params": {}}, "steps[0].params"),
        ({"provider": "logic", "action": "transform", "params": {"template": 1}, "when": "a[["}, "steps[0].when"),
    ],
)
def test_steps_are_checked_against_provider_schemas(client: FlaskClient, user: str, step: dict, needle: str) -> None:
    response = client.post("/api/plans", json={"user_id": user, "name": "p", "steps": [step]})
    assert response.status_code == 400
    assert needle in resp_json(response)["error"]["message"], response.json


def test_templated_params_are_checked_when_the_plan_runs(client: FlaskClient, user: str) -> None:
    step = {
        "provider": "openai",
        "action": "chat_completion",
        "params": {"prompt": "x", "temperature": "{{ steps.t.data }}"},
    }
    response = client.post("/api/plans", json={"user_id": user, "name": "p", "steps": [step]})
    assert response.status_code == 201, response.json


def test_the_readme_step_shape_names_every_step_field() -> None:
    import re
    from pathlib import Path

    from pilot.steps.plan_schema import Step

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    shape = re.search(r"A step is `\{([^}]*)\}`", readme)
    assert shape is not None
    documented = {name.strip().rstrip("?") for name in shape.group(1).split(",")}
    assert documented == set(Step.model_fields)


# --- issue 8 item 3: what the generated OpenAPI document says, the server does ---------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("enabled", 0), ("enabled", "true"), ("max_cost_usd", False), ("name", 5)],
)
def test_body_types_are_strict_as_the_document_says(client: FlaskClient, user: str, field: str, value: Any) -> None:
    """false is not 0 and 0 is not false: a number or boolean of the wrong JSON type is a 400 naming the field."""
    response = client.post("/api/plans", json={"user_id": user, "name": "typed", field: value})
    assert response.status_code == 400, response.get_data(as_text=True)
    error = resp_json(response)["error"]
    assert error["details"][0]["loc"] == ["body", field] and error["details"][0]["field"] == field


def test_unknown_body_fields_are_400_with_pydantic_loc_and_msg(client: FlaskClient, user: str) -> None:
    response = client.post("/api/plans", json={"user_id": user, "name": "x", "colour": "red"})
    assert response.status_code == 400
    detail = resp_json(response)["error"]["details"][0]
    assert detail == {"loc": ["body", "colour"], "msg": "Extra inputs are not permitted", "field": "colour"}


def test_pausing_a_plan_without_a_schedule_is_409(client: FlaskClient, user: str) -> None:
    """Issue 8 item 3: was 400; the request is valid, the plan's state does not allow it."""
    plan = resp_json(client.post("/api/plans", json={"user_id": user, "name": "unscheduled"}))
    response = client.post(f"/api/plans/{plan['id']}/pause", json={"user_id": user})
    assert response.status_code == 409 and resp_json(response)["error"]["code"] == "no_schedule"


@pytest.mark.parametrize(("flag", "status"), [("true", 200), ("yes", 200), ("0", 202), ("maybe", 400), ("null", 400)])
def test_run_query_flags_are_booleans(client: FlaskClient, user: str, flag: str, status: int) -> None:
    step = {"provider": "logic", "action": "transform", "params": {"template": {"x": 1}}}
    plan = resp_json(client.post("/api/plans", json={"user_id": user, "name": "flags", "steps": [step]}))
    response = client.post(f"/api/plans/{plan['id']}/run?wait={flag}", json={"user_id": user})
    assert response.status_code == status, response.get_data(as_text=True)
    if status == 400:
        assert resp_json(response)["error"]["details"][0]["loc"] == ["query", "wait"]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/metrics/providers?hours=0", "hours"),
        ("/api/metrics/errors?hours=0", "hours"),
        ("/api/logs?plan_id=0", "plan_id"),
        ("/api/logs?run_id=0", "run_id"),
        ("/api/runs?before=9223372036854775808", "before"),
    ],
)
def test_query_integers_are_refused_outside_what_the_document_says(
    client: FlaskClient, user: str, path: str, name: str
) -> None:
    """Issue 8 item 3: 0 meant 'the default' or 'no filter' for these; the document says at least 1."""
    response = client.get(f"{path}&user_id={user}")
    assert response.status_code == 400
    assert resp_json(response)["error"]["details"][0]["loc"] == ["query", name]


@pytest.mark.parametrize("query", ["limit=", "limit=&offset=", "status=&plan_id="])
def test_an_empty_query_value_still_means_absent(client: FlaskClient, user: str, query: str) -> None:
    path = "/api/logs" if "status" in query else "/api/plans"
    assert client.get(f"{path}?user_id={user}&{query}").status_code == 200


@pytest.mark.parametrize(("interval", "status"), [(60, 201), (60.0, 201), (60.5, 400), (True, 400), ("60", 400)])
def test_schedule_integers_are_json_integers(client: FlaskClient, user: str, interval: Any, status: int) -> None:
    """3.0 is a JSON Schema integer and is taken; true and "3" are not (pydantic's lax mode took both)."""
    body = {"user_id": user, "name": "every", "schedule": {"interval_seconds": interval}}
    assert client.post("/api/plans", json=body).status_code == status
