"""Execution logs and the checklist's monitoring figures, per caller."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify, request

from pilot.application import current_pilot
from pilot.data import store
from pilot.errors import ValidationError
from pilot.http.auth import current_user_id
from pilot.http.common import int_arg, paging, serialize

bp = Blueprint("logs", __name__, url_prefix="/api")


def _hours(default: int) -> int:
    hours = int_arg("hours") or default
    if not 1 <= hours <= 24 * 90:
        raise ValidationError("hours must be between 1 and 2160")
    return hours


def _since() -> datetime | None:
    """``since`` as an aware UTC instant (naive means UTC); 400 for text or offsets no timestamp can hold."""
    raw = request.args.get("since") or None
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        # OverflowError: 0001-01-01T00:00+14:00 lies before the first representable instant.
        raise ValidationError("since must be an ISO 8601 timestamp between years 1 and 9999") from None


@bp.get("/logs")
def logs() -> Response:
    user_id = current_user_id()
    limit, offset = paging()
    status = request.args.get("status") or None
    if status not in (None, "success", "error"):
        raise ValidationError("status must be 'success' or 'error'")
    since = _since()
    with current_pilot().db.transaction(user_id) as cur:
        rows = store.list_logs(
            cur,
            user_id,
            limit=limit,
            offset=offset,
            provider=request.args.get("provider") or None,
            status=status,
            plan_id=int_arg("plan_id") or int_arg("plan"),
            run_id=int_arg("run_id"),
            since=since,
        )
    return jsonify({"logs": [serialize(row) for row in rows], "limit": limit, "offset": offset})


@bp.get("/metrics/providers")
def provider_metrics() -> Response:
    user_id = current_user_id()
    hours = _hours(24)
    with current_pilot().db.transaction(user_id) as cur:
        rows = store.provider_metrics(cur, user_id, hours)
    return jsonify({"window_hours": hours, "providers": rows})


@bp.get("/metrics/errors")
def error_metrics() -> Response:
    user_id = current_user_id()
    hours = _hours(24)
    with current_pilot().db.transaction(user_id) as cur:
        rows = store.error_trends(cur, user_id, hours)
    return jsonify({"window_hours": hours, "trends": [serialize(row) for row in rows]})
