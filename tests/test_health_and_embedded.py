"""Health reporting, and the embedded PostgreSQL a fresh machine starts with."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from flask.testing import FlaskClient

from tests.conftest import make_app, resp_json


def test_health_is_healthy_with_database_and_providers(client: FlaskClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    body = resp_json(response)
    assert body["status"] == "healthy" and body["database"]["status"] == "ok"
    assert {"openai", "groq", "webhook", "logic"} <= set(body["providers"])
    assert body["timestamp"]


def test_health_is_503_when_the_database_is_down(tmp_path: Path) -> None:
    app = make_app(
        "postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=2", tmp_path, (Fernet.generate_key().decode(),)
    )
    response = app.test_client().get("/api/health")
    assert response.status_code == 503
    assert resp_json(response)["status"] == "unhealthy" and resp_json(response)["database"]["status"] == "down"
    # Data routes say the database is unavailable with a JSON 503, not a 500.
    plans = app.test_client().get("/api/plans?user_id=u")
    assert plans.status_code == 503 and resp_json(plans)["error"]["code"] == "database_error"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir outside pytest's temp root, which other pytest sessions of this user change under us.

    As root, pgserver runs PostgreSQL as the user ``pgserver`` and opens every parent
    of the data dir for traversal (g+rx, o+rx). Any pytest session of the same user
    that starts meanwhile resets ``/tmp/pytest-of-<user>`` to 0700, and the server
    can then no longer reach its data ("Permission denied"). A directory of its own
    under the system temp dir has no such neighbour.
    """
    path = Path(tempfile.mkdtemp(prefix="pilot-embedded-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_embedded_default_starts_migrates_and_keeps_data_across_restarts(data_dir: Path) -> None:
    """DATABASE_URL unset: pgserver under the data dir, migrated on first use; data survives a new process."""
    from database import _embedded_servers

    first = make_app(None, data_dir, (), pilot_env="development")
    client = first.test_client()
    health = client.get("/api/health")
    assert health.status_code == 200 and resp_json(health)["database"]["embedded"] is True
    assert (data_dir / "fernet.key").stat().st_mode & 0o777 == 0o600
    stored = client.post(
        "/api/provider-credentials/openai",
        json={"user_id": "newcomer", "credentials": {"api_key": "sk-embedded-000000000001"}},
    )
    assert stored.status_code == 200
    plan = client.post("/api/plans", json={"user_id": "newcomer", "name": "kept", "steps": []})
    assert plan.status_code == 201
    first.db.close()
    server = _embedded_servers.pop((data_dir / "pgdata").resolve())
    server.cleanup()  # stop the server, as a process exit would

    second = make_app(None, data_dir, (), pilot_env="development")
    client = second.test_client()
    creds = client.get("/api/provider-credentials/openai?user_id=newcomer")
    assert creds.status_code == 200 and resp_json(creds)["credentials"][0]["masked_value"] == "sk-…0001"
    assert [p["name"] for p in resp_json(client.get("/api/plans?user_id=newcomer"))["plans"]] == ["kept"]
    second.db.close()
    _embedded_servers.pop((data_dir / "pgdata").resolve()).cleanup()


def test_token_mode_health_says_only_what_a_load_balancer_needs(session_db: str, tmp_path: Path) -> None:
    """No process owner ids, pids, host names, start times or error texts without authentication."""
    from execution_engine import process_owner_id
    from scheduler import start_for_serving, stop_for_serving

    key = (Fernet.generate_key().decode(),)
    app = make_app(session_db, tmp_path, key, auth_mode="token", jwt_secret="x" * 32, scheduler_enabled=True)
    try:
        assert start_for_serving(app) is not None
        response = app.test_client().get("/api/health")
        assert response.status_code == 200
        assert response.json == {
            "status": "healthy",
            "timestamp": resp_json(response)["timestamp"],
            "database": {"status": "ok"},
            "scheduler": {"status": "running"},
            "auth_mode": "token",
        }
        text = response.get_data(as_text=True)
        for private in (process_owner_id(), process_owner_id().split(":")[0]):
            assert private not in text
    finally:
        stop_for_serving(app, timeout=2)
        app.db.close()
    down = make_app("postgresql://postgres@127.0.0.1:1/x?connect_timeout=2", tmp_path, key, auth_mode="token")
    response = down.test_client().get("/api/health")
    assert response.status_code == 503
    assert resp_json(response)["database"] == {"status": "down"} and resp_json(response)["status"] == "unhealthy"


def test_dev_mode_health_keeps_its_details(client: FlaskClient) -> None:
    body = resp_json(client.get("/api/health"))
    assert body["auth_mode"] == "dev" and body["database"]["embedded"] is False and body["providers"]
