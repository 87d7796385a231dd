"""The caller's runs across all of their plans: newest first, filtered, paged by id."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from pilot.application import current_pilot
from pilot.data import store
from pilot.http.auth import current_user_id
from pilot.http.common import serialize
from pilot.http.models import RunsQuery, RunSummaryList
from pilot.http.validation import Answer, validate

bp = Blueprint("runs", __name__, url_prefix="/api")
DEFAULT_LIMIT = 50


@bp.get("/runs")
@validate(
    summary="The caller's runs across all plans, newest first",
    tag="runs",
    query=RunsQuery,
    responses={200: Answer("runs; pass next_before as before for the next (older) page", RunSummaryList)},
    operation_id="listAllRuns",
)
def list_runs(query: RunsQuery) -> Response:
    """``?plan_id=&status=&trigger=&limit=&before=``: runs with an id below ``before``, newest first.

    ``next_before`` is the cursor of the next (older) page, null on the last one.
    Rows carry the plan's name but not step outputs (``GET /api/runs/<id>`` has those).
    """
    user_id = current_user_id()
    limit = query.limit or DEFAULT_LIMIT
    with current_pilot().db.transaction(user_id) as cur:
        rows = store.list_user_runs(
            cur,
            user_id,
            limit=limit,
            plan_id=query.plan_id,
            status=query.status,
            trigger=query.trigger,
            before=query.before,
        )
    next_before = rows[-1]["id"] if len(rows) == limit else None
    return jsonify({"runs": [serialize(row) for row in rows], "limit": limit, "next_before": next_before})
