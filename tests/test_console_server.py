"""The console's server side: served at /, strict security headers, static files, auth_mode in health."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

import openapi
from tests.conftest import make_app

CONSOLE = Path(__file__).resolve().parent.parent / "console"


@pytest.mark.parametrize("mode", ["dev", "token"])
def test_health_says_the_auth_mode_so_the_console_can_sign_in(
    session_db: str, tmp_path: Path, fernet_key: str, mode: str
) -> None:
    app = make_app(session_db, tmp_path, (fernet_key,), auth_mode=mode, jwt_secret="s" * 32)
    try:
        body = app.test_client().get("/api/health").json
    finally:
        app.extensions["pilot"].db.close()
    assert body["auth_mode"] == mode
