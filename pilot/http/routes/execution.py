"""Providers, single-step execution, plan runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify

from pilot.application import current_pilot
from pilot.costs.report import run_totals
from pilot.data import store
from pilot.errors import Conflict, NotFound, ValidationError
from pilot.execution.dry_run import dry_run_plan
from pilot.execution.replay import replay_run
from pilot.execution.streaming import StepStream
from pilot.http import sse
from pilot.http.auth import current_user_id
from pilot.http.common import check_id, serialize
from pilot.http.idempotency import idempotent
from pilot.http.models import (
    STEP_EVENT_STREAM,
    DryRun,
    ExecuteStepBody,
    OptionalBody,
    Paging,
    ProviderDescription,
    ProviderList,
    ProviderResult,
    ReplayBody,
    Run,
    RunBody,
    RunList,
    RunPlanQuery,
    RunWithLogs,
    StreamQuery,
    WaitQuery,
)
from pilot.http.validation import Answer, validate

bp = Blueprint("execution", __name__, url_prefix="/api")


@bp.get("/providers")
@validate(
    summary="Registered provider names",
    tag="providers",
    responses={200: Answer("provider names", ProviderList)},
    auth=False,
    operation_id="listProviders",
)
def providers() -> Response:
    return jsonify({"providers": current_pilot().registry.names()})


@bp.get("/providers/<name>")
@validate(
    summary="A provider's actions (with params JSON Schemas), credential types and circuit breakers",
    tag="providers",
    responses={200: Answer("the provider", ProviderDescription)},
    errors=(404,),
    auth=False,
    operation_id="getProvider",
)
def provider(name: str) -> Response:
    """The provider's actions and credential types, and this process's circuit breakers for it."""
    pilot = current_pilot()
    described = pilot.registry.get(name).describe()
    return jsonify({**described, "circuit_breakers": pilot.engine.breakers.snapshot(name)})


@bp.post("/execute-step")
@validate(
    summary="Run one step now; streamed as Server-Sent Events with Accept: text/event-stream or ?stream=true",
    tag="runs",
    body=ExecuteStepBody,
    query=StreamQuery,
    responses={
        200: Answer(
            "the step ran (successfully or not)",
            ProviderResult,
            alternatives={sse.MEDIA_TYPE: STEP_EVENT_STREAM},
        )
    },
    errors=(404, 409),
    operation_id="executeStep",
)
@idempotent
def execute_step(body: ExecuteStepBody, query: StreamQuery) -> Response:
    """One step now; with ``Accept: text/event-stream`` or ``?stream=true`` its text as Server-Sent Events."""
    user_id = current_user_id()
    results = {str(key): value for key, value in (body.step_results or {}).items()}
    context = {"steps": results, "step_results": results, "input": body.input or {}}
    if sse.wants_stream():
        stream = StepStream(current_pilot().engine, user_id, body.step, context)  # 400s raise here
        return sse.stream_response(_step_events(stream))
    result = current_pilot().engine.execute_step(user_id, body.step, context)
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
@validate(
    summary="Check the stored credentials against the provider",
    tag="credentials",
    body=OptionalBody,
    body_required=False,
    responses={200: Answer("the provider's answer (success or not)", ProviderResult)},
    errors=(404, 409),
    operation_id="testCredentials",
)
def test_credentials(name: str, body: OptionalBody) -> Response:
    user_id = current_user_id()
    return jsonify(current_pilot().engine.test_credentials(user_id, name))


def _run_view(user_id: str, run: dict[str, Any]) -> dict[str, Any]:
    """The run with its plan version's number, its step logs and its LLM totals (tokens, cost).

    A run that ended in this process for a ``?wait=true`` here already holds its ``logs`` (the finish
    returned them); with its version's number known too, nothing is read.
    """
    pilot = current_pilot()
    run = dict(run)
    logs = run.pop("logs", None)
    version_id = run.get("plan_version_id")
    number = pilot.engine.version_number(user_id, version_id) if version_id else None
    unknown = version_id if version_id and number is None else None
    version = None
    if logs is None or unknown is not None:
        with pilot.db.transaction(user_id, single=logs is not None or unknown is None) as cur:  # one round trip
            if logs is None:
                logs = store.run_logs(cur, user_id, run["id"])
            version = store.get_plan_version(cur, user_id, unknown) if unknown is not None else None
    if version is not None:
        number = version["version"]
        pilot.engine.remember_version_number(user_id, version["id"], number)
    view = {**serialize(run), "plan_version": number}
    return {**view, "usage": run_totals(logs), "logs": [serialize(row) for row in logs]}


@bp.post("/plans/<int:plan_id>/run")
@validate(
    summary="Run a plan now: queued (202), finished with ?wait=true (200), or dry with ?dry_run=true (200)",
    tag="runs",
    body=RunBody,
    body_required=False,
    query=RunPlanQuery,
    responses={
        202: Answer(
            "the queued run (or, with ?wait=true, the run still queued or running after RUN_WAIT_SECONDS)", Run
        ),
        200: Answer("the finished run (?wait=true) or the dry run (?dry_run=true)", RunWithLogs | DryRun),
    },
    errors=(404, 429),
    operation_id="runPlan",
)
@idempotent
def run_plan(plan_id: int, body: RunBody, query: RunPlanQuery) -> tuple[Response, int]:
    user_id = current_user_id()
    check_id(plan_id, "plan")
    input_ = body.input or {}
    engine = current_pilot().engine
    if query.dry_run:  # nothing is queued, sent or written: logic steps run, the others are shown
        return jsonify(dry_run_plan(engine, user_id, plan_id, input_)), 200
    # Queued with its input (429 when the user's queue is full); any process's claimer runs it.
    run = engine.enqueue(user_id, plan_id, body.trigger, input_=input_, claim_here=query.wait)
    return _started(user_id, run, wait=query.wait)


@bp.post("/runs/<int:run_id>/replay")
@validate(
    summary="Replay a finished run from a step, against the plan version it ran, reusing the recorded results "
    "of the steps before it: queued (202) or finished with ?wait=true (200)",
    description="409 when the body does not fit the run: no failed step to start from, a from_step or params key "
    "naming no step of its plan version, params that the step's action refuses, an earlier result that cannot be "
    "reused (redacted or truncated), or the run still queued or running.",
    tag="runs",
    body=ReplayBody,
    body_required=False,
    query=WaitQuery,
    responses={
        202: Answer("the queued replay (trigger replay, replayed_from)", Run),
        200: Answer("the finished replay (?wait=true)", RunWithLogs),
    },
    errors=(404, 409, 429),
    operation_id="replayRun",
)
@idempotent
def replay(run_id: int, body: ReplayBody, query: WaitQuery) -> tuple[Response, int]:
    """A new run of the run's plan version from ``from_step``, reusing the results before it (``replay.py``)."""
    user_id = current_user_id()
    pilot = current_pilot()
    wanted = body.model_dump(exclude_none=True, exclude={"user_id"})
    try:
        run = replay_run(pilot.engine, pilot.registry, user_id, check_id(run_id, "run"), wanted, claim_here=query.wait)
    except ValidationError as exc:  # the body is well formed (the model) but does not fit this run's steps
        raise Conflict(exc.message, code=exc.code, details=exc.details) from exc
    return _started(user_id, run, wait=query.wait)


def _started(user_id: str, run: dict[str, Any], *, wait: bool) -> tuple[Response, int]:
    """A queued run: 202 with the run to poll, or (``?wait=true``) 200 with the run once it ended.

    ``?wait=true`` waits at most RUN_WAIT_SECONDS, then answers 202 with the run as it is.
    """
    pilot = current_pilot()
    if wait:
        current = pilot.engine.wait_for_run(user_id, run["id"], pilot.settings.run_wait_seconds)
        if current is None:  # the plan was deleted meanwhile, and its runs with it
            raise NotFound(f"run {run['id']} not found")
        if current["status"] not in ("queued", "running"):
            return jsonify(_run_view(user_id, current)), 200
        run = current
    return jsonify(serialize(run)), 202


@bp.get("/plans/<int:plan_id>/runs")
@validate(
    summary="A plan's run history, newest first",
    tag="runs",
    query=Paging,
    responses={200: Answer("runs", RunList)},
    errors=(404,),
    operation_id="listRuns",
)
def plan_runs(plan_id: int, query: Paging) -> Response:
    user_id = current_user_id()
    limit, offset = query.limit or 100, query.offset or 0
    with current_pilot().db.transaction(user_id) as cur:
        if store.get_plan(cur, user_id, check_id(plan_id, "plan")) is None:
            raise NotFound(f"plan {plan_id} not found")
        runs = store.list_runs(cur, user_id, plan_id, limit=limit, offset=offset)
    return jsonify({"runs": [serialize(run) for run in runs], "limit": limit, "offset": offset})


@bp.get("/runs/<int:run_id>")
@validate(
    summary="One run with its per-step logs",
    tag="runs",
    responses={200: Answer("the run", RunWithLogs)},
    errors=(404,),
    operation_id="getRun",
)
def get_run(run_id: int) -> Response:
    user_id = current_user_id()
    with current_pilot().db.transaction(user_id) as cur:
        run = store.get_run(cur, user_id, check_id(run_id, "run"))
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return jsonify(_run_view(user_id, run))
