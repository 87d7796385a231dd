"""Startup configuration: production refuses to start without what it needs, and says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from config import Settings
from errors import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent


def start(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PILOT_", "FERNET", "AUTH_", "JWT", "DATABASE"))}
    return subprocess.run(
        [sys.executable, "-c", "import app"],
        cwd=ROOT,
        env={**base, "PILOT_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PILOT_ENV": "production", "AUTH_MODE": "token", "JWT_SECRET": "s"}, "FERNET_KEY is required"),
        ({"PILOT_ENV": "production", "AUTH_MODE": "token", "FERNET_KEY": "not-a-key"}, "FERNET_KEY is malformed"),
        ({"PILOT_ENV": "production", "AUTH_MODE": "dev", "FERNET_KEY": "k"}, "requires AUTH_MODE=token"),
        ({"FERNET_KEY": Fernet.generate_key().decode() + ",short"}, "FERNET_KEY is malformed"),
        ({"FLASK_PORT": "fifty"}, "not a number"),
    ],
)
def test_bad_configuration_stops_startup_with_a_clear_message(env: dict, needle: str, tmp_path: Path) -> None:
    result = start(env, tmp_path)
    assert result.returncode == 1
    assert needle in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "fernet.key").exists() or "PILOT_ENV" not in env


def test_development_generates_a_private_key_once(tmp_path: Path) -> None:
    assert start({}, tmp_path).returncode == 0
    key_file = tmp_path / "fernet.key"
    first = key_file.read_text()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert start({}, tmp_path).returncode == 0
    assert key_file.read_text() == first
    Fernet(first.strip().encode())


def test_settings_reject_an_unknown_auth_mode() -> None:
    with pytest.raises(ConfigurationError, match="AUTH_MODE"):
        Settings.from_env({"AUTH_MODE": "open"})
