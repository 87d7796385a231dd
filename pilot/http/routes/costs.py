"""Costs and budgets: ``GET/PUT/DELETE /api/budget`` and ``GET /api/metrics/costs`` (per caller)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from pilot.application import current_pilot
from pilot.costs import report
from pilot.costs.schemas import BudgetBody, CostQuery
from pilot.errors import NotFound
from pilot.http.auth import current_user_id
from pilot.http.models import Budget, CostReport
from pilot.http.validation import Answer, validate

bp = Blueprint("costs", __name__, url_prefix="/api")


@bp.get("/budget")
@validate(
    summary="The caller's monthly budget (null when none) and this UTC month's recorded spend",
    tag="costs",
    responses={200: Answer("budget and spend", Budget)},
    operation_id="getBudget",
)
def get_budget() -> Response:
    """The caller's budget (null when none) and this UTC month's recorded spend."""
    user_id = current_user_id()
    return jsonify(report.budget_view(current_pilot().db, user_id))


@bp.put("/budget")
@validate(
    summary="Set the caller's monthly budget in USD and what happens once it is spent",
    tag="costs",
    body=BudgetBody,
    responses={200: Answer("budget and spend", Budget)},
    operation_id="putBudget",
)
def put_budget(body: BudgetBody) -> Response:
    user_id = current_user_id()
    return jsonify(report.set_budget(current_pilot().db, user_id, body))


@bp.delete("/budget")
@validate(
    summary="Remove the caller's budget",
    tag="costs",
    responses={204: Answer("removed")},
    errors=(404,),
    operation_id="deleteBudget",
)
def delete_budget() -> tuple[str, int]:
    user_id = current_user_id()
    if not report.remove_budget(current_pilot().db, user_id):
        raise NotFound("no budget is set")
    return "", 204


@bp.get("/metrics/costs")
@validate(
    summary="The caller's LLM tokens, cost and steps, grouped",
    tag="costs",
    query=CostQuery,
    responses={200: Answer("per group and in total", CostReport)},
    operation_id="costMetrics",
)
def costs(query: CostQuery) -> Response:
    """``?hours=|since=&group_by=provider|model|plan|day``: the caller's LLM tokens, cost and steps."""
    user_id = current_user_id()
    return jsonify(report.cost_report(current_pilot().db, user_id, query))
