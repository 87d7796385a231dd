"""Pilot's Flask application: ``create_app()`` builds and wires the parts; ``python app.py`` serves.

Importing this module builds nothing. ``create_app()`` builds the settings, the
provider registry, the database manager, the vault and the engine, and hangs them
on a ``PilotApp``; gunicorn serves ``"app:create_app()"``. ``from app import app``
(the checklist, ``flask --app app``) builds one app on first use (PEP 562), and a
configuration error then stops the process with one line saying why. Routes live
in ``pilot/http/routes/``, SQL in the data layer, providers in ``providers/``.
The scheduler and the run claimer never start here: only serving processes start them.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Mapping
from typing import Any

import providers
import scheduler
from database import DatabaseManager, migrate_when_reachable, try_migrate
from execution_engine import ExecutionEngine
from pilot import console
from pilot.application import PilotApp
from pilot.errors import ConfigurationError
from pilot.http import cors, errors, guard, openapi, request_ids
from pilot.http.routes import costs, credentials, drafts, execution, health, logs, plans, runs
from pilot.http.routes import scheduler as scheduler_routes
from pilot.ops import cli, metrics, rollup
from pilot.ops.logging_setup import configure_logging
from pilot.security.vault import Vault, load_keys
from pilot.settings import load_settings
from provider_registry import ProviderRegistry

log = logging.getLogger("pilot")
BLUEPRINTS = (health, credentials, drafts, plans, execution, logs, scheduler_routes, runs, costs)


def create_app(test_config: Mapping[str, Any] | None = None, *, registry: ProviderRegistry | None = None) -> PilotApp:
    """Build the app: settings from the environment, then ``test_config`` overrides (by field name).

    ``registry`` replaces the discovered providers (tests). Raises ConfigurationError
    when the settings or the Fernet keys are not usable.
    """
    settings = load_settings(**(test_config or {}))
    configure_logging(settings.log_level)
    registry = registry if registry is not None else providers.build_registry()
    db = DatabaseManager(settings)
    vault = Vault(load_keys(settings))
    engine = ExecutionEngine(settings, db, vault, registry)
    app = PilotApp(__name__, settings=settings, db=db, vault=vault, registry=registry, engine=engine)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_request_bytes)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    request_ids.init_app(app)
    errors.init_app(app)
    guard.init_app(app)
    cors.init_app(app)  # after the guard: a preflight to a refused Host is refused too
    for module in BLUEPRINTS:
        app.register_blueprint(module.bp)
    metrics.init_app(app)
    openapi.init_app(app)
    console.init_app(app)
    cli.init_app(app)
    if settings.auth_mode == "dev":
        log.warning("AUTH_MODE=dev: the caller's user_id is trusted as sent; use AUTH_MODE=token in production")
    return app


def create_app_or_exit() -> PilotApp:
    """``create_app()``, or exit with one line naming the configuration problem (never a traceback)."""
    try:
        return create_app()
    except ConfigurationError as exc:
        sys.exit(f"pilot: configuration error: {exc.message}")


_app_lock = threading.Lock()


def __getattr__(name: str) -> PilotApp:
    """``app``: one app from the environment, built on first use (PEP 562)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _app_lock:
        built = globals().get("app")
        if built is None:
            built = create_app_or_exit()
            globals()["app"] = built  # later lookups find it without this function
    return built


def start_background_work(app: PilotApp) -> None:
    """What a serving process runs besides requests: the run claimer always, the scheduler when enabled."""
    app.engine.start_claiming()
    scheduler.start_for_serving(app)


def migrate_then_schedule(app: PilotApp, stop: threading.Event) -> None:
    """Apply migrations, then start the run claimer and the scheduler.

    A database that cannot be reached yet must not stop ``python app.py``: it
    serves at once (``/api/health`` answers 503) while a background thread
    migrates and starts them as soon as the database answers.
    """
    if try_migrate(app.db.dsn):
        start_background_work(app)
        return
    app.migrations_pending.set()

    def wait_for_database() -> None:
        if migrate_when_reachable(app.db.dsn, stop) and not stop.is_set():
            app.migrations_pending.clear()
            log.info("the database answers: migrations applied")
            start_background_work(app)

    threading.Thread(target=wait_for_database, name="pilot-migrate", daemon=True).start()


def main() -> None:
    """Serve with the development server: migrate (outside production), claim runs, schedule, stop on SIGTERM."""
    app = create_app_or_exit()
    settings = app.settings
    stop = threading.Event()
    if not app.db.embedded and not settings.production:
        migrate_then_schedule(app, stop)
    else:
        start_background_work(app)
    rollup.start_for_serving(app)  # hourly provider metrics; a database not up yet only delays it

    def terminate(signum: int, frame: Any) -> None:
        log.info("received signal %d: stopping", signum)
        stop.set()
        rollup.stop_for_serving(app)
        scheduler.pause_for_shutdown(app)  # claim and fire nothing more, at once
        scheduler.stop_for_serving(app, timeout=settings.shutdown_timeout)
        sys.exit(0)

    signal.signal(signal.SIGTERM, terminate)
    log.info("serving on http://%s:%d", settings.host, settings.port)
    try:
        app.run(host=settings.host, port=settings.port, threaded=True, use_reloader=False)
    except KeyboardInterrupt:
        scheduler.stop_for_serving(app, timeout=settings.shutdown_timeout)


if __name__ == "__main__":
    main()
