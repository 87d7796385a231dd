"""The caller's runs across all of their plans: newest first, filtered, paged by id; one run's events (SSE)."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response, jsonify, request

from pilot.application import current_pilot
from pilot.data import store
from pilot.errors import ValidationError
from pilot.execution.events import RunFollower, parse_last_event_id
from pilot.http import sse
from pilot.http.auth import current_user_id
from pilot.http.common import check_id, int_arg, serialize

bp = Blueprint("runs", __name__, url_prefix="/api")
RUN_STATUSES = ("queued", "running", "success", "error", "interrupted", "skipped")
RUN_TRIGGERS = ("manual", "schedule", "api", "replay")
DEFAULT_LIMIT, MAX_LIMIT = 50, 500


def _positive_int(name: str) -> int | None:
    """The query parameter ``name`` as an id-sized positive integer, None when absent; 400 otherwise."""
    value = int_arg(name)
    if value == 0:
        raise ValidationError(f"{name} must be a positive integer")
    return value


def _choice(name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.args.get(name) or None
    if value is not None and value not in allowed:
        raise ValidationError(f"{name} must be one of {', '.join(allowed)}")
    return value


@bp.get("/runs")
def list_runs() -> Response:
    """``?plan_id=&status=&trigger=&limit=&before=``: runs with an id below ``before``, newest first.

    ``next_before`` is the cursor of the next (older) page, null on the last one.
    Rows carry the plan's name but not step outputs (``GET /api/runs/<id>`` has those).
    """
    user_id = current_user_id()
    limit = _positive_int("limit") or DEFAULT_LIMIT
    if limit > MAX_LIMIT:
        raise ValidationError(f"limit must be 1..{MAX_LIMIT}")
    plan_id, before = _positive_int("plan_id"), _positive_int("before")
    status, trigger = _choice("status", RUN_STATUSES), _choice("trigger", RUN_TRIGGERS)
    with current_pilot().db.transaction(user_id) as cur:
        rows = store.list_user_runs(
            cur, user_id, limit=limit, plan_id=plan_id, status=status, trigger=trigger, before=before
        )
    next_before = rows[-1]["id"] if len(rows) == limit else None
    return jsonify({"runs": [serialize(row) for row in rows], "limit": limit, "next_before": next_before})


@bp.get("/runs/<int:run_id>/events")
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
