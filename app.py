"""Pilot's Flask application: ``create_app()`` wires the parts; ``python app.py`` serves.

Routes live in ``routes/``, SQL in the data layer, providers in ``providers/``.
The scheduler never starts on import: only serving processes start it.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
import uuid
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

import scheduler
from database import DatabaseManager, db_manager, migrate_when_reachable, try_migrate
from execution_engine import ExecutionEngine
from pilot import console
from pilot.errors import ConfigurationError, PilotError
from pilot.http import guard, openapi
from pilot.http.routes import credentials as credentials_routes
from pilot.http.routes import execution as execution_routes
from pilot.http.routes import health as health_routes
from pilot.http.routes import logs as logs_routes
from pilot.http.routes import plans as plans_routes
from pilot.http.routes import runs as runs_routes
from pilot.http.routes import scheduler as scheduler_routes
from pilot.ops import cli, metrics
from pilot.ops.logging_setup import configure_logging
from pilot.security.vault import Vault, load_keys
from pilot.services import Services
from pilot.settings import Settings
from providers import registry

log = logging.getLogger("pilot")
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _error(code: str, message: str, status: int, details: Any = None) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message, "details": details}}), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(PilotError)
    def pilot_error(exc: PilotError) -> tuple[Response, int]:
        if exc.status >= 500:
            log.error("request failed: %s", exc.message, extra={"code": exc.code})
        return _error(exc.code, exc.message, exc.status, exc.details)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> WerkzeugResponse:
        response = exc.get_response()
        code = re.sub(r"[^a-z]+", "_", (exc.name or "error").lower()).strip("_")
        response.set_data(jsonify({"error": {"code": code, "message": exc.description, "details": None}}).get_data())
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return _error("internal_error", "internal server error", 500)


def register_request_id(app: Flask) -> None:
    @app.before_request
    def assign_request_id() -> None:
        supplied = request.headers.get("X-Request-ID", "")
        g.request_id = supplied if REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        if "request_id" in g:
            response.headers["X-Request-ID"] = g.request_id
        return response


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: settings from the environment, then ``test_config`` overrides."""
    settings = Settings.from_env(**(test_config or {}))
    configure_logging(settings.log_level)
    app = Flask(__name__)
    app.config.update(PILOT_SETTINGS=settings, MAX_CONTENT_LENGTH=settings.max_request_bytes)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    db = db_manager if test_config is None else DatabaseManager(settings)
    vault = Vault(load_keys(settings))
    engine = ExecutionEngine(settings, db, vault, registry)
    app.extensions["pilot"] = Services(settings=settings, db=db, vault=vault, registry=registry, engine=engine)
    register_request_id(app)
    register_error_handlers(app)
    guard.init_app(app)
    for module in (health_routes, credentials_routes, plans_routes, execution_routes, logs_routes, scheduler_routes):
        app.register_blueprint(module.bp)
    app.register_blueprint(runs_routes.bp)
    metrics.init_app(app)
    openapi.init_app(app)
    console.init_app(app)
    cli.init_app(app)
    if settings.auth_mode == "dev":
        log.warning("AUTH_MODE=dev: the caller's user_id is trusted as sent; use AUTH_MODE=token in production")
    return app


try:
    app = create_app()
except ConfigurationError as exc:  # fail fast with the reason, not a traceback
    sys.exit(f"pilot: configuration error: {exc.message}")


def migrate_then_schedule(app: Flask, stop: threading.Event) -> None:
    """Apply migrations, then start the scheduler.

    A database that cannot be reached yet must not stop ``python app.py``: it
    serves at once (``/api/health`` answers 503) while a background thread
    migrates and starts the scheduler as soon as the database answers.
    """
    svc: Services = app.extensions["pilot"]
    if try_migrate(svc.db.dsn):
        scheduler.start_for_serving(app)
        return
    svc.migrations_pending.set()

    def wait_for_database() -> None:
        if migrate_when_reachable(svc.db.dsn, stop) and not stop.is_set():
            svc.migrations_pending.clear()
            log.info("the database answers: migrations applied")
            scheduler.start_for_serving(app)

    threading.Thread(target=wait_for_database, name="pilot-migrate", daemon=True).start()


def main() -> None:
    """Serve with the development server: migrate (outside production), start the scheduler, stop on SIGTERM."""
    settings: Settings = app.config["PILOT_SETTINGS"]
    stop = threading.Event()
    if not db_manager.embedded and not settings.production:
        migrate_then_schedule(app, stop)
    else:
        scheduler.start_for_serving(app)

    def terminate(signum: int, frame: Any) -> None:
        log.info("received signal %d: stopping", signum)
        stop.set()
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
