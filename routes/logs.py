"""Execution logs and the checklist's monitoring figures, per caller."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, Response, jsonify, request

import store
from auth import current_user_id
from errors import ValidationError
from routes.common import paging, serialize
from services import services

bp = Blueprint("logs", __name__, url_prefix="/api")


def _int_arg(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or int(raw) > 2**63 - 1:
        raise ValidationError(f"{name} must be a positive integer")
    return int(raw)


def _hours(default: int) -> int:
    hours = _int_arg("hours") or default
    if not 1 <= hours <= 24 * 90:
        raise ValidationError("hours must be between 1 and 2160")
    return hours


@bp.get("/logs")
def logs() -> Response:
    user_id = current_user_id()
    limit, offset = paging()
    status = request.args.get("status") or None
    if status not in (None, "success", "error"):
        raise ValidationError("status must be 'success' or 'error'")
    since = request.args.get("since") or None
    if since is not None:
        try:
            datetime.fromisoformat(since)
        except ValueError:
            raise ValidationError("since must be an ISO 8601 timestamp") from None
    with services().db.transaction(user_id) as cur:
        rows = store.list_logs(
            cur,
            user_id,
            limit=limit,
            offset=offset,
            provider=request.args.get("provider") or None,
            status=status,
            plan_id=_int_arg("plan_id") or _int_arg("plan"),
            run_id=_int_arg("run_id"),
            since=since,
        )
    return jsonify({"logs": [serialize(row) for row in rows], "limit": limit, "offset": offset})


@bp.get("/metrics/providers")
def provider_metrics() -> Response:
    user_id = current_user_id()
    hours = _hours(24)
    with services().db.transaction(user_id) as cur:
        rows = store.provider_metrics(cur, user_id, hours)
    return jsonify({"window_hours": hours, "providers": rows})


@bp.get("/metrics/errors")
def error_metrics() -> Response:
    user_id = current_user_id()
    hours = _hours(24)
    with services().db.transaction(user_id) as cur:
        rows = store.error_trends(cur, user_id, hours)
    return jsonify({"window_hours": hours, "trends": [serialize(row) for row in rows]})
