"""AUTH_MODE=token: Pilot API tokens (create-token, revoke-token) and HS256 JWTs, on a real PostgreSQL."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import psycopg2
import pytest
from flask.testing import FlaskClient

from pilot.application import PilotApp
from pilot.security import tokens
from tests.conftest import make_app, resp_json

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256!"


@pytest.fixture
def token_app(session_db: str, tmp_path: Path, fernet_key: str) -> Iterator[PilotApp]:
    app = make_app(session_db, tmp_path, (fernet_key,), auth_mode="token", jwt_secret=JWT_SECRET)
    yield app
    app.db.close()


@pytest.fixture
def token_client(token_app: PilotApp) -> FlaskClient:
    return token_app.test_client()


def create_token(app: PilotApp, user: str, *extra: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["create-token", user, *extra])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    token_id = int(result.stderr.split()[1])
    return token_id, token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_jwt(subject: str, *, expires_in: int = 300, secret: str = JWT_SECRET) -> str:
    return jwt.encode({"sub": subject, "exp": int(time.time()) + expires_in}, secret, algorithm="HS256")


def test_create_token_prints_a_token_stored_only_as_its_hash(token_app: PilotApp, session_db: str, user: str) -> None:
    token_id, token = create_token(token_app, user, "--name", "ci")
    assert token.startswith("pilot_") and len(token) == len("pilot_") + 43
    conn = psycopg2.connect(session_db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT user_id, name, token_hash FROM api_tokens WHERE id = %s", (token_id,))
            stored = cur.fetchone()
            cur.execute(
                "SELECT count(*) FROM api_tokens WHERE token_hash = %s OR token_hash LIKE %s", (token, "pilot%")
            )
            plain = cur.fetchone()[0]
    finally:
        conn.close()
    assert stored == (user, "ci", hashlib.sha256(token.encode()).hexdigest())
    assert plain == 0


def test_api_token_authenticates_as_its_user(token_app: PilotApp, token_client: FlaskClient, user: str) -> None:
    _, token = create_token(token_app, user)
    created = token_client.post("/api/plans", json={"name": "by token", "steps": []}, headers=bearer(token))
    assert created.status_code == 201, created.json
    assert resp_json(created)["user_id"] == user
    listed = token_client.get("/api/plans", headers=bearer(token))
    assert listed.status_code == 200 and [p["name"] for p in resp_json(listed)["plans"]] == ["by token"]
    # The same user_id, stated explicitly, is accepted.
    assert token_client.get(f"/api/plans?user_id={user}", headers=bearer(token)).status_code == 200


def test_api_token_with_another_user_id_is_403(
    token_app: PilotApp, token_client: FlaskClient, user: str, other_user: str
) -> None:
    _, token = create_token(token_app, user)
    in_body = token_client.post("/api/plans", json={"user_id": other_user, "name": "x"}, headers=bearer(token))
    assert in_body.status_code == 403 and resp_json(in_body)["error"]["code"] == "forbidden"
    in_query = token_client.get(f"/api/plans?user_id={other_user}", headers=bearer(token))
    assert in_query.status_code == 403


def test_revoked_token_is_401(token_app: PilotApp, token_client: FlaskClient, user: str) -> None:
    token_id, token = create_token(token_app, user)
    assert token_client.get("/api/plans", headers=bearer(token)).status_code == 200
    result = token_app.test_cli_runner().invoke(args=["revoke-token", str(token_id), "--user", user])
    assert result.exit_code == 0, result.output
    response = token_client.get("/api/plans", headers=bearer(token))
    assert response.status_code == 401 and resp_json(response)["error"]["code"] == "unauthorized"
    assert "revoked" in resp_json(response)["error"]["message"]


def test_revoke_token_of_another_user_is_refused(token_app: PilotApp, user: str, other_user: str) -> None:
    token_id, _ = create_token(token_app, user)
    runner = token_app.test_cli_runner()
    result = runner.invoke(args=["revoke-token", str(token_id), "--user", other_user])
    assert result.exit_code == 1 and "no active token" in result.output
    assert runner.invoke(args=["revoke-token", str(token_id), "--user", user]).exit_code == 0
    again = runner.invoke(args=["revoke-token", str(token_id), "--user", user])
    assert again.exit_code == 1 and "no active token" in again.output


def test_list_tokens_shows_state_never_secrets(token_app: PilotApp, token_client: FlaskClient, user: str) -> None:
    first, token = create_token(token_app, user, "--name", "laptop")
    second, _ = create_token(token_app, user)
    token_client.get("/api/plans", headers=bearer(token))
    runner = token_app.test_cli_runner()
    runner.invoke(args=["revoke-token", str(second), "--user", user])
    listed = runner.invoke(args=["list-tokens", "--user", user])
    assert listed.exit_code == 0
    lines = listed.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(first), str(second)]
    assert "laptop" in lines[0] and "active" in lines[0] and "used never" not in lines[0]
    assert "revoked" in lines[1] and "used never" in lines[1]
    assert token not in listed.output and hashlib.sha256(token.encode()).hexdigest() not in listed.output


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer pilot_not-a-real-token"},
        {"Authorization": "Bearer pilot_" + "x" * 500},
        {"Authorization": "Bearer not.a.jwt"},
    ],
)
def test_missing_or_unknown_credentials_are_401(token_client: FlaskClient, headers: dict[str, str]) -> None:
    response = token_client.get("/api/plans", headers=headers)
    assert response.status_code == 401 and resp_json(response)["error"]["code"] == "unauthorized"


def test_no_token_is_401_even_with_a_user_id(token_client: FlaskClient, user: str) -> None:
    assert token_client.get(f"/api/plans?user_id={user}").status_code == 401


def test_hs256_jwt_authenticates_its_subject(token_client: FlaskClient, user: str, other_user: str) -> None:
    token = make_jwt(user)
    created = token_client.post("/api/plans", json={"name": "by jwt"}, headers=bearer(token))
    assert created.status_code == 201 and resp_json(created)["user_id"] == user
    mismatch = token_client.get(f"/api/plans?user_id={other_user}", headers=bearer(token))
    assert mismatch.status_code == 403


@pytest.mark.parametrize(
    "token",
    [
        make_jwt("someone", expires_in=-60),
        make_jwt("someone", secret="another-secret-that-is-long-enough-too!"),
        jwt.encode({"sub": "someone"}, JWT_SECRET, algorithm="HS256"),  # no exp
    ],
    ids=["expired", "wrong-secret", "no-exp"],
)
def test_invalid_jwts_are_401(token_client: FlaskClient, token: str) -> None:
    response = token_client.get("/api/plans", headers=bearer(token))
    assert response.status_code == 401 and resp_json(response)["error"]["code"] == "unauthorized"


def test_dev_mode_ignores_bearer_tokens(client: FlaskClient, user: str) -> None:
    response = client.get(f"/api/plans?user_id={user}", headers=bearer("pilot_whatever"))
    assert response.status_code == 200


def test_create_token_rejects_a_bad_user(token_app: PilotApp) -> None:
    result = token_app.test_cli_runner().invoke(args=["create-token", " padded"])
    assert result.exit_code == 2 and "printable" in result.output


def test_token_table_has_forced_rls_four_policies_and_a_narrow_lookup(session_db: str, user: str) -> None:
    conn = psycopg2.connect(session_db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = 'api_tokens'")
            assert cur.fetchone() == (True, True)
            cur.execute("SELECT array_agg(cmd ORDER BY cmd) FROM pg_policies WHERE tablename = 'api_tokens'")
            assert cur.fetchone()[0] == ["DELETE", "INSERT", "SELECT", "UPDATE"]
            cur.execute(
                "SELECT prosecdef, proconfig, has_function_privilege('pilot_app', oid, 'EXECUTE'),"
                " coalesce((SELECT bool_or(a.grantee = 0) FROM aclexplode(proacl) a), proacl IS NULL)"
                " FROM pg_proc WHERE proname = 'pilot_token_user'"
            )
            secdef, config, app_may, public_may = cur.fetchone()
            assert secdef and config == ["search_path=public, pg_temp"] and app_may and not public_may
            token = tokens.generate()
            cur.execute("SET LOCAL ROLE pilot_app; SELECT set_config('app.current_user_id', %s, true)", (user,))
            cur.execute("INSERT INTO api_tokens (user_id, token_hash) VALUES (%s, %s)", (user, tokens.digest(token)))
            conn.commit()
            # As pilot_app with no user: the table shows nothing, the function answers for one hash only.
            cur.execute("SET LOCAL ROLE pilot_app")
            cur.execute("SELECT count(*) FROM api_tokens")
            assert cur.fetchone()[0] == 0
            cur.execute("SELECT pilot_token_user(%s), pilot_token_user(%s)", (tokens.digest(token), "0" * 64))
            assert cur.fetchone() == (user, None)
            conn.rollback()
    finally:
        conn.close()
