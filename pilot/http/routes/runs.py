"""The caller's runs across all of their plans: newest first, filtered, paged by id."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from pilot.application import current_pilot
from pilot.data import store
from pilot.errors import ValidationError
from pilot.http.auth import current_user_id
from pilot.http.common import int_arg, serialize

bp = Blueprint("runs", __name__, url_prefix="/api")
RUN_STATUSES = ("queued", "running", "success", "error", "interrupted", "skipped")
RUN_TRIGGERS = ("manual", "schedule", "api", "replay")
DEFAULT_LIMIT, MAX_LIMIT = 50, 500


def _positive_int(name: str) -> int | None:
    """The query parameter ``name`` as an id-sized positive integer, None when absent; 400 otherwise."""
    value = int_arg(name)
    if value == 0:
        raise ValidationError(f"{name} must be a positive integer")
    return value


def _choice(name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.args.get(name) or None
    if value is not None and value not in allowed:
        raise ValidationError(f"{name} must be one of {', '.join(allowed)}")
    return value


@bp.get("/runs")
def list_runs() -> Response:
    """``?plan_id=&status=&trigger=&limit=&before=``: runs with an id below ``before``, newest first.

    ``next_before`` is the cursor of the next (older) page, null on the last one.
    Rows carry the plan's name but not step outputs (``GET /api/runs/<id>`` has those).
    """
    user_id = current_user_id()
    limit = _positive_int("limit") or DEFAULT_LIMIT
    if limit > MAX_LIMIT:
        raise ValidationError(f"limit must be 1..{MAX_LIMIT}")
    plan_id, before = _positive_int("plan_id"), _positive_int("before")
    status, trigger = _choice("status", RUN_STATUSES), _choice("trigger", RUN_TRIGGERS)
    with current_pilot().db.transaction(user_id) as cur:
        rows = store.list_user_runs(
            cur, user_id, limit=limit, plan_id=plan_id, status=status, trigger=trigger, before=before
        )
    next_before = rows[-1]["id"] if len(rows) == limit else None
    return jsonify({"runs": [serialize(row) for row in rows], "limit": limit, "next_before": next_before})
