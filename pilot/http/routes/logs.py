"""Execution logs and the checklist's monitoring figures, per caller."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from pilot.application import current_pilot
from pilot.data import store
from pilot.http.auth import current_user_id
from pilot.http.common import serialize
from pilot.http.models import ErrorTrends, HoursQuery, LogList, LogsQuery, ProviderMetrics
from pilot.http.validation import Answer, validate

bp = Blueprint("logs", __name__, url_prefix="/api")
DEFAULT_LIMIT = 100
DEFAULT_HOURS = 24


@bp.get("/logs")
@validate(
    summary="The caller's execution logs, newest first",
    tag="logs",
    query=LogsQuery,
    responses={200: Answer("logs", LogList)},
    operation_id="listLogs",
)
def logs(query: LogsQuery) -> Response:
    user_id = current_user_id()
    limit, offset = query.limit or DEFAULT_LIMIT, query.offset or 0
    with current_pilot().db.transaction(user_id) as cur:
        rows = store.list_logs(
            cur,
            user_id,
            limit=limit,
            offset=offset,
            provider=query.provider,
            status=query.status,
            plan_id=query.plan_id or query.plan,
            run_id=query.run_id,
            since=query.since,
        )
    return jsonify({"logs": [serialize(row) for row in rows], "limit": limit, "offset": offset})


@bp.get("/metrics/providers")
@validate(
    summary="Success rate and avg/max/p95 latency per provider",
    tag="logs",
    query=HoursQuery,
    responses={200: Answer("per provider", ProviderMetrics)},
    operation_id="providerMetrics",
)
def provider_metrics(query: HoursQuery) -> Response:
    user_id = current_user_id()
    hours = query.hours or DEFAULT_HOURS
    with current_pilot().db.transaction(user_id) as cur:
        rows = store.provider_metrics(cur, user_id, hours)
    return jsonify({"window_hours": hours, "providers": rows})


@bp.get("/metrics/errors")
@validate(
    summary="Hourly error counts and rates per provider",
    tag="logs",
    query=HoursQuery,
    responses={200: Answer("per hour and provider", ErrorTrends)},
    operation_id="errorTrends",
)
def error_metrics(query: HoursQuery) -> Response:
    user_id = current_user_id()
    hours = query.hours or DEFAULT_HOURS
    with current_pilot().db.transaction(user_id) as cur:
        rows = store.error_trends(cur, user_id, hours)
    return jsonify({"window_hours": hours, "trends": [serialize(row) for row in rows]})
