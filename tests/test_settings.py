"""Settings: one class read from the environment; a bad value stops startup with one clear line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from pilot.errors import ConfigurationError
from pilot.settings import Settings, environment_variables, load_settings

ROOT = Path(__file__).resolve().parent.parent
BUILD_APP = "from app import app"  # the checklist's Phase 2 Step 3: the app is built on first use


def clean_environment() -> dict[str, str]:
    """This process's environment without any variable Pilot reads."""
    return {k: v for k, v in os.environ.items() if k not in set(environment_variables().values())}


def start(env: dict[str, str], tmp_path: Path, code: str = BUILD_APP) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean_environment(), "PILOT_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment in which no variable Pilot reads is set; set some with ``environ.setenv``."""
    for variable in environment_variables().values():
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


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
    assert result.stderr.strip().startswith("pilot: configuration error: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "fernet.key").exists() or "PILOT_ENV" not in env


def test_importing_app_with_a_bad_configuration_builds_nothing_and_does_not_exit(tmp_path: Path) -> None:
    """The configuration is read when the app is built, not when the module is imported."""
    result = start({"FLASK_PORT": "fifty", "PILOT_ENV": "production"}, tmp_path, "import app; print('imported')")
    assert (result.returncode, result.stdout.strip()) == (0, "imported"), result.stderr
    assert list(tmp_path.iterdir()) == []


def test_development_generates_a_private_key_once(tmp_path: Path) -> None:
    assert start({}, tmp_path).returncode == 0
    key_file = tmp_path / "fernet.key"
    first = key_file.read_text()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert start({}, tmp_path).returncode == 0
    assert key_file.read_text() == first
    Fernet(first.strip().encode())


def test_settings_reject_an_unknown_auth_mode(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("AUTH_MODE", "open")
    with pytest.raises(ConfigurationError, match="AUTH_MODE"):
        load_settings()


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


def test_settings_read_host_api_keys_and_the_metrics_dir(environ: pytest.MonkeyPatch) -> None:
    defaults = load_settings()
    assert (defaults.host, defaults.env_credentials, defaults.prometheus_multiproc_dir) == ("127.0.0.1", {}, None)
    env = {
        "FLASK_HOST": "127.0.0.2",
        "OPENAI_API_KEY": " sk-env-0000000000000001 ",
        "GROQ_API_KEY": "gsk_env-0000000000000002",
        "ANTHROPIC_API_KEY": "",
        "PROMETHEUS_MULTIPROC_DIR": "/run/pilot/prometheus",
    }
    for name, value in env.items():
        environ.setenv(name, value)
    settings = load_settings()
    assert settings.host == "127.0.0.2"
    assert settings.env_credentials == {"openai": "sk-env-0000000000000001", "groq": "gsk_env-0000000000000002"}
    assert settings.prometheus_multiproc_dir == "/run/pilot/prometheus"
    assert "sk-env" not in repr(settings) and "gsk_env" not in repr(settings)


def test_every_variable_is_parsed_as_before(environ: pytest.MonkeyPatch) -> None:
    """What ``Settings.from_env`` made of each kind of value, written out by hand."""
    env = {
        "DATABASE_URL": "postgresql://pilot@db/pilot",
        "PILOT_DATA_DIR": "/srv/pilot",
        "FERNET_KEY": " k1 , k2,,",
        "PILOT_ENV": " Production ",
        "JWT_SECRET": "s3cret-value",
        "JWT_AUDIENCE": "authenticated, api",
        "JWT_ISSUER": "  ",
        "FLASK_PORT": "5001",
        "SCHEDULER_ENABLED": "Off",
        "SCHEDULER_MISFIRE_GRACE_SECONDS": "0",
        "RUN_LEASE_SECONDS": "2",
        "SHUTDOWN_TIMEOUT": "1.5",
        "LOG_LEVEL": "debug",
        "OUTBOUND_ALLOWLIST": "localhost, 10.0.0.0/8",
        "ALLOWED_HOSTS": "Pilot.Example.COM., [::1]",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1/",
        "MAX_REQUEST_BYTES": "2048",
        "DB_POOL_SIZE": "3",
        "RUN_WORKERS": "4",
    }
    for name, value in env.items():
        environ.setenv(name, value)
    s = load_settings()
    assert (s.database_url, s.data_dir, s.fernet_keys) == (
        "postgresql://pilot@db/pilot",
        Path("/srv/pilot"),
        ("k1", "k2"),
    )
    assert (s.pilot_env, s.production, s.auth_mode) == ("production", True, "token")  # token is production's default
    assert (s.jwt_secret, s.jwt_audience, s.jwt_issuer) == ("s3cret-value", ("authenticated", "api"), None)
    assert (s.port, s.scheduler_enabled, s.misfire_grace_seconds, s.run_lease_seconds) == (5001, False, 0, 2)
    assert (s.shutdown_timeout, s.log_level) == (1.5, "DEBUG")
    assert s.outbound_allowlist == ("localhost", "10.0.0.0/8")
    assert s.allowed_hosts == ("pilot.example.com", "::1")
    assert s.provider_base_urls == {"openai": "http://127.0.0.1:9/v1"}
    assert (s.max_request_bytes, s.db_pool_size, s.run_workers) == (2048, 3, 4)
    assert "s3cret-value" not in repr(s) and "k1" not in repr(s)


@pytest.mark.parametrize(("value", "enabled"), [("1", True), ("TRUE", True), ("yes", True), ("on", True),
                                                 ("0", False), ("no", False), ("nope", False), ("", True)])  # fmt: skip
def test_scheduler_enabled_reads_as_it_always_did(environ: pytest.MonkeyPatch, value: str, enabled: bool) -> None:
    environ.setenv("SCHEDULER_ENABLED", value)
    assert load_settings().scheduler_enabled is enabled


def test_overrides_win_over_the_environment_and_unknown_ones_are_refused(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("DB_POOL_SIZE", "7")
    environ.setenv("FLASK_PORT", "5002")
    settings = load_settings(db_pool_size=2, fernet_keys=("k",))
    assert (settings.db_pool_size, settings.port, settings.fernet_keys) == (2, 5002, ("k",))
    with pytest.raises(ConfigurationError, match="db_pool_sise"):
        load_settings(db_pool_sise=2)
    with pytest.raises(ConfigurationError, match="DB_POOL_SIZE and RUN_WORKERS must be at least 1"):
        load_settings(db_pool_size=0)


def readme_configuration_variables() -> set[str]:
    """The variables named in the first column of the README's configuration table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def test_the_readme_configuration_table_matches_the_settings_class() -> None:
    documented = readme_configuration_variables()
    read = set(environment_variables().values())
    assert read - documented == set(), "read but not documented in the README"
    assert documented - read == set(), "documented in the README but not a field of Settings"
    assert Settings.model_fields.keys() == environment_variables().keys()
