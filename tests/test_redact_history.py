"""``flask --app app redact-history``: secrets that already leaked into stored rows are redacted.

Rows are written through the API (a key echoed back before it was stored as a credential, cut
at 500 characters; a plan with an inline secret header). Rows as earlier versions wrote them
(inline header values in logged params, a key-shaped string in an error) are made by putting
the old content back with SQL, since this version no longer writes them.
"""

from __future__ import annotations

import json
import secrets
import string
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from flask.testing import FlaskClient
from psycopg2 import sql
from psycopg2.extras import Json

from pilot.application import PilotApp
from pilot.security.redaction import REDACTED
from tests.conftest import admin_execute, make_app, resp_json
from tests.fake_upstreams import Reply, WebhookReceiver

SHAPED = "sk-proj-" + "Ab1" * 10  # an OpenAI-shaped key nobody stored


def make_key() -> str:
    return "pk" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(46))


def fragments(text: str, key: str, size: int = 8) -> list[str]:
    return sorted({key[i : i + size] for i in range(len(key) - size + 1) if key[i : i + size] in text})


def query(dsn: str, statement: str | sql.Composable, params: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            rows = cur.fetchall() if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


def history(dsn: str) -> str:
    logs = query(dsn, "SELECT id, error, input, output FROM execution_logs ORDER BY id")
    runs = query(dsn, "SELECT id, error, step_results FROM plan_runs ORDER BY id")
    return json.dumps([logs, runs], default=str)


@pytest.fixture
def ops_app(fresh_db: str, tmp_path: Path, fernet_key: str) -> Iterator[PilotApp]:
    app = make_app(fresh_db, tmp_path, (fernet_key,))
    yield app
    app.db.close()


@pytest.fixture
def client(ops_app: PilotApp) -> FlaskClient:
    return ops_app.test_client()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as fake:
        yield fake


def redact_history(app: PilotApp, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=["redact-history", *args])
    assert result.exit_code == 0, result.output
    return result.output


def webhook(url: str, **params: Any) -> dict[str, Any]:
    return {"provider": "webhook", "action": "request", "params": {"url": url, **params}, "retry": {"max_attempts": 1}}


def run_plan(client: FlaskClient, user: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    plan = client.post("/api/plans", json={"user_id": user, "name": "p", "steps": steps})
    assert plan.status_code == 201, plan.json
    run = client.post(f"/api/plans/{resp_json(plan)['id']}/run?wait=true", json={"user_id": user})
    assert run.status_code == 200, run.json
    return resp_json(run)


def test_leaked_values_fragments_and_headers_are_redacted_and_a_rerun_changes_nothing(
    ops_app: PilotApp, client: FlaskClient, fresh_db: str, receiver: WebhookReceiver
) -> None:
    key = make_key()
    # The receiver echoes a key that alice has not stored yet: nothing could redact it, and the
    # 500-character cut leaves 20 of its characters at the end of the error.
    echo = Reply(500, body="x" * 480 + key + " was refused")
    receiver.script(echo, echo)
    step = webhook(receiver.url + "/hook", method="GET")
    answer = resp_json(client.post("/api/execute-step", json={"user_id": "alice", "step": step}))
    assert answer["error"]["message"].endswith(key[:20])
    run_plan(client, "alice", [step, {"provider": "logic", "action": "transform", "params": {"template": key}}])
    run_plan(client, "alice", [{"provider": "logic", "action": "transform", "params": {"template": {"k": key}}}])
    # Inline header values as earlier versions logged them, whole and in a truncated preview.
    inline = webhook(receiver.url + "/h", json={}, headers={"X-Api-Key": "inline-hdr-5555", "X-Trace": "t-visible"})
    assert resp_json(client.post("/api/execute-step", json={"user_id": "alice", "step": inline}))["success"]
    (header_log,) = query(fresh_db, "SELECT max(id) FROM execution_logs")[0]
    query(
        fresh_db,
        "UPDATE execution_logs SET input = jsonb_set(input, '{headers,X-Api-Key}', %s) WHERE id = %s",
        (Json("inline-hdr-5555"), header_log),
    )
    preview = json.dumps({"url": "u", "headers": {"Authorization": "Token inline-auth-6666", "X-Trace": "t-visible"}})
    query(
        fresh_db,
        "UPDATE execution_logs SET output = %s WHERE id = (SELECT min(id) FROM execution_logs)",
        (Json({"truncated": True, "original_chars": 40_000, "preview": preview[:-20]}),),
    )
    # bob: a key-shaped string an earlier version stored, and a credential that no longer decrypts.
    client.post("/api/execute-step", json={"user_id": "bob", "step": webhook(receiver.url + "/b", method="GET")})
    query(fresh_db, "UPDATE execution_logs SET error = %s WHERE user_id = 'bob'", (f"refused {SHAPED}",))
    stored = client.post(
        "/api/provider-credentials/webhook", json={"user_id": "bob", "credentials": {"bearer_token": "bob-token-77"}}
    )
    assert stored.status_code == 200
    query(fresh_db, "UPDATE provider_credentials SET encrypted_value = 'not-a-fernet-token' WHERE user_id = 'bob'")
    # Now alice stores the key: from here on, redaction knows it.
    stored = client.post(
        "/api/provider-credentials/webhook", json={"user_id": "alice", "credentials": {"header:X-Api-Key": key}}
    )
    assert stored.status_code == 200
    before = history(fresh_db)
    assert fragments(before, key) and "inline-hdr-5555" in before and "inline-auth-6666" in before
    assert SHAPED in before
    logs_before = query(fresh_db, "SELECT count(*) FROM execution_logs")

    output = redact_history(ops_app, "--batch-size", "2")
    print(output)

    after = history(fresh_db)
    assert fragments(after, key) == []
    for leaked in ("inline-hdr-5555", "inline-auth-6666", SHAPED):
        assert leaked not in after
    assert "t-visible" in after and REDACTED in after
    assert query(fresh_db, "SELECT count(*) FROM execution_logs") == logs_before
    assert "execution_logs: 5 scanned, 5 changed" in output, output
    assert "plan_runs: 2 scanned, 2 changed" in output, output
    assert "bob" in output and "bearer_token" in output and "cannot be decrypted" in output
    assert fragments(output, key) == [] and "bob-token-77" not in output

    again = redact_history(ops_app, "--batch-size", "2")
    assert "execution_logs: 5 scanned, 0 changed" in again, again
    assert "plan_runs: 2 scanned, 0 changed" in again, again
    assert history(fresh_db) == after


def test_plans_with_inline_secret_headers_are_reported_then_moved_into_the_vault_on_request(
    ops_app: PilotApp, client: FlaskClient, fresh_db: str, receiver: WebhookReceiver
) -> None:
    plan_key = "plan-inline-key-" + uuid.uuid4().hex
    steps = [
        webhook(receiver.url + "/h", json={"a": 1}, headers={"X-Api-Key": plan_key, "X-Trace": "t"}),
        webhook(receiver.url + "/h", headers={"X-Api-Key": "{{ input.key }}"}),  # a reference, not a secret
        {"provider": "logic", "action": "transform", "params": {"template": {"token": SHAPED}}},
    ]
    plan = resp_json(client.post("/api/plans", json={"user_id": "alice", "name": "p", "steps": steps}))
    bob_steps = [webhook(receiver.url + "/b", headers={"x-api-key": "bob-inline-key-4444"})]
    bob_plan = resp_json(client.post("/api/plans", json={"user_id": "bob", "name": "p", "steps": bob_steps}))
    client.post(
        "/api/provider-credentials/webhook", json={"user_id": "bob", "credentials": {"header:x-api-key": "other"}}
    )

    reported = redact_history(ops_app)
    print(reported)
    assert resp_json(client.get(f"/api/plans/{plan['id']}?user_id=alice"))["steps"] == plan["steps"]
    assert f"plan {plan['id']} (alice): steps[0].params.headers.X-Api-Key" in reported, reported
    assert f"plan {plan['id']} (alice): steps[2].params.template.token" in reported, reported
    assert "steps[1]" not in reported
    assert "--move-plan-headers" in reported
    assert plan_key not in reported and SHAPED not in reported

    moved = redact_history(ops_app, "--move-plan-headers")
    print(moved)
    assert "execution_plans: 2 scanned, 1 changed" in moved, moved
    saved = resp_json(client.get(f"/api/plans/{plan['id']}?user_id=alice"))["steps"]
    assert saved[0]["params"]["headers"] == {"X-Trace": "t"}
    assert saved[0]["params"]["auth"] == "header:X-Api-Key"
    assert saved[1:] == plan["steps"][1:]
    assert plan_key not in json.dumps(query(fresh_db, "SELECT steps FROM execution_plans"), default=str)
    # ... nor in the plan's earlier versions (migration 016): version 1 is moved the same way.
    assert "plan_versions: 3 scanned, 1 changed" in moved, moved  # v1 of each plan, and v2 the move wrote
    assert plan_key not in json.dumps(query(fresh_db, "SELECT steps FROM plan_versions"), default=str)
    types = [
        row["type"] for row in resp_json(client.get("/api/provider-credentials/webhook?user_id=alice"))["credentials"]
    ]
    assert types == ["header:X-Api-Key"]
    # bob already stores a different value for that header: his plan is left as it is, and said so.
    assert resp_json(client.get(f"/api/plans/{bob_plan['id']}?user_id=bob"))["steps"] == bob_plan["steps"]
    assert f"plan {bob_plan['id']} (bob): steps[0].params.headers.x-api-key" in moved
    assert "already stores a different" in moved and "1 inline secret header(s) could not be moved" in moved

    run = client.post(f"/api/plans/{plan['id']}/run?wait=true", json={"user_id": "alice", "input": {"key": "k-1"}})
    assert resp_json(run)["status"] == "success", run.json
    assert receiver.requests[0].header("X-Api-Key") == plan_key  # the moved plan still authenticates
    assert receiver.requests[0].header("X-Trace") == "t"

    again = redact_history(ops_app, "--move-plan-headers")
    assert "execution_plans: 2 scanned, 0 changed" in again, again


def test_bad_batch_size_is_refused(ops_app: PilotApp) -> None:
    result = ops_app.test_cli_runner().invoke(args=["redact-history", "--batch-size", "0"])
    assert result.exit_code != 0 and "--batch-size" in result.output


@pytest.fixture
def plain_role(admin_dsn: str) -> Iterator[str]:
    """A login role without superuser or BYPASSRLS, member of pilot_app."""
    name = f"pilot_ops_{uuid.uuid4().hex[:8]}"
    admin_execute(admin_dsn, sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(name)))
    admin_execute(admin_dsn, sql.SQL("GRANT pilot_app TO {}").format(sql.Identifier(name)))
    yield name
    admin_execute(admin_dsn, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def test_refuses_a_role_that_cannot_see_every_user(
    fresh_db: str, plain_role: str, tmp_path: Path, fernet_key: str
) -> None:
    app = make_app(psycopg2.extensions.make_dsn(fresh_db, user=plain_role), tmp_path, (fernet_key,))
    try:
        result = app.test_cli_runner().invoke(args=["redact-history"])
    finally:
        app.db.close()
    assert result.exit_code == 1
    assert "bypasses row-level security" in result.output


def test_preview_headers_and_pieces_anywhere() -> None:
    from pilot.ops.history_redaction import redact_preview_headers
    from pilot.security.redaction import Redactor

    text = '{"url": "u", "headers": {"X-Trace": "a\\"b", "Cookie": "s=\\"1\\"", "X-Api-Key": "cut-off-va'
    assert redact_preview_headers(text) == (
        '{"url": "u", "headers": {"X-Trace": "a\\"b", "Cookie": "[REDACTED]", "X-Api-Key": "[REDACTED]"'
    )
    assert redact_preview_headers('{"json": {"token": "kept"}}') == '{"json": {"token": "kept"}}'
    key = make_key()
    history_redactor = Redactor([key], pieces_anywhere=True)
    assert history_redactor.text(f'"body": "{key[:15]}", "n": 1') == '"body": "[REDACTED]", "n": 1'
    assert history_redactor.text(f"x {key[-9:]} y") == "x [REDACTED] y"
    assert history_redactor.text(f"x {key[10:30]} y") == f"x {key[10:30]} y"  # from inside: no cut made it


def test_a_replays_copies_of_reused_results_are_redacted_too(
    ops_app: PilotApp, client: FlaskClient, fresh_db: str
) -> None:
    key = make_key()
    steps = [
        {"id": "a", "provider": "logic", "action": "transform", "params": {"template": {"k": key}}},
        {"id": "b", "provider": "logic", "action": "transform", "params": {"template": "{{ input.no.x }}"}},
    ]
    failed = run_plan(client, "alice", steps)
    replayed = client.post(
        f"/api/runs/{failed['id']}/replay?wait=true",
        json={"user_id": "alice", "params": {"b": {"template": "fine"}}},
    )
    assert replayed.status_code == 200 and resp_json(replayed)["status"] == "success"
    stored = client.post(
        "/api/provider-credentials/webhook", json={"user_id": "alice", "credentials": {"header:X-Api-Key": key}}
    )
    assert stored.status_code == 200

    def copies() -> str:
        return json.dumps(query(fresh_db, "SELECT replay FROM plan_runs WHERE replay IS NOT NULL"))

    assert key in copies()

    assert "plan_runs: 2 scanned, 2 changed" in redact_history(ops_app)
    assert key not in copies() and REDACTED in copies()
