"""Plans: a user's ordered steps, optional schedule; CRUD under RLS."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from pilot.application import current_pilot
from pilot.data import store
from pilot.errors import NotFound
from pilot.http.auth import current_user_id
from pilot.http.common import check_id, serialize
from pilot.http.idempotency import idempotent
from pilot.http.models import Paging, Plan, PlanList, PlanPatch
from pilot.http.validation import Answer, validate
from pilot.steps import plans
from pilot.steps.plan_schema import PlanBody

bp = Blueprint("plans", __name__, url_prefix="/api/plans")
DEFAULT_LIMIT = 100


def _not_found(plan_id: int) -> NotFound:
    return NotFound(f"plan {plan_id} not found")


@bp.post("")
@validate(
    summary="Create a plan (steps validated against provider schemas)",
    tag="plans",
    body=PlanBody,
    responses={201: Answer("the plan", Plan)},
    operation_id="createPlan",
)
@idempotent
def create(body: PlanBody) -> tuple[Response, int]:
    user_id = current_user_id()
    pilot = current_pilot()
    row = plans.create_plan(pilot.db, pilot.registry, user_id, body)
    return jsonify(serialize(row)), 201


@bp.get("")
@validate(
    summary="The caller's plans",
    tag="plans",
    query=Paging,
    responses={200: Answer("plans", PlanList)},
    operation_id="listPlans",
)
def list_(query: Paging) -> Response:
    user_id = current_user_id()
    limit, offset = query.limit or DEFAULT_LIMIT, query.offset or 0
    with current_pilot().db.transaction(user_id) as cur:
        rows = store.list_plans(cur, user_id, limit=limit, offset=offset)
    return jsonify({"plans": [serialize(row) for row in rows], "limit": limit, "offset": offset})


@bp.get("/<int:plan_id>")
@validate(
    summary="One plan", tag="plans", responses={200: Answer("the plan", Plan)}, errors=(404,), operation_id="getPlan"
)
def get(plan_id: int) -> Response:
    user_id = current_user_id()
    with current_pilot().db.transaction(user_id) as cur:
        row = store.get_plan(cur, user_id, check_id(plan_id, "plan"))
    if row is None:
        raise _not_found(plan_id)
    return jsonify(serialize(row))


@bp.put("/<int:plan_id>")
@validate(
    summary="Replace a plan",
    tag="plans",
    body=PlanBody,
    responses={200: Answer("the plan", Plan)},
    errors=(404,),
    operation_id="replacePlan",
)
def replace(plan_id: int, body: PlanBody) -> Response:
    user_id = current_user_id()
    check_id(plan_id, "plan")
    pilot = current_pilot()
    row = plans.update_plan(pilot.db, pilot.registry, user_id, plan_id, body, partial=False)
    return jsonify(serialize(row))


@bp.patch("/<int:plan_id>")
@validate(
    summary="Change some of a plan's fields",
    tag="plans",
    body=PlanPatch,
    responses={200: Answer("the plan", Plan)},
    errors=(404,),
    operation_id="updatePlan",
)
def patch(plan_id: int, body: PlanPatch) -> Response:
    user_id = current_user_id()
    check_id(plan_id, "plan")
    pilot = current_pilot()
    row = plans.update_plan(pilot.db, pilot.registry, user_id, plan_id, body.changes(), partial=True)
    return jsonify(serialize(row))


@bp.delete("/<int:plan_id>")
@validate(
    summary="Delete a plan", tag="plans", responses={204: Answer("deleted")}, errors=(404,), operation_id="deletePlan"
)
def delete(plan_id: int) -> tuple[str, int]:
    user_id = current_user_id()
    with current_pilot().db.transaction(user_id) as cur:
        deleted = store.delete_plan(cur, user_id, check_id(plan_id, "plan"))
    if not deleted:
        raise _not_found(plan_id)
    return "", 204
