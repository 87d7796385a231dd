"""Costs and budgets: ``GET/PUT/DELETE /api/budget`` and ``GET /api/metrics/costs`` (per caller)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from pilot.application import current_pilot
from pilot.costs import report
from pilot.costs.schemas import BudgetBody, CostQuery
from pilot.errors import NotFound
from pilot.http.auth import current_user_id
from pilot.http.common import json_body
from pilot.steps.plan_schema import parse

bp = Blueprint("costs", __name__, url_prefix="/api")


@bp.get("/budget")
def get_budget() -> Response:
    """The caller's budget (null when none) and this UTC month's recorded spend."""
    user_id = current_user_id()
    return jsonify(report.budget_view(current_pilot().db, user_id))


@bp.put("/budget")
def put_budget() -> Response:
    body: BudgetBody = parse(BudgetBody, json_body())
    user_id = current_user_id()
    return jsonify(report.set_budget(current_pilot().db, user_id, body))


@bp.delete("/budget")
def delete_budget() -> tuple[str, int]:
    user_id = current_user_id()
    if not report.remove_budget(current_pilot().db, user_id):
        raise NotFound("no budget is set")
    return "", 204


@bp.get("/metrics/costs")
def costs() -> Response:
    """``?hours=|since=&group_by=provider|model|plan|day``: the caller's LLM tokens, cost and steps."""
    user_id = current_user_id()
    query: CostQuery = parse(CostQuery, request.args.to_dict(), where="query")
    return jsonify(report.cost_report(current_pilot().db, user_id, query))
