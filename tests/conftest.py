"""Fixtures: a real PostgreSQL for every test, reached through the same path requests use.

``TEST_DATABASE_URL`` names a server to use (CI: the one on 127.0.0.1:5432);
without it an embedded PostgreSQL (pgserver) starts in a temporary directory.
Each session migrates a template database once, works in a fresh clone of it,
and drops everything it created; ``fresh_db`` clones one more for a test that
needs to see whole tables.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from cryptography.fernet import Fernet
from flask.testing import FlaskClient
from psycopg2 import sql
from werkzeug.test import TestResponse

RUN_TAG = uuid.uuid4().hex[:8]
# The checklist's lazy ``app`` (built on first use) may write a development key:
# keep that out of the working tree.
os.environ.setdefault("PILOT_DATA_DIR", tempfile.mkdtemp(prefix="pilot-data-"))

from app import create_app  # noqa: E402
from database import migrate  # noqa: E402
from pilot.application import PilotApp  # noqa: E402
from provider_registry import ProviderRegistry  # noqa: E402


def resp_json(response: TestResponse) -> Any:
    """The JSON body of a test client's response; fails the test (showing the text) when there is none."""
    data = response.get_json(silent=True)
    assert data is not None, f"{response.status}: {response.get_data(as_text=True)[:500]}"
    return data


def dsn_for(admin_dsn: str, dbname: str) -> str:
    return psycopg2.extensions.make_dsn(admin_dsn, dbname=dbname)


def admin_execute(admin_dsn: str, statement: sql.Composable | str, params: Any = None) -> None:
    conn = psycopg2.connect(admin_dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement, params)
    finally:
        conn.close()


def create_database(admin_dsn: str, name: str, template: str | None = None) -> str:
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
    admin_execute(admin_dsn, statement)
    return dsn_for(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    admin_execute(
        admin_dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )
    admin_execute(admin_dsn, sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        tmp = tempfile.mkdtemp(prefix="pilot-pg-")
        server = pgserver.get_server(Path(tmp), cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def template_db(admin_dsn: str) -> Iterator[str]:
    name = f"pilot_test_{RUN_TAG}_tpl"
    migrate(create_database(admin_dsn, name))
    yield name
    drop_database(admin_dsn, name)


@pytest.fixture(scope="session")
def session_db(admin_dsn: str, template_db: str) -> Iterator[str]:
    name = f"pilot_test_{RUN_TAG}"
    dsn = create_database(admin_dsn, name, template_db)
    yield dsn
    drop_database(admin_dsn, name)


@pytest.fixture
def fresh_db(admin_dsn: str, template_db: str) -> Iterator[str]:
    """A migrated database of this test's own, for checks over whole tables."""
    name = f"pilot_test_{RUN_TAG}_{uuid.uuid4().hex[:8]}"
    dsn = create_database(admin_dsn, name, template_db)
    yield dsn
    drop_database(admin_dsn, name)


@pytest.fixture(scope="session")
def fernet_key() -> str:
    return Fernet.generate_key().decode()


def make_app(
    dsn: str | None,
    data_dir: Path,
    keys: tuple[str, ...],
    *,
    registry: ProviderRegistry | None = None,
    **overrides: Any,
) -> PilotApp:
    """An app on ``dsn`` for tests: no scheduler, a small pool, loopback outbound calls allowed."""
    config: dict[str, Any] = {
        "database_url": dsn,
        "data_dir": data_dir,
        "fernet_keys": keys,
        "scheduler_enabled": False,
        "db_pool_size": 4,
        "outbound_allowlist": ("127.0.0.1",),
        "auth_mode": "dev",
        "pilot_env": "test",
    }
    config.update(overrides)
    app = create_app(config, registry=registry)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def app(session_db: str, tmp_path: Path, fernet_key: str) -> Iterator[PilotApp]:
    app = make_app(session_db, tmp_path, (fernet_key,))
    yield app
    app.db.close()


@pytest.fixture
def client(app: PilotApp) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def user() -> str:
    """A user id no other test uses, so tests sharing the session database never see each other."""
    return f"user_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def other_user() -> str:
    return f"other_{uuid.uuid4().hex[:12]}"
