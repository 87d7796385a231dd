"""Providers, single-step execution, plan runs."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from pilot.data import store
from pilot.errors import NotFound, ValidationError
from pilot.http.common import check_id, json_body, optional_json_body, paging, serialize
from pilot.security.auth import current_user_id
from pilot.security.redaction import Redactor
from pilot.services import services

bp = Blueprint("execution", __name__, url_prefix="/api")


@bp.get("/providers")
def providers() -> Response:
    return jsonify({"providers": services().registry.names()})


@bp.get("/providers/<name>")
def provider(name: str) -> Response:
    return jsonify(services().registry.get(name).describe())


@bp.post("/execute-step")
def execute_step() -> Response:
    body = json_body()
    user_id = current_user_id()
    if "step" not in body:
        raise ValidationError("step is required: {provider, action, params}")
    step_results = body.get("step_results") or {}
    input_ = body.get("input") or {}
    if not isinstance(step_results, dict) or not isinstance(input_, dict):
        raise ValidationError("step_results and input must be objects")
    results = {str(key): value for key, value in step_results.items()}
    context = {"steps": results, "step_results": results, "input": input_}
    result = services().engine.execute_step(user_id, body["step"], context)
    return jsonify(result.to_dict())


@bp.post("/provider-credentials/<name>/test")
def test_credentials(name: str) -> Response:
    optional_json_body()
    user_id = current_user_id()
    engine = services().engine
    provider_ = services().registry.get(name)
    credentials = engine.credentials_for(user_id, provider_)
    if not credentials:
        raise NotFound(f"no credentials stored for {name}")
    redactor = Redactor([*credentials.values(), *provider_.secret_values(credentials)])
    result = provider_.test_credentials(credentials, engine.context(user_id, timeout_s=15.0, redactor=redactor))
    return jsonify(redactor.value(result.to_dict()))


def _run_view(user_id: str, run: dict[str, Any]) -> dict[str, Any]:
    with services().db.transaction(user_id) as cur:
        logs = store.run_logs(cur, user_id, run["id"])
    return {**serialize(run), "logs": [serialize(row) for row in logs]}


@bp.post("/plans/<int:plan_id>/run")
def run_plan(plan_id: int) -> tuple[Response, int]:
    body = optional_json_body()
    user_id = current_user_id()
    check_id(plan_id, "plan")
    input_ = body.get("input") or {}
    if not isinstance(input_, dict):
        raise ValidationError("input must be an object")
    engine = services().engine
    trigger = "api" if body.get("trigger") == "api" else "manual"
    run = engine.create_run(user_id, plan_id, trigger, input_=input_)  # the input is kept on the run row
    if request.args.get("wait", "").lower() in {"1", "true", "yes"}:
        finished = engine.run(user_id, run["id"])
        if finished is None:  # not queued any more (ended by someone else): answer what it is now
            with services().db.transaction(user_id) as cur:
                finished = store.get_run(cur, user_id, run["id"])
            if finished is None:
                raise NotFound(f"run {run['id']} not found")
        return jsonify(_run_view(user_id, finished)), 200
    engine.submit(user_id, run["id"])
    return jsonify(serialize(run)), 202


@bp.get("/plans/<int:plan_id>/runs")
def plan_runs(plan_id: int) -> Response:
    user_id = current_user_id()
    limit, offset = paging()
    with services().db.transaction(user_id) as cur:
        if store.get_plan(cur, user_id, check_id(plan_id, "plan")) is None:
            raise NotFound(f"plan {plan_id} not found")
        runs = store.list_runs(cur, user_id, plan_id, limit=limit, offset=offset)
    return jsonify({"runs": [serialize(run) for run in runs], "limit": limit, "offset": offset})


@bp.get("/runs/<int:run_id>")
def get_run(run_id: int) -> Response:
    user_id = current_user_id()
    with services().db.transaction(user_id) as cur:
        run = store.get_run(cur, user_id, check_id(run_id, "run"))
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return jsonify(_run_view(user_id, run))
