"""Credentials through the HTTP API: encrypted at rest, masked in responses, isolated per user."""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg2
import pytest
from cryptography.fernet import Fernet, InvalidToken
from flask.testing import FlaskClient

from pilot.security.vault import CredentialDecryptError, Vault, mask
from tests.conftest import make_app, resp_json
from tests.fake_upstreams import FakeOpenAI

SECRET = "sk-proj-SECRETVALUE-0123456789abcdefXYZ"


def store(client: FlaskClient, user: str, provider: str = "openai", **creds: str):
    return client.post(f"/api/provider-credentials/{provider}", json={"user_id": user, "credentials": creds})


def test_checklist_integration_tests_1_and_2(client: FlaskClient) -> None:
    response = client.post(
        "/api/provider-credentials/openai",
        json={"user_id": "test_user_123", "credentials": {"api_key": "test_key_abc"}},
    )
    assert response.status_code == 200
    response = client.get("/api/provider-credentials/openai?user_id=test_user_123")
    assert response.status_code == 200
    assert resp_json(response)["credentials"][0]["masked_value"] == "…_abc"


def test_store_shows_masked_value_and_lists_by_provider(client: FlaskClient, user: str) -> None:
    response = store(client, user, api_key=SECRET, base_url="http://127.0.0.1:9/v1")
    assert response.status_code == 200
    assert SECRET not in response.get_data(as_text=True)
    shown = {c["type"]: c["masked_value"] for c in resp_json(response)["credentials"]}
    assert shown["api_key"] == "sk-…fXYZ"
    listed = resp_json(client.get(f"/api/provider-credentials?user_id={user}"))["credentials"]
    assert {(c["provider"], c["type"]) for c in listed} == {("openai", "api_key"), ("openai", "base_url")}
    assert all("encrypted_value" not in c for c in listed)


def test_store_again_replaces_the_value(client: FlaskClient, user: str) -> None:
    store(client, user, api_key="first-value-aaaa")
    store(client, user, api_key="second-value-bbbb")
    listed = resp_json(client.get(f"/api/provider-credentials/openai?user_id={user}"))["credentials"]
    assert [c["masked_value"] for c in listed] == ["sec…bbbb"]


def test_delete_one_type_then_the_provider(client: FlaskClient, user: str) -> None:
    store(client, user, api_key=SECRET, base_url="http://127.0.0.1:9/v1")
    assert client.delete(f"/api/provider-credentials/openai/base_url?user_id={user}").status_code == 204
    assert client.delete(f"/api/provider-credentials/openai/base_url?user_id={user}").status_code == 404
    assert client.delete(f"/api/provider-credentials/openai?user_id={user}").status_code == 204
    assert client.get(f"/api/provider-credentials/openai?user_id={user}").status_code == 404


def test_another_user_can_never_see_change_or_delete_credentials(
    client: FlaskClient, user: str, other_user: str
) -> None:
    store(client, user, api_key=SECRET)
    assert client.get(f"/api/provider-credentials/openai?user_id={other_user}").status_code == 404
    assert resp_json(client.get(f"/api/provider-credentials?user_id={other_user}"))["credentials"] == []
    assert client.delete(f"/api/provider-credentials/openai?user_id={other_user}").status_code == 404
    # "Overwriting" stores B's own row; A's value is untouched.
    assert store(client, other_user, api_key="b-key-000000000000").status_code == 200
    mine = resp_json(client.get(f"/api/provider-credentials/openai?user_id={user}"))["credentials"]
    assert [c["masked_value"] for c in mine] == [mask(SECRET)]
    # A user_id in the query that disagrees with the body is refused, not silently picked.
    response = client.post(
        f"/api/provider-credentials/openai?user_id={user}",
        json={"user_id": other_user, "credentials": {"api_key": "x" * 20}},
    )
    assert response.status_code == 400


def test_plaintext_appears_nowhere_in_database_responses_or_logs(
    fresh_db: str, tmp_path: Path, fernet_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(fresh_db, tmp_path, (fernet_key,))
    client = app.test_client()
    caplog.set_level(logging.DEBUG)
    bodies = [
        store(client, "alice", api_key=SECRET).get_data(as_text=True),
        client.get("/api/provider-credentials?user_id=alice").get_data(as_text=True),
        client.get("/api/provider-credentials/openai?user_id=alice").get_data(as_text=True),
    ]
    app.db.close()
    assert all(SECRET not in body for body in bodies)
    assert all(SECRET not in record.getMessage() for record in caplog.records)
    conn = psycopg2.connect(fresh_db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            tables = [row[0] for row in cur.fetchall()]
            for table in tables:
                cur.execute(f'SELECT t::text FROM "{table}" AS t')  # noqa: S608 - names from pg_tables
                assert all(SECRET not in row[0] for row in cur.fetchall()), table
    finally:
        conn.close()


def test_vault_binds_ciphertext_to_its_row() -> None:
    vault = Vault([Fernet.generate_key().decode()])
    token = vault.encrypt("alice", "openai", "api_key", SECRET)
    assert vault.decrypt("alice", "openai", "api_key", token) == SECRET
    for row in (("bob", "openai", "api_key"), ("alice", "groq", "api_key"), ("alice", "openai", "base_url")):
        with pytest.raises(CredentialDecryptError):
            vault.decrypt(*row, token)


def test_copied_ciphertext_does_not_decrypt_for_another_user(fresh_db: str, tmp_path: Path, fernet_key: str) -> None:
    app = make_app(fresh_db, tmp_path, (fernet_key,))
    client = app.test_client()
    store(client, "alice", api_key=SECRET)
    store(client, "mallory", api_key="mallory-key-000000")
    conn = psycopg2.connect(fresh_db)
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE provider_credentials SET encrypted_value = (SELECT encrypted_value FROM provider_credentials "
            "WHERE user_id = 'alice') WHERE user_id = 'mallory'"
        )
    conn.close()
    listed = resp_json(client.get("/api/provider-credentials/openai?user_id=mallory"))["credentials"]
    app.db.close()
    assert listed[0]["readable"] is False and listed[0]["masked_value"] == "…"


def test_rotate_key_reencrypts_under_the_new_key(fresh_db: str, tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    app = make_app(fresh_db, tmp_path, (old,))
    for name in ("alice", "bob"):
        assert store(app.test_client(), name, api_key=f"{name}-secret-0000000000").status_code == 200
    app.db.close()

    rotating = make_app(fresh_db, tmp_path, (new, old))
    result = rotating.test_cli_runner().invoke(args=["rotate-key"])
    assert result.exit_code == 0, result.output
    assert "re-encrypted 2 credential(s)" in result.output
    again = rotating.test_cli_runner().invoke(args=["rotate-key"])
    assert "re-encrypted 2 credential(s) under the first key (2 were already under it)" in again.output
    rotating.db.close()

    conn = psycopg2.connect(fresh_db)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT encrypted_value FROM provider_credentials")
        tokens = [row[0] for row in cur.fetchall()]
    conn.close()
    for token in tokens:
        Fernet(new.encode()).decrypt(token.encode())
        with pytest.raises(InvalidToken):
            Fernet(old.encode()).decrypt(token.encode())

    only_new = make_app(fresh_db, tmp_path, (new,))
    listed = resp_json(only_new.test_client().get("/api/provider-credentials?user_id=alice"))["credentials"]
    only_new.db.close()
    assert listed[0]["readable"] is True and listed[0]["masked_value"] == "ali…0000"


def test_import_env_credentials(
    fresh_db: str, tmp_path: Path, fernet_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-openai-0000000001")
    monkeypatch.setenv("GROQ_API_KEY", "gsk-env-groq-0000000002")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    app = make_app(fresh_db, tmp_path, (fernet_key,))
    result = app.test_cli_runner().invoke(args=["import-env-credentials", "--user", "carol"])
    assert result.exit_code == 0, result.output
    assert "sk-env-openai" not in result.output
    listed = resp_json(app.test_client().get("/api/provider-credentials?user_id=carol"))["credentials"]
    app.db.close()
    assert {(c["provider"], c["masked_value"]) for c in listed} == {("openai", "sk-…0001"), ("groq", "gsk…0002")}


def test_gen_key_prints_a_usable_fernet_key(app) -> None:
    result = app.test_cli_runner().invoke(args=["gen-key"])
    assert result.exit_code == 0, result.output
    key = result.output.strip()
    assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"round trip")) == b"round trip"
    second = app.test_cli_runner().invoke(args=["gen-key"])
    assert second.exit_code == 0 and second.output.strip() != key  # a new key each time


# --- unreadable credentials (issue 7, item 10) ---------------------------------------------


def copy_ciphertext(dsn: str, user: str, provider: str, into_type: str, from_type: str) -> None:
    """Put another row's ciphertext into ``into_type``: it decrypts, but its envelope names another row."""
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE provider_credentials SET encrypted_value = (SELECT encrypted_value FROM provider_credentials "
            "WHERE user_id = %(u)s AND provider = %(p)s AND type = %(src)s) "
            "WHERE user_id = %(u)s AND provider = %(p)s AND type = %(dst)s",
            {"u": user, "p": provider, "src": from_type, "dst": into_type},
        )
        assert cur.rowcount == 1
    conn.close()


def chat_step(provider: str) -> dict:
    return {"provider": provider, "action": "chat_completion", "params": {"prompt": "hi"}}


def test_an_unreadable_credential_fails_its_provider_naming_the_type_and_spares_the_others(
    client: FlaskClient, session_db: str, user: str
) -> None:
    with FakeOpenAI() as fake:
        for provider in ("openai", "groq"):
            assert store(client, user, provider, api_key=SECRET, base_url=fake.base_url).status_code == 200
        copy_ciphertext(session_db, user, "openai", "base_url", "api_key")

        tested = client.post(f"/api/provider-credentials/openai/test?user_id={user}")
        assert tested.status_code == 409, tested.get_data(as_text=True)
        error = resp_json(tested)["error"]
        assert error["code"] == "credential_unreadable" and "base_url" in error["message"]
        assert error["details"] == {"provider": "openai", "types": ["base_url"]}
        assert SECRET not in tested.get_data(as_text=True)

        ran = client.post("/api/execute-step", json={"user_id": user, "step": chat_step("openai")})
        assert ran.status_code == 200 and resp_json(ran)["success"] is False
        assert (
            resp_json(ran)["error"]["code"] == "credential_unreadable"
            and "base_url" in resp_json(ran)["error"]["message"]
        )
        assert fake.requests == []  # the key was not sent to the default endpoint instead

        groq_test = client.post(f"/api/provider-credentials/groq/test?user_id={user}")
        assert groq_test.status_code == 200 and resp_json(groq_test)["success"] is True
        groq = client.post("/api/execute-step", json={"user_id": user, "step": chat_step("groq")})
        assert groq.status_code == 200 and resp_json(groq)["success"] is True, groq.json

        listed = {
            c["type"]: c["readable"]
            for c in resp_json(client.get(f"/api/provider-credentials/openai?user_id={user}"))["credentials"]
        }
        assert listed == {"api_key": True, "base_url": False}
        # Storing the value again is the way out.
        assert store(client, user, "openai", base_url=fake.base_url).status_code == 200
        again = client.post("/api/execute-step", json={"user_id": user, "step": chat_step("openai")})
        assert resp_json(again)["success"] is True, again.json


def test_an_unreadable_credential_type_the_provider_does_not_use_is_ignored(
    client: FlaskClient, session_db: str, user: str
) -> None:
    with FakeOpenAI() as fake:
        assert store(client, user, "openai", api_key=SECRET, base_url=fake.base_url, legacy=SECRET).status_code == 200
        copy_ciphertext(session_db, user, "openai", "legacy", "api_key")
        assert resp_json(client.post(f"/api/provider-credentials/openai/test?user_id={user}"))["success"] is True
        ran = client.post("/api/execute-step", json={"user_id": user, "step": chat_step("openai")})
        assert resp_json(ran)["success"] is True, ran.json


def test_credentials_under_a_key_no_longer_configured_are_409_not_500(
    client: FlaskClient, session_db: str, tmp_path: Path, user: str
) -> None:
    assert store(client, user, "openai", api_key=SECRET, base_url="http://127.0.0.1:9/v1").status_code == 200
    other = make_app(session_db, tmp_path, (Fernet.generate_key().decode(),))
    try:
        tested = other.test_client().post(f"/api/provider-credentials/openai/test?user_id={user}")
        assert tested.status_code == 409, tested.get_data(as_text=True)
        assert resp_json(tested)["error"]["details"]["types"] == ["api_key", "base_url"]
        assert "FERNET_KEY" in resp_json(tested)["error"]["message"]
    finally:
        other.db.close()
