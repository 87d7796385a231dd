"""Configuration from the environment, in one class.

Every variable Pilot reads is a field of ``Settings`` (pydantic-settings), named by the
field's ``validation_alias``; ``tests/test_settings.py`` checks the README's
configuration table against this class. ``load_settings(**overrides)`` is what
``create_app`` and the CLI call: the environment first, then ``overrides`` by field
name (tests pass overrides instead of mutating ``os.environ``); an invalid value or
a combination production must not run with raises one ``ConfigurationError`` naming
the variable. ``deploy/gunicorn.conf.py`` reads gunicorn's own knobs.

One variable is also read by a library: prometheus_client chooses where metric
values live (memory, or files under ``PROMETHEUS_MULTIPROC_DIR``) when it is first
imported, before any ``Settings`` exist. ``process_metrics_dir()`` below is that
view of it, so it must be in the environment before the process starts; a test
override of the setting changes where ``/metrics`` reads, never where this process
writes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pilot.errors import ConfigurationError

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
ORIGIN = re.compile(r"https?://(?:[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Read only by `flask --app app import-env-credentials`, which stores them for one user.
ENV_API_KEYS = (("openai", "OPENAI_API_KEY"), ("groq", "GROQ_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"))


def process_metrics_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` as prometheus_client reads it (this process's environment), or None."""
    return os.environ.get(PROMETHEUS_MULTIPROC_ENV) or None


def _comma_list(value: Any) -> Any:
    """``"a, b,,c"`` → ``("a", "b", "c")``; sequences given as overrides pass through."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


def _stripped_or_none(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip() or None
    return value


def _flag(value: Any) -> Any:
    """A boolean the way Pilot always read one: 1/true/yes/on (any case) is true, other text false."""
    if isinstance(value, str):
        return value.strip().lower() in TRUE_WORDS if value.strip() else None
    return value


CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list)]
OptionalText = Annotated[str | None, BeforeValidator(_stripped_or_none)]


def env(name: str, default: Any = None, **kwargs: Any) -> Any:
    """A field read from the environment variable ``name``."""
    return Field(default, validation_alias=name, **kwargs)


class Settings(BaseSettings):
    """Everything configurable about one Pilot process."""

    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=True,
        env_ignore_empty=True,  # VAR= means the default, as it always did
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
    )

    database_url: str | None = env("DATABASE_URL")
    data_dir: Path = env("PILOT_DATA_DIR", Path("var"))
    fernet_keys: CommaList = env("FERNET_KEY", (), repr=False)
    pilot_env: str = env("PILOT_ENV", "development")
    auth_mode: str = env("AUTH_MODE", "", validate_default=True)
    jwt_secret: str | None = env("JWT_SECRET", repr=False)
    jwks_url: str | None = env("JWKS_URL")
    jwt_audience: CommaList = env("JWT_AUDIENCE", ())
    jwt_issuer: OptionalText = env("JWT_ISSUER")
    host: str = env("FLASK_HOST", "127.0.0.1")
    port: int = env("FLASK_PORT", 5000)
    scheduler_enabled: Annotated[bool, BeforeValidator(_flag)] = env("SCHEDULER_ENABLED", True)
    misfire_grace_seconds: int = env("SCHEDULER_MISFIRE_GRACE_SECONDS", 300)
    max_lateness_seconds: float = env("SCHEDULER_MAX_LATENESS_SECONDS", 30.0)
    run_lease_seconds: int = env("RUN_LEASE_SECONDS", 30)
    metrics_rollup_seconds: int = env("METRICS_ROLLUP_SECONDS", 300)
    shutdown_timeout: float = env("SHUTDOWN_TIMEOUT", 25.0)
    log_level: str = env("LOG_LEVEL", "INFO")
    outbound_allowlist: CommaList = env("OUTBOUND_ALLOWLIST", ())
    allowed_hosts: CommaList = env("ALLOWED_HOSTS", ())
    openai_base_url: OptionalText = env("OPENAI_BASE_URL")
    groq_base_url: OptionalText = env("GROQ_BASE_URL")
    anthropic_base_url: OptionalText = env("ANTHROPIC_BASE_URL")
    max_request_bytes: int = env("MAX_REQUEST_BYTES", 1_000_000)
    db_pool_size: int = env("DB_POOL_SIZE", 10)
    run_workers: int = env("RUN_WORKERS", 32)
    max_running_per_user: int = env("MAX_RUNNING_PER_USER", 32)
    run_queue_max_per_user: int = env("RUN_QUEUE_MAX_PER_USER", 1000)
    run_wait_seconds: float = env("RUN_WAIT_SECONDS", 30.0)
    prometheus_multiproc_dir: str | None = env(PROMETHEUS_MULTIPROC_ENV)
    openai_api_key: OptionalText = env("OPENAI_API_KEY", repr=False)
    groq_api_key: OptionalText = env("GROQ_API_KEY", repr=False)
    anthropic_api_key: OptionalText = env("ANTHROPIC_API_KEY", repr=False)
    cors_origins: CommaList = env("CORS_ORIGINS", ())
    planner_max_repairs: int = env("PLANNER_MAX_REPAIRS", 2)
    planner_model_openai: str = env("PLANNER_MODEL_OPENAI", "gpt-4o-mini")
    planner_model_groq: str = env("PLANNER_MODEL_GROQ", "llama-3.3-70b-versatile")
    planner_model_anthropic: str = env("PLANNER_MODEL_ANTHROPIC", "claude-3-5-haiku-latest")
    price_table: Path | None = env("PRICE_TABLE")
    breaker_failures: int = env("BREAKER_FAILURES", 5)
    breaker_window_seconds: float = env("BREAKER_WINDOW_SECONDS", 60.0)
    breaker_cooldown_seconds: float = env("BREAKER_COOLDOWN_SECONDS", 30.0)
    events_heartbeat_seconds: float = env("EVENTS_HEARTBEAT_SECONDS", 15.0)
    events_max_seconds: float = env("EVENTS_MAX_SECONDS", 300.0)

    @field_validator("pilot_env", mode="after")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.strip().lower() or "development"

    @field_validator("auth_mode", mode="after")
    @classmethod
    def _auth_mode(cls, value: str, info: ValidationInfo) -> str:
        """Unset: ``token`` in production, ``dev`` elsewhere."""
        return value.strip().lower() or ("token" if info.data.get("pilot_env") == "production" else "dev")

    @field_validator("host", mode="after")
    @classmethod
    def _host(cls, value: str) -> str:
        return value.strip() or "127.0.0.1"

    @field_validator("log_level", mode="after")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.strip().upper() or "INFO"

    @field_validator("allowed_hosts", mode="after")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Compared with a request's Host as ``guard.host_name`` reads it: lower case, no brackets or final dot."""
        return tuple(host.lower().strip("[]").removesuffix(".") for host in value)

    @field_validator("cors_origins", mode="after")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Exact origins (``scheme://host[:port]``), compared as browsers send them: lower case, no path.

        ``*`` is refused: answers carry ``Access-Control-Allow-Credentials``, which must
        never go with a wildcard, and a dev-mode Pilot open to every site would let any
        page act as any user.
        """
        origins = []
        for origin in value:
            normal = origin.lower().removesuffix("/")
            if not ORIGIN.fullmatch(normal):
                raise ConfigurationError(
                    f"CORS_ORIGINS takes exact origins such as https://app.example.com or http://localhost:5173 "
                    f"(scheme, host, optional port; no path, no '*'), not {origin!r}"
                )
            origins.append(normal)
        return tuple(origins)

    @field_validator("openai_base_url", "groq_base_url", "anthropic_base_url", mode="after")
    @classmethod
    def _no_final_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else None

    @model_validator(mode="after")
    def _check(self) -> Settings:
        """Fail fast on settings a process must not run with (raised as is: not a pydantic error)."""
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
        if self.max_running_per_user < 1 or self.run_queue_max_per_user < 1:
            raise ConfigurationError("MAX_RUNNING_PER_USER and RUN_QUEUE_MAX_PER_USER must be at least 1")
        if not 0 <= self.run_wait_seconds <= 600:
            raise ConfigurationError("RUN_WAIT_SECONDS must be between 0 and 600")
        if not 0 <= self.planner_max_repairs <= 10:
            raise ConfigurationError("PLANNER_MAX_REPAIRS must be between 0 and 10")
        if not 0 <= self.metrics_rollup_seconds <= 3600:
            raise ConfigurationError("METRICS_ROLLUP_SECONDS must be between 0 (off) and 3600")
        if self.run_lease_seconds < 2 or self.misfire_grace_seconds < 0:
            raise ConfigurationError("RUN_LEASE_SECONDS must be at least 2 and the misfire grace not negative")
        if self.max_lateness_seconds <= 0:
            raise ConfigurationError("SCHEDULER_MAX_LATENESS_SECONDS must be more than 0")
        if self.breaker_failures < 0 or self.breaker_window_seconds <= 0 or self.breaker_cooldown_seconds <= 0:
            raise ConfigurationError(
                "BREAKER_FAILURES must be 0 (no breakers) or more, BREAKER_WINDOW_SECONDS and "
                "BREAKER_COOLDOWN_SECONDS more than 0"
            )
        if not 0.05 <= self.events_heartbeat_seconds <= 300 or not 1 <= self.events_max_seconds <= 86400:
            raise ConfigurationError(
                "EVENTS_HEARTBEAT_SECONDS must be between 0.05 and 300, EVENTS_MAX_SECONDS between 1 and 86400"
            )
        return self

    @property
    def production(self) -> bool:
        return self.pilot_env == "production"

    @property
    def provider_base_urls(self) -> dict[str, str]:
        """The server-wide default endpoints that are set, by provider name."""
        urls = {"openai": self.openai_base_url, "groq": self.groq_base_url, "anthropic": self.anthropic_base_url}
        return {name: url for name, url in urls.items() if url}

    @property
    def env_credentials(self) -> dict[str, str]:
        """The ``*_API_KEY`` variables that are set, by provider name (for ``import-env-credentials``)."""
        keys = {"openai": self.openai_api_key, "groq": self.groq_api_key, "anthropic": self.anthropic_api_key}
        return {name: key for name, key in keys.items() if key}


def environment_variables() -> dict[str, str]:
    """Field name → the environment variable it is read from, for every field of ``Settings``."""
    return {name: str(field.validation_alias) for name, field in Settings.model_fields.items()}


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, then ``overrides`` by field name; ConfigurationError when invalid."""
    try:
        return Settings(**overrides)
    except PydanticValidationError as exc:
        raise ConfigurationError(_first_problem(exc)) from None


def _first_problem(exc: PydanticValidationError) -> str:
    """One line naming the variable and what is wrong with it (never the value of a secret)."""
    error = exc.errors(include_url=False)[0]
    names = environment_variables()
    field = str(error["loc"][0]) if error["loc"] else ""
    variable = names.get(field, field or "a setting")
    if error["type"] in {"int_parsing", "float_parsing", "int_from_float"}:
        return f"{variable} is not a number: {error['input']!r}"
    if field in {"fernet_keys", "jwt_secret", "openai_api_key", "groq_api_key", "anthropic_api_key"}:
        return f"{variable} is not valid ({error['msg']})"
    return f"{variable} is not valid: {error['msg']} (got {error['input']!r})"
