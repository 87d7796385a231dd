"""Input no route can store or use answers 400 naming the field, never a 500 (issue 7, item 4).

PostgreSQL's text and jsonb refuse NUL and psycopg2 cannot encode a lone
surrogate; JSON nested without bound exhausts Python's stack; a timezone that
names a directory of the zoneinfo tree raises IsADirectoryError. Each case here
answered 500 before the request guard and the field checks existed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import make_app, resp_json
from tests.test_http_errors import assert_json_error

NUL = "\u0000"


def nested(depth: int, leaf: str = "1") -> str:
    """JSON text of ``depth`` nested arrays around ``leaf`` (written out, not built by a library)."""
    return "[" * depth + leaf + "]" * depth


def post_raw(client: FlaskClient, url: str, text: str):
    return client.post(url, data=text, content_type="application/json")


def fields(response) -> list[str]:
    return [item["field"] for item in resp_json(response)["error"]["details"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": f"a{NUL}b"}, "name"),
        ({"name": "ok", "original_prompt": f"x{NUL}"}, "original_prompt"),
        (
            {"name": "ok", "steps": [{"provider": "logic", "action": "transform", "params": {"template": f"a{NUL}"}}]},
            "steps[0].params.template",
        ),
        (
            {"name": "ok", "steps": [{"name": NUL, "provider": "logic", "action": "transform", "params": {}}]},
            "steps[0].name",
        ),
        (
            {"name": "ok", "steps": [{"provider": "logic", "action": "transform", "params": {NUL: 1}}]},
            "steps[0].params",
        ),
    ],
)
def test_nul_anywhere_in_a_plan_is_400_naming_the_field(client: FlaskClient, user: str, body: dict, field: str) -> None:
    error = assert_json_error(client.post("/api/plans", json={"user_id": user, **body}), 400, "invalid_request")
    assert field in error["message"] and "NUL" in error["message"]
    assert error["details"][0]["field"] == field


def test_nul_in_a_patched_name_is_400(client: FlaskClient, user: str) -> None:
    plan = resp_json(client.post("/api/plans", json={"user_id": user, "name": "ok"}))
    response = client.patch(f"/api/plans/{plan['id']}", json={"user_id": user, "name": f"x{NUL}"})
    assert_json_error(response, 400, "invalid_request")
    assert fields(response) == ["name"]
    assert resp_json(client.get(f"/api/plans/{plan['id']}?user_id={user}"))["name"] == "ok"


@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        ("/api/provider-credentials/openai", {"credentials": {"api_key": f"sk-{NUL}"}}, "credentials.api_key"),
        ("/api/execute-step", {"step": {"provider": "logic", "action": "transform"}, "input": {"a": NUL}}, "input.a"),
        ("/api/plans/1/run?wait=true", {"input": {"x": [NUL]}}, "input.x[0]"),
    ],
)
def test_nul_in_other_bodies_is_400(client: FlaskClient, user: str, url: str, body: dict, field: str) -> None:
    response = client.post(url, json={"user_id": user, **body})
    assert_json_error(response, 400, "invalid_request")
    assert fields(response) == [field]


@pytest.mark.parametrize(
    "query",
    ["provider=%00", "status=%00", "since=%00", "plan_id=%00", "provider=a%00b&limit=5", "%00=1"],
)
def test_nul_in_a_query_parameter_is_400(client: FlaskClient, user: str, query: str) -> None:
    response = client.get(f"/api/logs?user_id={user}&{query}")
    error = assert_json_error(response, 400, "invalid_request")
    assert "NUL" in error["message"]


def test_lone_surrogates_are_400(client: FlaskClient, user: str) -> None:
    for text, field in (
        (f'{{"user_id": "\\ud800{user}", "name": "x"}}', "user_id"),
        (f'{{"user_id": "{user}", "name": "x", "original_prompt": "\\udfff"}}', "original_prompt"),
    ):
        response = post_raw(client, "/api/plans", text)
        assert_json_error(response, 400, "invalid_request")
        assert fields(response) == [field]
    text = f'{{"user_id": "{user}", "credentials": {{"api_key": "sk-\\ud800abcdef"}}}}'
    response = post_raw(client, "/api/provider-credentials/openai", text)
    assert_json_error(response, 400, "invalid_request")
    assert resp_json(client.get(f"/api/provider-credentials?user_id={user}"))["credentials"] == []


@pytest.mark.parametrize("depth", [101, 1_000, 100_000])
def test_json_nested_deeper_than_100_is_400_everywhere(client: FlaskClient, user: str, depth: int) -> None:
    step = '{"provider": "logic", "action": "transform", "params": {"template": ' + nested(depth) + "}}"
    plan = f'{{"user_id": "{user}", "name": "deep", "steps": [{step}]}}'
    for url, text in (
        ("/api/plans", nested(depth)),
        ("/api/plans", plan),
        ("/api/execute-step", f'{{"user_id": "{user}", "step": {step}}}'),
        ("/api/provider-credentials/openai", f'{{"user_id": "{user}", "credentials": {nested(depth)}}}'),
    ):
        error = assert_json_error(post_raw(client, url, text), 400, "invalid_request")
        assert "nested deeper than 100" in error["message"]
    # A GET carries no body a route reads, but auth looks for user_id in any JSON body.
    response = client.get(f"/api/plans?user_id={user}", data=nested(depth), content_type="application/json")
    assert_json_error(response, 400, "invalid_request")


def test_json_nested_100_deep_is_accepted(client: FlaskClient, user: str) -> None:
    # The body object is level 1, params level 4 (body > steps > step > params), so 96 more fit.
    step: dict[str, Any] = {"provider": "logic", "action": "transform", "params": {"template": json.loads(nested(96))}}
    response = client.post("/api/plans", json={"user_id": user, "name": "deep", "steps": [step]})
    assert response.status_code == 201, response.get_data(as_text=True)
    step["params"]["template"] = json.loads(nested(97))
    assert_json_error(client.post("/api/plans", json={"user_id": user, "name": "x", "steps": [step]}), 400)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_number_constants_are_400(client: FlaskClient, user: str, constant: str) -> None:
    step = '{"provider": "logic", "action": "transform", "params": {"template": ' + constant + "}}"
    text = f'{{"user_id": "{user}", "name": "x", "steps": [{step}]}}'
    error = assert_json_error(post_raw(client, "/api/plans", text), 400, "invalid_request")
    assert "not valid JSON" in error["message"]


@pytest.mark.parametrize(
    "timezone",
    ["Europe", "Etc", "America", "Europe/", "../etc", "/etc/passwd", "/usr/share/zoneinfo/UTC", "..", "", "a\u0000"],
)
def test_timezones_that_are_not_zone_names_are_400(client: FlaskClient, user: str, timezone: str) -> None:
    response = client.post("/api/plans", json={"user_id": user, "name": "t", "timezone": timezone})
    assert_json_error(response, 400, "invalid_request")
    assert fields(response) == ["timezone"]
    schedule = {"cron": "0 9 * * 1", "timezone": timezone}
    response = client.post("/api/plans", json={"user_id": user, "name": "t", "schedule": schedule})
    assert_json_error(response, 400, "invalid_request")
    assert fields(response) == ["schedule.timezone"]


@pytest.mark.parametrize("timezone", ["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Etc/GMT-14"])
def test_real_zone_names_are_accepted(client: FlaskClient, user: str, timezone: str) -> None:
    schedule = {"cron": "0 9 * * 1", "timezone": timezone}
    body = {"user_id": user, "name": "t", "timezone": timezone, "schedule": schedule}
    response = client.post("/api/plans", json=body)
    assert response.status_code == 201, response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/metrics/providers?hours=%C2%B9", "hours"),  # '¹' is str.isdigit() but not int()
        ("/api/metrics/errors?hours=%D9%A3", "hours"),  # an Arabic-Indic 3: int() takes it, nobody means it
        ("/api/logs?plan_id=%C2%B2", "plan_id"),
        ("/api/logs?run_id=1_0", "run_id"),
        ("/api/plans?limit=%D9%A3", "limit"),
        ("/api/plans?offset=%201", "offset"),
        ("/api/plans?limit=" + "9" * 5000, "limit"),
    ],
)
def test_integer_query_parameters_take_ascii_digits_only(client: FlaskClient, user: str, path: str, name: str) -> None:
    error = assert_json_error(client.get(f"{path}&user_id={user}"), 400, "invalid_request")
    assert name in error["message"]


@pytest.mark.parametrize(
    "since",
    ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00%2B14:00", "2024-01-01T00:00:00%2B25:00", "tomorrow", "%20"],
)
def test_since_outside_what_the_database_holds_is_400(client: FlaskClient, user: str, since: str) -> None:
    error = assert_json_error(client.get(f"/api/logs?user_id={user}&since={since}"), 400, "invalid_request")
    assert "since" in error["message"]


@pytest.mark.parametrize("since", ["2024-01-01", "2024-01-01T00:00:00Z", "2024-01-01T10:00:00%2B05:30"])
def test_since_in_iso_8601_still_filters(client: FlaskClient, user: str, since: str) -> None:
    response = client.get(f"/api/logs?user_id={user}&since={since}")
    assert response.status_code == 200 and resp_json(response)["logs"] == []


# --- Host check: dev mode answers loopback names only (issue 7, item 17) -----------------------


@pytest.fixture
def app_with(session_db: str, tmp_path, fernet_key: str):
    apps = []

    def build(**overrides):
        app = make_app(session_db, tmp_path, (fernet_key,), **overrides)
        apps.append(app)
        return app.test_client()

    yield build
    for app in apps:
        app.db.close()


LOOPBACK_HOSTS = ["localhost", "localhost:5000", "LocalHost:1", "127.0.0.1", "127.0.0.1:5000", "127.9.8.7:80", "[::1]"]
LOOPBACK_HOSTS += ["[::1]:5000", "localhost."]
FOREIGN_HOSTS = ["evil.example", "evil.example:5000", "localhost.evil.example", "127.0.0.1.nip.io", "192.168.1.5:5000"]
FOREIGN_HOSTS += ["0.0.0.0:5000", "[::ffff:7f00:1]", "[::1", "localhost:5000:1", "::1", "", "2130706433"]


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_dev_mode_answers_loopback_hosts(client: FlaskClient, user: str, host: str) -> None:
    assert client.get("/api/health", headers={"Host": host}).status_code == 200
    assert client.get(f"/api/plans?user_id={user}", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_dev_mode_refuses_other_hosts_as_a_rebinding_page_would_send(client: FlaskClient, user: str, host: str) -> None:
    for response in (
        client.get("/api/health", headers={"Host": host}),
        client.get(f"/api/plans?user_id={user}", headers={"Host": host}),
        client.post("/api/plans", json={"user_id": user, "name": "rebound"}, headers={"Host": host}),
    ):
        error = assert_json_error(response, 403, "host_not_allowed")
        assert "ALLOWED_HOSTS" in error["message"]
    assert resp_json(client.get(f"/api/plans?user_id={user}"))["plans"] == []  # nothing was created


def test_allowed_hosts_adds_names_in_dev_mode(app_with) -> None:
    client = app_with(allowed_hosts=("pilot.lan", "10.0.0.5"))
    for host in ("pilot.lan", "PILOT.lan:5000", "10.0.0.5:5000", "localhost:5000"):
        assert client.get("/api/health", headers={"Host": host}).status_code == 200, host
    for host in ("other.lan", "sub.pilot.lan", "10.0.0.6"):
        assert_json_error(client.get("/api/health", headers={"Host": host}), 403, "host_not_allowed")
    anyone = app_with(allowed_hosts=("*",))
    assert anyone.get("/api/health", headers={"Host": "evil.example"}).status_code == 200


def test_token_mode_answers_any_host_unless_allowed_hosts_is_set(app_with) -> None:
    """A bearer token is not sent by a rebinding page, so token mode needs no default host list."""
    open_ = app_with(auth_mode="token", jwt_secret="x" * 32)
    assert open_.get("/api/health", headers={"Host": "pilot.example.com"}).status_code == 200
    assert open_.get("/api/plans", headers={"Host": "pilot.example.com"}).status_code == 401
    closed = app_with(auth_mode="token", jwt_secret="x" * 32, allowed_hosts=("pilot.example.com",))
    assert closed.get("/api/health", headers={"Host": "pilot.example.com"}).status_code == 200
    assert closed.get("/api/health", headers={"Host": "127.0.0.1:5000"}).status_code == 200
    assert_json_error(closed.get("/api/health", headers={"Host": "evil.example"}), 403, "host_not_allowed")
