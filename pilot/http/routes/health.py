"""Liveness and readiness for operators: curl, load balancers, systemd.

``/api/health`` needs no authentication, so in ``AUTH_MODE=token`` it says only
what a load balancer needs: overall status, database ok/down, scheduler state,
the auth mode (a console reads it to know whether to ask for a token). Process
owner ids, host names, start times and error texts are shown only in dev mode,
which answers loopback callers only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify

from pilot.errors import PilotError
from pilot.services import services

bp = Blueprint("health", __name__)


def _database() -> dict[str, Any]:
    svc = services()
    if svc.migrations_pending.is_set():
        return {"status": "down", "error": "the database is not reachable yet; migrations are pending"}
    try:
        svc.db.check()
    except PilotError as exc:
        return {"status": "down", "error": exc.message}
    return {"status": "ok", "embedded": svc.db.embedded}


@bp.get("/api/health")
def health() -> tuple[Response, int]:
    svc = services()
    database = _database()
    scheduler = svc.scheduler.state() if svc.scheduler is not None else {"status": "disabled"}
    healthy = database["status"] == "ok"
    body: dict[str, Any] = {
        "status": "healthy" if healthy else "unhealthy",
        "timestamp": datetime.now(UTC).isoformat(),
        "database": database,
        "scheduler": scheduler,
        "auth_mode": svc.settings.auth_mode,
    }
    if svc.settings.auth_mode == "dev":
        body["providers"] = svc.registry.names() if svc.registry is not None else []
    else:
        body["database"] = {"status": database["status"]}
        body["scheduler"] = {"status": scheduler["status"]}
    return jsonify(body), 200 if healthy else 503
