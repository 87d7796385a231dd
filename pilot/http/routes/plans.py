"""Plans: a user's ordered steps, optional schedule; CRUD under RLS."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from pilot.data import store
from pilot.errors import NotFound
from pilot.http.common import check_id, json_body, paging, serialize
from pilot.security.auth import current_user_id
from pilot.services import services
from pilot.steps.plan_schema import PlanBody, parse, plan_to_record

bp = Blueprint("plans", __name__, url_prefix="/api/plans")


def validated_record(payload: dict[str, Any]) -> dict[str, Any]:
    """Structure, then (when providers are loaded) each step against its provider's schema."""
    record = plan_to_record(parse(PlanBody, payload))
    services().engine.validate_plan_steps(record["steps"])
    return record


def _not_found(plan_id: int) -> NotFound:
    return NotFound(f"plan {plan_id} not found")


@bp.post("")
def create() -> tuple[Response, int]:
    body = json_body()
    user_id = current_user_id()
    record = validated_record(body)
    with services().db.transaction(user_id) as cur:
        row = store.insert_plan(cur, user_id, record)
    return jsonify(serialize(row)), 201


@bp.get("")
def list_() -> Response:
    user_id = current_user_id()
    limit, offset = paging()
    with services().db.transaction(user_id) as cur:
        rows = store.list_plans(cur, user_id, limit=limit, offset=offset)
    return jsonify({"plans": [serialize(row) for row in rows], "limit": limit, "offset": offset})


@bp.get("/<int:plan_id>")
def get(plan_id: int) -> Response:
    user_id = current_user_id()
    with services().db.transaction(user_id) as cur:
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
    with services().db.transaction(user_id) as cur:
        current = store.get_plan(cur, user_id, plan_id, for_update=True)
        if current is None:
            raise _not_found(plan_id)
        if request.method == "PATCH":
            merged = {field: current[field] for field in store.PLAN_FIELDS}
            merged.update(body)
            body = merged
        row = store.update_plan(cur, user_id, plan_id, validated_record(body))
    if row is None:
        raise _not_found(plan_id)
    return jsonify(serialize(row))


@bp.delete("/<int:plan_id>")
def delete(plan_id: int) -> tuple[str, int]:
    user_id = current_user_id()
    with services().db.transaction(user_id) as cur:
        deleted = store.delete_plan(cur, user_id, check_id(plan_id, "plan"))
    if not deleted:
        raise _not_found(plan_id)
    return "", 204
