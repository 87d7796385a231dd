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

from pilot.application import current_pilot
from pilot.errors import PilotError
from pilot.http.models import Health
from pilot.http.validation import Answer, validate

bp = Blueprint("health", __name__)


def _database() -> dict[str, Any]:
    pilot = current_pilot()
    if pilot.migrations_pending.is_set():
        return {"status": "down", "error": "the database is not reachable yet; migrations are pending"}
    try:
        pilot.db.check()
    except PilotError as exc:
        return {"status": "down", "error": exc.message}
    return {"status": "ok", "embedded": pilot.db.embedded}


@bp.get("/api/health")
@validate(
    summary="Liveness and readiness",
    tag="operations",
    responses={200: Answer("healthy", Health), 503: Answer("unhealthy: the database is down", Health)},
    auth=False,
    operation_id="getHealth",
)
def health() -> tuple[Response, int]:
    pilot = current_pilot()
    database = _database()
    scheduler = pilot.scheduler.state() if pilot.scheduler is not None else {"status": "disabled"}
    healthy = database["status"] == "ok"
    body: dict[str, Any] = {
        "status": "healthy" if healthy else "unhealthy",
        "timestamp": datetime.now(UTC).isoformat(),
        "database": database,
        "scheduler": scheduler,
        "auth_mode": pilot.settings.auth_mode,
    }
    if pilot.settings.auth_mode == "dev":
        body["providers"] = pilot.registry.names()
    else:
        body["database"] = {"status": database["status"]}
        body["scheduler"] = {"status": scheduler["status"]}
    return jsonify(body), 200 if healthy else 503
