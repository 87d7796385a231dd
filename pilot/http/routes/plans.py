"""Plans: a user's ordered steps, optional schedule; CRUD under RLS."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from pilot.application import current_pilot
from pilot.data import store
from pilot.errors import NotFound
from pilot.http.auth import current_user_id
from pilot.http.common import check_id, json_body, paging, serialize
from pilot.http.idempotency import idempotent
from pilot.steps import plans

bp = Blueprint("plans", __name__, url_prefix="/api/plans")


def _not_found(plan_id: int) -> NotFound:
    return NotFound(f"plan {plan_id} not found")


@bp.post("")
@idempotent
def create() -> tuple[Response, int]:
    body = json_body()
    user_id = current_user_id()
    pilot = current_pilot()
    row = plans.create_plan(pilot.db, pilot.registry, user_id, body)
    return jsonify(serialize(row)), 201


@bp.get("")
def list_() -> Response:
    user_id = current_user_id()
    limit, offset = paging()
    with current_pilot().db.transaction(user_id) as cur:
        rows = store.list_plans(cur, user_id, limit=limit, offset=offset)
    return jsonify({"plans": [serialize(row) for row in rows], "limit": limit, "offset": offset})


@bp.get("/<int:plan_id>")
def get(plan_id: int) -> Response:
    user_id = current_user_id()
    with current_pilot().db.transaction(user_id) as cur:
        row = store.get_plan(cur, user_id, check_id(plan_id, "plan"))
    if row is None:
        raise _not_found(plan_id)
    return jsonify(serialize(row))


@bp.put("/<int:plan_id>")
@bp.patch("/<int:plan_id>")
def update(plan_id: int) -> Response:
    body = json_body()
    user_id = current_user_id()
    check_id(plan_id, "plan")
    pilot = current_pilot()
    row = plans.update_plan(pilot.db, pilot.registry, user_id, plan_id, body, partial=request.method == "PATCH")
    return jsonify(serialize(row))


@bp.delete("/<int:plan_id>")
def delete(plan_id: int) -> tuple[str, int]:
    user_id = current_user_id()
    with current_pilot().db.transaction(user_id) as cur:
        deleted = store.delete_plan(cur, user_id, check_id(plan_id, "plan"))
    if not deleted:
        raise _not_found(plan_id)
    return "", 204
