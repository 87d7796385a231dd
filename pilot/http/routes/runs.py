"""The caller's runs across all of their plans: newest first, filtered, paged by id; one run's events (SSE)."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response, jsonify, request

from pilot.application import current_pilot
from pilot.data import store
from pilot.execution.events import RunFollower, parse_last_event_id
from pilot.http import sse
from pilot.http.auth import current_user_id
from pilot.http.common import check_id, serialize
from pilot.http.models import RUN_EVENT_STREAM, RunsQuery, RunSummaryList
from pilot.http.validation import Answer, validate

bp = Blueprint("runs", __name__, url_prefix="/api")
DEFAULT_LIMIT = 50


@bp.get("/runs")
@validate(
    summary="The caller's runs across all plans, newest first",
    tag="runs",
    query=RunsQuery,
    responses={200: Answer("runs; pass next_before as before for the next (older) page", RunSummaryList)},
    operation_id="listAllRuns",
)
def list_runs(query: RunsQuery) -> Response:
    """``?plan_id=&status=&trigger=&limit=&before=``: runs with an id below ``before``, newest first.

    ``next_before`` is the cursor of the next (older) page, null on the last one.
    Rows carry the plan's name but not step outputs (``GET /api/runs/<id>`` has those).
    """
    user_id = current_user_id()
    limit = query.limit or DEFAULT_LIMIT
    with current_pilot().db.transaction(user_id) as cur:
        rows = store.list_user_runs(
            cur,
            user_id,
            limit=limit,
            plan_id=query.plan_id,
            status=query.status,
            trigger=query.trigger,
            before=query.before,
        )
    next_before = rows[-1]["id"] if len(rows) == limit else None
    return jsonify({"runs": [serialize(row) for row in rows], "limit": limit, "next_before": next_before})


@bp.get("/runs/<int:run_id>/events")
@validate(
    summary="The run's events as Server-Sent Events: those already past first, then each as it happens, "
    "until run_finished",
    tag="runs",
    responses={200: Answer("the event stream", media_type=sse.MEDIA_TYPE, model=RUN_EVENT_STREAM)},
    errors=(404, 409),
    operation_id="getRunEvents",
    headers=(
        (
            "Last-Event-ID",
            {"type": "string", "pattern": "^[0-9]{0,12}$"},
            "resume after this event (EventSource sends it on reconnect); past a finished run's last event: 409",
        ),
    ),
    description="Events: step_started (steps with side "
    "effects), step_finished (the step's result), error, run_finished; each with an id. Comment lines are "
    "heartbeats. The stream ends after run_finished or EVENTS_MAX_SECONDS (reconnect with Last-Event-ID).",
)
def run_events(run_id: int) -> Response:
    """The run's events as Server-Sent Events: those past first, then each as it happens, until it ends.

    ``Last-Event-ID`` (sent by EventSource on reconnect) resumes after that event. The
    stream ends with ``run_finished``, or after ``EVENTS_MAX_SECONDS`` (the client
    reconnects with ``Last-Event-ID``), or when the client goes away.
    """
    user_id = current_user_id()
    after = parse_last_event_id(request.headers.get("Last-Event-ID"))
    pilot = current_pilot()
    registry = pilot.registry

    def pure(provider: str) -> bool:
        return provider in registry and registry.get(provider).pure

    follower = RunFollower(
        pilot.db,
        user_id,
        check_id(run_id, "run"),
        pure=pure,
        after=after,
        heartbeat_seconds=pilot.settings.events_heartbeat_seconds,
        max_seconds=pilot.settings.events_max_seconds,
    )
    response = sse.stream_response(_run_wire(follower))
    response.call_on_close(follower.close)  # also when the body was never started
    return response


def _run_wire(follower: RunFollower) -> Iterator[bytes]:
    yield sse.comment("stream open")  # headers out at once: the client knows it is following
    for item in follower.events():
        if item is None:
            yield sse.comment()
        else:
            yield sse.event(item.name, item.data, id=None if item.seq is None else str(item.seq))
