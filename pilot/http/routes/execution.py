"""Providers, single-step execution, plan runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request

from pilot.application import current_pilot
from pilot.costs.report import run_totals
from pilot.data import store
from pilot.errors import Conflict, NotFound, ValidationError
from pilot.execution.dry_run import dry_run_plan
from pilot.execution.replay import replay_run
from pilot.execution.streaming import StepStream
from pilot.http import sse
from pilot.http.auth import current_user_id
from pilot.http.common import check_id, json_body, optional_json_body, paging, serialize
from pilot.http.idempotency import idempotent

bp = Blueprint("execution", __name__, url_prefix="/api")


@bp.get("/providers")
def providers() -> Response:
    return jsonify({"providers": current_pilot().registry.names()})


@bp.get("/providers/<name>")
def provider(name: str) -> Response:
    """The provider's actions and credential types, and this process's circuit breakers for it."""
    pilot = current_pilot()
    described = pilot.registry.get(name).describe()
    return jsonify({**described, "circuit_breakers": pilot.engine.breakers.snapshot(name)})


@bp.post("/execute-step")
@idempotent
def execute_step() -> Response:
    """One step now; with ``Accept: text/event-stream`` or ``?stream=true`` its text as Server-Sent Events."""
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
    if sse.wants_stream():
        stream = StepStream(current_pilot().engine, user_id, body["step"], context)  # 400s raise here
        return sse.stream_response(_step_events(stream))
    result = current_pilot().engine.execute_step(user_id, body["step"], context)
    return jsonify(result.to_dict())


def _step_events(stream: StepStream) -> Iterator[bytes]:
    """A streamed step on the wire: ``delta`` events ``{"text"}``, comments for signs of life, one ``result``."""
    yield sse.comment("stream open")  # headers out at once: the client knows the step was accepted
    for item in stream.events():
        if item.kind == "delta":
            yield sse.event("delta", {"text": item.data})
        elif item.kind == "result":
            yield sse.event("result", item.data)
        else:
            yield sse.comment()


@bp.post("/provider-credentials/<name>/test")
def test_credentials(name: str) -> Response:
    optional_json_body()
    user_id = current_user_id()
    return jsonify(current_pilot().engine.test_credentials(user_id, name))


def _run_view(user_id: str, run: dict[str, Any]) -> dict[str, Any]:
    """The run with its plan version's number, its step logs and its LLM totals (tokens, cost)."""
    with current_pilot().db.transaction(user_id) as cur:
        logs = store.run_logs(cur, user_id, run["id"])
        version_id = run.get("plan_version_id")
        version = store.get_plan_version(cur, user_id, version_id) if version_id else None
    view = {**serialize(run), "plan_version": version["version"] if version else None}
    return {**view, "usage": run_totals(logs), "logs": [serialize(row) for row in logs]}


@bp.post("/plans/<int:plan_id>/run")
@idempotent
def run_plan(plan_id: int) -> tuple[Response, int]:
    body = optional_json_body()
    user_id = current_user_id()
    check_id(plan_id, "plan")
    input_ = body.get("input") or {}
    if not isinstance(input_, dict):
        raise ValidationError("input must be an object")
    engine = current_pilot().engine
    if _flag("dry_run"):  # nothing is queued, sent or written: logic steps run, the others are shown
        return jsonify(dry_run_plan(engine, user_id, plan_id, input_)), 200
    trigger = "api" if body.get("trigger") == "api" else "manual"
    run = engine.create_run(user_id, plan_id, trigger, input_=input_)  # the input is kept on the run row
    if run is None:  # only a scheduled slot can be taken already; a run without one always inserts
        raise Conflict(f"plan {plan_id} already has this run")
    return _started(user_id, run)


@bp.post("/runs/<int:run_id>/replay")
@idempotent
def replay(run_id: int) -> tuple[Response, int]:
    """A new run of the run's plan version from ``from_step``, reusing the results before it (``replay.py``)."""
    body = optional_json_body()
    user_id = current_user_id()
    pilot = current_pilot()
    run = replay_run(pilot.engine, pilot.registry, user_id, check_id(run_id, "run"), body)
    return _started(user_id, run)


def _started(user_id: str, run: dict[str, Any]) -> tuple[Response, int]:
    """A queued run executed here (``?wait=true``: 200, the finished run) or on the worker pool (202)."""
    engine = current_pilot().engine
    if _flag("wait"):
        finished = engine.run(user_id, run["id"])
        if finished is None:  # not queued any more (ended by someone else): answer what it is now
            with current_pilot().db.transaction(user_id) as cur:
                finished = store.get_run(cur, user_id, run["id"])
            if finished is None:
                raise NotFound(f"run {run['id']} not found")
        return jsonify(_run_view(user_id, finished)), 200
    engine.submit(user_id, run["id"])
    return jsonify(serialize(run)), 202


def _flag(name: str) -> bool:
    return request.args.get(name, "").lower() in {"1", "true", "yes"}


@bp.get("/plans/<int:plan_id>/runs")
def plan_runs(plan_id: int) -> Response:
    user_id = current_user_id()
    limit, offset = paging()
    with current_pilot().db.transaction(user_id) as cur:
        if store.get_plan(cur, user_id, check_id(plan_id, "plan")) is None:
            raise NotFound(f"plan {plan_id} not found")
        runs = store.list_runs(cur, user_id, plan_id, limit=limit, offset=offset)
    return jsonify({"runs": [serialize(run) for run in runs], "limit": limit, "offset": offset})


@bp.get("/runs/<int:run_id>")
def get_run(run_id: int) -> Response:
    user_id = current_user_id()
    with current_pilot().db.transaction(user_id) as cur:
        run = store.get_run(cur, user_id, check_id(run_id, "run"))
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return jsonify(_run_view(user_id, run))
