"""Configuration from the environment, read in one place.

Every variable Pilot reads is read here (and listed in the README). ``Settings.from_env``
is called by ``create_app`` and by the CLI; tests pass overrides instead of
mutating ``os.environ``. ``deploy/gunicorn.conf.py`` reads gunicorn's own knobs.

One variable is also read by a library: prometheus_client chooses where metric
values live (memory, or files under ``PROMETHEUS_MULTIPROC_DIR``) when it is first
imported, before any ``Settings`` exist. ``metrics.py`` therefore reads it at
import through ``prometheus_multiproc_dir()`` below, so it must be in the
environment before the process starts; a test override of the setting changes
where ``/metrics`` reads, never where this process writes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pilot.errors import ConfigurationError

TRUE_WORDS = {"1", "true", "yes", "on"}
PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Read only by `flask --app app import-env-credentials`, which stores them for one user.
ENV_API_KEYS = (("openai", "OPENAI_API_KEY"), ("groq", "GROQ_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"))


def prometheus_multiproc_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` (the name prometheus_client reads at import), or None when unset."""
    env = os.environ if environ is None else environ
    return env.get(PROMETHEUS_MULTIPROC_ENV) or None


def _env_bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in TRUE_WORDS


def _env_list(env: dict[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one Pilot process."""

    database_url: str | None = None
    data_dir: Path = Path("var")
    fernet_keys: tuple[str, ...] = ()
    pilot_env: str = "development"
    auth_mode: str = "dev"
    jwt_secret: str | None = field(default=None, repr=False)
    jwks_url: str | None = None
    jwt_audience: tuple[str, ...] = ()
    jwt_issuer: str | None = None
    host: str = "127.0.0.1"
    port: int = 5000
    scheduler_enabled: bool = True
    misfire_grace_seconds: int = 300
    run_lease_seconds: int = 30
    shutdown_timeout: float = 25.0
    log_level: str = "INFO"
    outbound_allowlist: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    provider_base_urls: dict[str, str] = field(default_factory=dict)
    max_request_bytes: int = 1_000_000
    db_pool_size: int = 10
    run_workers: int = 32
    prometheus_multiproc_dir: str | None = None
    env_credentials: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def production(self) -> bool:
        return self.pilot_env == "production"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ if environ is None else environ)
        pilot_env = (env.get("PILOT_ENV") or "development").strip().lower()
        auth_mode = (env.get("AUTH_MODE") or ("token" if pilot_env == "production" else "dev")).strip().lower()
        try:
            port = int(env.get("FLASK_PORT") or 5000)
            pool = int(env.get("DB_POOL_SIZE") or 10)
            run_workers = int(env.get("RUN_WORKERS") or 32)
            max_bytes = int(env.get("MAX_REQUEST_BYTES") or 1_000_000)
            grace = int(env.get("SCHEDULER_MISFIRE_GRACE_SECONDS") or 300)
            lease = int(env.get("RUN_LEASE_SECONDS") or 30)
            shutdown_timeout = float(env.get("SHUTDOWN_TIMEOUT") or 25)
        except ValueError as exc:
            raise ConfigurationError(f"a numeric setting is not a number: {exc}") from exc
        base_urls = {
            name: env[var].rstrip("/")
            for name, var in (
                ("openai", "OPENAI_BASE_URL"),
                ("groq", "GROQ_BASE_URL"),
                ("anthropic", "ANTHROPIC_BASE_URL"),
            )
            if env.get(var)
        }
        settings = cls(
            database_url=env.get("DATABASE_URL") or None,
            data_dir=Path(env.get("PILOT_DATA_DIR") or "var"),
            fernet_keys=_env_list(env, "FERNET_KEY"),
            pilot_env=pilot_env,
            auth_mode=auth_mode,
            jwt_secret=env.get("JWT_SECRET") or None,
            jwks_url=env.get("JWKS_URL") or None,
            jwt_audience=_env_list(env, "JWT_AUDIENCE"),
            jwt_issuer=(env.get("JWT_ISSUER") or "").strip() or None,
            host=(env.get("FLASK_HOST") or "127.0.0.1").strip(),
            port=port,
            scheduler_enabled=_env_bool(env, "SCHEDULER_ENABLED", True),
            misfire_grace_seconds=grace,
            run_lease_seconds=lease,
            shutdown_timeout=shutdown_timeout,
            log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
            outbound_allowlist=_env_list(env, "OUTBOUND_ALLOWLIST"),
            allowed_hosts=tuple(host.lower().strip("[]").removesuffix(".") for host in _env_list(env, "ALLOWED_HOSTS")),
            provider_base_urls=base_urls,
            max_request_bytes=max_bytes,
            db_pool_size=pool,
            run_workers=run_workers,
            prometheus_multiproc_dir=prometheus_multiproc_dir(env),
            env_credentials={name: env[var].strip() for name, var in ENV_API_KEYS if env.get(var, "").strip()},
        )
        settings = replace(settings, **overrides)
        settings.check()
        return settings

    def check(self) -> None:
        """Fail fast on settings a production process must not run with."""
        if self.auth_mode not in {"dev", "token"}:
            raise ConfigurationError(f"AUTH_MODE must be 'dev' or 'token', not {self.auth_mode!r}")
        if self.production and self.auth_mode != "token":
            raise ConfigurationError("PILOT_ENV=production requires AUTH_MODE=token")
        if self.production and not self.fernet_keys:
            raise ConfigurationError(
                "FERNET_KEY is required when PILOT_ENV=production; generate one with `flask --app app gen-key`"
            )
        if self.db_pool_size < 1 or self.run_workers < 1:
            raise ConfigurationError("DB_POOL_SIZE and RUN_WORKERS must be at least 1")
        if self.run_lease_seconds < 2 or self.misfire_grace_seconds < 0:
            raise ConfigurationError("RUN_LEASE_SECONDS must be at least 2 and the misfire grace not negative")
