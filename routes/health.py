"""Liveness and readiness for operators: curl, load balancers, systemd."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify

from errors import PilotError
from services import services

bp = Blueprint("health", __name__)


@bp.get("/api/health")
def health() -> tuple[Response, int]:
    svc = services()
    try:
        svc.db.check()
        database = {"status": "ok", "embedded": svc.db.embedded}
    except PilotError as exc:
        database = {"status": "down", "error": exc.message}
    scheduler = svc.scheduler.state() if svc.scheduler is not None else {"status": "disabled"}
    providers = svc.registry.names() if svc.registry is not None else []
    healthy = database["status"] == "ok"
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "timestamp": datetime.now(UTC).isoformat(),
        "database": database,
        "scheduler": scheduler,
        "providers": providers,
        "auth_mode": svc.settings.auth_mode,  # public: the console picks its sign-in form from it
    }
    return jsonify(body), 200 if healthy else 503
