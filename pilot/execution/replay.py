"""Replay of a finished run from one of its steps (``POST /api/runs/<id>/replay``, issue 11 item 3).

A replay is a new run (trigger ``replay``, ``replayed_from`` = the run it came from) of
the plan version the old run executed, whatever the plan is now. The steps before
``from_step`` are not executed: their recorded results (the old run's ``step_results``)
are copied onto the new run when it is created (``plan_runs.replay.reused``) and fed to
the later steps as they were. A reused step makes no call, costs nothing and writes no
``execution_logs`` row; in the new run's ``step_results`` it carries
``"reused_from_run": <old run id>``. From ``from_step`` on, the steps execute through the
ordinary run path (``RunExecution.run``), budget checks included, with ``params``
overrides merged into their params (validated like a plan save).

A recorded result is reused only when it is whole. One that was not stored, or that
holds a redaction marker (``[REDACTED]``) or a truncation marker (``{"truncated": true}``
previews, ``metadata.body_truncated``), is not what the step produced, so feeding it on
would be feeding a different value: the replay is refused (400 ``result_not_reusable``)
with a message naming that step; replaying from it (or an earlier step) executes it again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pilot.data import store
from pilot.errors import Conflict, NotFound, ValidationError
from pilot.security.redaction import REDACTED
from pilot.steps.plan_schema import Step, parse
from pilot.steps.plans import validate_step

if TYPE_CHECKING:
    from pilot.execution.runs import RunExecution
    from provider_registry import ProviderRegistry

BODY_FIELDS = frozenset({"from_step", "params", "user_id"})  # user_id: the dev auth mode reads it from the body
UNFINISHED = ("error", "running")  # a step that failed, or was in flight when its run was interrupted
RECORDED = ("index", "id", "provider", "action", "status", "result")  # what a reused step keeps of its record
MAX_WALK = 200_000  # values looked at for markers in one recorded result (results nest at most 128 deep)


def replay_run(
    engine: RunExecution, registry: ProviderRegistry, user_id: str, run_id: int, body: Any, *, claim_here: bool = False
) -> store.Row:
    """Queue the replay of ``user_id``'s run ``run_id`` (module docstring); the new run's row.

    It goes through the run queue like any run (``engine.enqueue``: 429 when the user's queue is
    full; ``claim_here`` claims in the caller's thread, for ``?wait=true``).

    NotFound when the run is not theirs; Conflict while it is still queued or running;
    ValidationError naming the field for a bad ``from_step``, ``params`` or a step that cannot be reused.
    """
    from_step, overrides = _parse_body(body)
    with engine.db.transaction(user_id) as cur:
        source = store.get_run(cur, user_id, run_id)
        version_id = (source or {}).get("plan_version_id")
        version = store.get_plan_version(cur, user_id, version_id) if version_id else None
    if source is None:
        raise NotFound(f"run {run_id} not found")
    if source["status"] in ("queued", "running"):
        status = source["status"]
        raise Conflict(f"run {run_id} is still {status}; replay it once it has ended", code="run_not_finished")
    if version is None:
        raise Conflict(f"run {run_id} has no recorded plan version to replay", code="no_plan_version")
    steps: list[dict[str, Any]] = version["steps"]
    start = start_index(source, steps, from_step)
    recorded = {entry.get("index"): entry for entry in source.get("step_results") or [] if isinstance(entry, dict)}
    reused = [_reusable(recorded.get(index), steps[index], index, run_id) for index in range(start)]
    replay = {
        "from_index": start,
        "from_step": steps[start].get("id") or start,
        "params": _overrides(registry, steps, start, overrides),
        "reused": reused,
    }
    return engine.enqueue(
        user_id,
        source["plan_id"],
        "replay",
        input_=source.get("input") or {},
        claim_here=claim_here,
        plan_version_id=version["id"],
        replayed_from=run_id,
        replay=replay,
    )


def replayed_steps(steps: list[dict[str, Any]], replay: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The run hook: (the steps with their ``params`` overrides merged, the recorded results to reuse first)."""
    if not isinstance(replay, dict):
        return steps, []
    overrides = replay.get("params") or {}
    merged = [
        {**step, "params": {**(step.get("params") or {}), **overrides[str(index)]}} if str(index) in overrides else step
        for index, step in enumerate(steps)
    ]
    return merged, list(replay.get("reused") or [])


def start_index(source: store.Row, steps: list[dict[str, Any]], from_step: Any) -> int:
    """The index to execute from: ``from_step`` (an id or an index), else the first failed or interrupted step."""
    if from_step is None:
        found = _first_unfinished(source, len(steps))
        if found is None:
            raise ValidationError(
                f"run {source['id']} has no failed or interrupted step to replay from; name one with from_step",
                code="nothing_to_replay",
            )
        return found
    if isinstance(from_step, int) and not isinstance(from_step, bool):
        if not 0 <= from_step < len(steps):
            raise ValidationError(
                f"from_step: index {from_step} is out of range; the run's plan version has steps 0..{len(steps) - 1}"
            )
        return from_step
    if not isinstance(from_step, str):
        raise ValidationError("from_step must be a step id (string) or a step index (integer)")
    for index, step in enumerate(steps):
        if step.get("id") == from_step:
            return index
    raise ValidationError(f"from_step: no step of the run's plan version has the id {from_step!r}")


def _first_unfinished(source: store.Row, count: int) -> int | None:
    entries = [entry for entry in source.get("step_results") or [] if isinstance(entry, dict)]
    for entry in entries:
        if entry.get("status") in UNFINISHED and isinstance(entry.get("index"), int):
            return int(entry["index"])
    if source["status"] in ("error", "interrupted"):  # ended before its next step started
        following = max((e["index"] for e in entries if isinstance(e.get("index"), int)), default=-1) + 1
        if following < count:
            return following
    return None


def _reusable(entry: dict[str, Any] | None, step: dict[str, Any], index: int, run_id: int) -> dict[str, Any]:
    """The recorded result of a step before ``from_step``, marked reused; 400 naming the step when it cannot be."""
    what = f"step {step.get('id') or index!r} (index {index})"
    again = "replay from it or an earlier step to execute it again"
    if entry is None or entry.get("status") not in ("success", "skipped", "error"):
        raise ValidationError(f"{what} has no recorded result in run {run_id}; {again}", code="result_not_reusable")
    if entry["status"] == "error" and not step.get("continue_on_error"):
        raise ValidationError(f"{what} failed in run {run_id}; {again}", code="result_not_reusable")
    if entry["status"] != "skipped":
        reason = not_whole(entry)
        if reason:
            raise ValidationError(
                f"{what} cannot be reused: its recorded result {reason}; {again}", code="result_not_reusable"
            )
    kept: dict[str, Any] = {key: entry[key] for key in RECORDED if key in entry}
    return {**kept, "reused_from_run": run_id}


def not_whole(entry: dict[str, Any]) -> str | None:
    """Why a recorded step result is not the whole result (None when it is): missing, truncated or redacted."""
    if not isinstance(entry.get("result"), dict):
        return "was not stored"
    stack: list[Any] = [entry["result"]]
    seen = 0
    while stack and seen < MAX_WALK:
        node = stack.pop()
        seen += 1
        if isinstance(node, str):
            if REDACTED in node:
                return "was redacted"
        elif isinstance(node, dict):
            if node.get("truncated") is True or any(
                key.endswith("_truncated") and value is True for key, value in node.items()
            ):
                return "was truncated"
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None if not stack else "is too large to check"


def _parse_body(body: dict[str, Any]) -> tuple[Any, Any]:
    unknown = sorted(set(body) - BODY_FIELDS)
    if unknown:
        raise ValidationError(f"{unknown[0]}: unknown field; a replay takes from_step and params")
    return body.get("from_step"), body.get("params")


def _overrides(
    registry: ProviderRegistry, steps: list[dict[str, Any]], start: int, overrides: Any
) -> dict[str, dict[str, Any]]:
    """``params`` checked: {step id (or index): params merged into that step's}; keyed by index for the run."""
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise ValidationError("params must be an object: {<step id>: {<param>: value}}")
    checked: dict[str, dict[str, Any]] = {}
    for key, changes in overrides.items():
        where = f"params.{key}"
        index = _step_index(steps, key, where)
        if index < start:
            raise ValidationError(
                f"{where}: the step is before from_step (index {start}); its recorded result is reused, "
                "so its params cannot change"
            )
        if not isinstance(changes, dict):
            raise ValidationError(f"{where} must be an object of params to merge into the step's")
        step = {**steps[index], "params": {**(steps[index].get("params") or {}), **changes}}
        parse(Step, step, where=where)
        validate_step(registry, step, where)
        checked[str(index)] = changes
    return checked


def _step_index(steps: list[dict[str, Any]], key: str, where: str) -> int:
    for index, step in enumerate(steps):
        if step.get("id") == key:
            return index
    if key.isascii() and key.isdigit() and int(key) < len(steps) and not steps[int(key)].get("id"):
        return int(key)  # a step without an id is named by its index
    raise ValidationError(f"{where}: no step of the run's plan version has the id {key!r}")
