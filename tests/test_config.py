"""Startup configuration: production refuses to start without what it needs, and says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from pilot.errors import ConfigurationError
from pilot.settings import Settings

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


def test_only_the_settings_module_reads_the_environment() -> None:
    """The README's promise: every variable the app reads is read in pilot/settings.py (gunicorn's own
    config file, deploy/gunicorn.conf.py, reads the server's knobs)."""
    readers = []
    modules = [*ROOT.glob("*.py"), *ROOT.glob("pilot/**/*.py"), *ROOT.glob("providers/*.py")]
    # The screenshots script is a developer tool run by hand, not part of the server.
    skipped = {ROOT / "pilot" / "settings.py", ROOT / "pilot" / "console" / "screenshots.py"}
    for path in sorted(set(modules) - skipped):
        text = path.read_text(encoding="utf-8")
        if any(needle in text for needle in ("os.environ", "getenv", "environ[")):
            readers.append(str(path.relative_to(ROOT)))
    assert readers == []


def test_settings_read_host_api_keys_and_the_metrics_dir() -> None:
    env = {
        "FLASK_HOST": "127.0.0.2",
        "OPENAI_API_KEY": " sk-env-0000000000000001 ",
        "GROQ_API_KEY": "gsk_env-0000000000000002",
        "ANTHROPIC_API_KEY": "",
        "PROMETHEUS_MULTIPROC_DIR": "/run/pilot/prometheus",
    }
    settings = Settings.from_env(env)
    assert settings.host == "127.0.0.2"
    assert settings.env_credentials == {"openai": "sk-env-0000000000000001", "groq": "gsk_env-0000000000000002"}
    assert settings.prometheus_multiproc_dir == "/run/pilot/prometheus"
    assert "sk-env" not in repr(settings) and "gsk_env" not in repr(settings)
    defaults = Settings.from_env({})
    assert (defaults.host, defaults.env_credentials, defaults.prometheus_multiproc_dir) == ("127.0.0.1", {}, None)
