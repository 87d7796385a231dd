"""The data layer: every read and write Pilot makes, as named functions over a cursor.

Callers open the transaction (``db_manager.transaction(user_id)``) and pass its
cursor, so one request can group several calls atomically. The SQL itself
lives in ``queries.sql``.

PostgreSQL refuses U+0000 in text and jsonb (psycopg2 raises ``ValueError`` for
a text parameter, the server a DataError for jsonb). Upstream replies and
rendered values may contain it, so every parameter passes through here, where
NUL is replaced by U+FFFD: no writer can fail on it, whoever forgot to check.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.sql
from psycopg2.extras import Json

from database import Cursor

QUERIES_FILE = Path(__file__).resolve().parent / "queries.sql"
_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
NUL = "\x00"
NUL_REPLACEMENT = "\ufffd"
# Every backslash in JSON text starts a two-character escape (\uXXXX continues with
# plain hex digits), so matching escapes left to right finds exactly the NULs.
_JSON_ESCAPE = re.compile(r"\\(u0000|.)", re.DOTALL)

Row = dict[str, Any]
DEFAULT_LEASE_SECONDS = 30


class PgJson(Json):
    """A jsonb parameter with every U+0000 (in keys and values) replaced by U+FFFD."""

    def dumps(self, obj: Any) -> str:
        text = json.dumps(obj)
        if "\\u0000" not in text:
            return text
        return _JSON_ESCAPE.sub(lambda m: "\\ufffd" if m.group(1) == "u0000" else m.group(0), text)


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with NUL replaced in every text value (jsonb values are PgJson already)."""
    return {
        key: value.replace(NUL, NUL_REPLACEMENT) if isinstance(value, str) and NUL in value else value
        for key, value in params.items()
    }


def _execute(cur: Cursor, name: str, params: dict[str, Any]) -> None:
    cur.execute(queries()[name], _clean(params))


@cache
def queries() -> dict[str, str]:
    """Parse ``queries.sql`` once into {name: statement}."""
    text = QUERIES_FILE.read_text(encoding="utf-8")
    parts = _NAME_LINE.split(text)
    return {name: body.strip().rstrip(";") for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def _one(cur: Cursor, name: str, /, **params: Any) -> Row | None:
    _execute(cur, name, params)
    row: Row | None = cur.fetchone()  # a new dict per row (database.Cursor)
    return row


def _all(cur: Cursor, name: str, /, **params: Any) -> list[Row]:
    _execute(cur, name, params)
    rows: list[Row] = cur.fetchall()
    return rows


# --- credentials -------------------------------------------------------------


def upsert_credential(cur: Cursor, user_id: str, provider: str, type_: str, encrypted_value: str) -> Row:
    row = _one(
        cur, "upsert_credential", user_id=user_id, provider=provider, type=type_, encrypted_value=encrypted_value
    )
    assert row is not None  # RETURNING always yields the row
    return row


def list_credentials(cur: Cursor, user_id: str, provider: str | None = None) -> list[Row]:
    return _all(cur, "list_credentials", user_id=user_id, provider=provider)


def delete_credentials(cur: Cursor, user_id: str, provider: str, type_: str | None = None) -> list[str]:
    return [row["type"] for row in _all(cur, "delete_credentials", user_id=user_id, provider=provider, type=type_)]


def all_credentials_for_update(cur: Cursor) -> list[Row]:
    """Every user's credentials, locked: operator commands only (connecting role, not pilot_app)."""
    return _all(cur, "all_credentials_for_update")


def set_encrypted_value(cur: Cursor, credential_id: int, encrypted_value: str) -> None:
    _execute(cur, "set_encrypted_value", {"id": credential_id, "encrypted_value": encrypted_value})


# --- plans -------------------------------------------------------------------

PLAN_FIELDS = ("name", "original_prompt", "steps", "schedule", "timezone", "enabled", "max_cost_usd")


def _plan_params(user_id: str, plan: dict[str, Any]) -> dict[str, Any]:
    params = {field: plan.get(field) for field in PLAN_FIELDS}
    params["steps"] = PgJson(plan.get("steps") or [])
    params["schedule"] = PgJson(plan["schedule"]) if plan.get("schedule") is not None else None
    params["user_id"] = user_id
    return params


def insert_plan(cur: Cursor, user_id: str, plan: dict[str, Any]) -> Row:
    row = _one(cur, "insert_plan", **_plan_params(user_id, plan))
    assert row is not None
    return row


def list_plans(cur: Cursor, user_id: str, *, limit: int = 100, offset: int = 0) -> list[Row]:
    return _all(cur, "list_plans", user_id=user_id, limit=limit, offset=offset)


def get_plan(cur: Cursor, user_id: str, plan_id: int, *, for_update: bool = False) -> Row | None:
    return _one(cur, "get_plan_for_update" if for_update else "get_plan", user_id=user_id, id=plan_id)


def update_plan(cur: Cursor, user_id: str, plan_id: int, plan: dict[str, Any]) -> Row | None:
    return _one(cur, "update_plan", id=plan_id, **_plan_params(user_id, plan))


def delete_plan(cur: Cursor, user_id: str, plan_id: int) -> bool:
    return _one(cur, "delete_plan", user_id=user_id, id=plan_id) is not None


# --- execution logs ----------------------------------------------------------

LOG_FILTERS = ("provider", "status", "plan_id", "run_id", "since")


def _log_params(user_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "plan_id": entry.get("plan_id"),
        "run_id": entry.get("run_id"),
        "step_index": entry.get("step_index"),
        "step_id": entry.get("step_id"),
        "provider": entry["provider"],
        "action": entry["action"],
        "status": entry["status"],
        "latency_ms": entry.get("latency_ms", 0.0),
        "error_code": entry.get("error_code"),
        "error": entry.get("error"),
        "attempt": entry.get("attempt", 1),
        "input": PgJson(entry.get("input")),
        "output": PgJson(entry.get("output")),
        "model": entry.get("model"),
        "input_tokens": entry.get("input_tokens"),
        "output_tokens": entry.get("output_tokens"),
        "cost_usd": entry.get("cost_usd"),
    }


def insert_log(cur: Cursor, user_id: str, entry: dict[str, Any]) -> int:
    row = _one(cur, "insert_log", **_log_params(user_id, entry))
    assert row is not None
    return int(row["id"])


def insert_logs(cur: Cursor, user_id: str, entries: list[dict[str, Any]]) -> None:
    """Several log rows, in order; nothing is read, so the cursor sends them with the transaction's next batch."""
    for entry in entries:
        _execute(cur, "insert_log", _log_params(user_id, entry))


def list_logs(cur: Cursor, user_id: str, *, limit: int, offset: int, **filters: Any) -> list[Row]:
    params = {name: filters.get(name) for name in LOG_FILTERS}
    return _all(cur, "list_logs", user_id=user_id, limit=limit, offset=offset, **params)


def run_logs(cur: Cursor, user_id: str, run_id: int) -> list[Row]:
    return _all(cur, "run_logs", user_id=user_id, run_id=run_id)


# The latency buckets of the hourly rollup (migration 015's pilot_latency_bounds(), the same list):
# bucket i holds LATENCY_BOUNDS_MS[i-1] <= latency < LATENCY_BOUNDS_MS[i]; bucket 0 below the first bound.
LATENCY_BOUNDS_MS = (
    0.5, 1, 2, 5, 10, 25, 50, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 4000, 5000, 7500,
    10000, 15000, 20000, 30000, 60000, 120000, 300000,
)  # fmt: skip


def percentile_from_buckets(buckets: list[list[int]], total: int, maximum: float, q: float = 0.95) -> float:
    """The ``q`` percentile estimated from a latency histogram ([bucket, count] pairs, ascending).

    It finds the bucket holding the value ``percentile_cont`` would interpolate at
    (rank ``q * (total - 1)``) and interpolates linearly inside it, the top bucket ending
    at ``maximum``: the estimate lies in the bucket of the exact answer (or, when that
    answer falls between two values of neighbouring buckets, in one of the two).
    """
    rank = q * (total - 1)
    seen = 0
    for bucket, count in buckets:
        if count > 0 and seen + count > rank:
            low = float(LATENCY_BOUNDS_MS[bucket - 1]) if bucket > 0 else 0.0
            high = min(float(LATENCY_BOUNDS_MS[bucket]) if bucket < len(LATENCY_BOUNDS_MS) else maximum, maximum)
            low = min(low, high)
            return round(low + (high - low) * min(1.0, (rank - seen + 0.5) / count), 2)
        seen += count
    return float(maximum)


def provider_metrics(cur: Cursor, user_id: str, hours: int) -> list[Row]:
    """Per provider over the last ``hours``: counts and rates exact; p95 exact over raw rows only, else from
    the hourly histograms (``percentile_from_buckets``)."""
    _execute(cur, "jit_off", {})  # sent with the query, in its round trip
    rows = _all(cur, "provider_metrics", user_id=user_id, hours=hours)
    for row in rows:
        buckets, rolled, raw_p95 = row.pop("latency_buckets") or [], row.pop("rolled_total"), row.pop("raw_p95")
        total = int(row["total_executions"])
        row["p95_latency_ms"] = (
            raw_p95 if not rolled else percentile_from_buckets(buckets, total, row["max_latency_ms"])
        )
    return rows


def error_trends(cur: Cursor, user_id: str, hours: int) -> list[Row]:
    _execute(cur, "jit_off", {})
    return _all(cur, "error_trends", user_id=user_id, hours=hours)


def provider_metrics_raw(cur: Cursor, user_id: str, hours: int) -> list[Row]:
    """The same figures from every raw row of the window (exact p95): the rollup's reference."""
    return _all(cur, "provider_metrics_raw", user_id=user_id, hours=hours)


def error_trends_raw(cur: Cursor, user_id: str, hours: int) -> list[Row]:
    return _all(cur, "error_trends_raw", user_id=user_id, hours=hours)


def rollup_metrics(cur: Cursor, settle_seconds: int, max_hours: int) -> int:
    """Roll up closed hours (``pilot_rollup_metrics``, pilot_system): hours done, -1 when another process holds it."""
    row = _one(cur, "rollup_metrics", settle_seconds=settle_seconds, max_hours=max_hours)
    return int(row["hours"]) if row is not None else 0


def rollup_pruned(cur: Cursor, cutoff: Any) -> None:
    """After a prune (operator role): forget rolled-up hours before ``cutoff``, recompute the hour it falls in."""
    _execute(cur, "rollup_pruned", {"cutoff": cutoff})


def rollup_state(cur: Cursor) -> Row | None:
    return _one(cur, "rollup_state")


# --- plan runs ---------------------------------------------------------------


def insert_run(
    cur: Cursor,
    user_id: str,
    plan_id: int,
    *,
    trigger: str,
    owner_id: str,
    scheduled_for: Any = None,
    status: str = "queued",
    error: str | None = None,
    input_: dict[str, Any] | None = None,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
    plan_version_id: int | None = None,
    replayed_from: int | None = None,
    replay: dict[str, Any] | None = None,
) -> Row | None:
    """The new run holding ``input_``, leased to ``owner_id``; None when (plan, scheduled_for) already has one.

    ``plan_version_id`` None: the plan's latest version; a replay names the version it replays.
    """
    return _one(
        cur,
        "insert_run",
        user_id=user_id,
        plan_id=plan_id,
        trigger=trigger,
        scheduled_for=scheduled_for,
        status=status,
        owner_id=owner_id,
        error=error,
        input=PgJson(input_ or {}),
        lease_seconds=lease_seconds,
        plan_version_id=plan_version_id,
        replayed_from=replayed_from,
        replay=PgJson(replay) if replay is not None else None,
    )


def enqueue_run(
    cur: Cursor,
    user_id: str,
    plan_id: int,
    *,
    trigger: str,
    input_: dict[str, Any] | None = None,
    scheduled_for: Any = None,
    queue_max: int | None = None,
    reason: str | None = None,
    plan_version_id: int | None = None,
    replayed_from: int | None = None,
    replay: dict[str, Any] | None = None,
    start_owner: str | None = None,
    lease_seconds: int | None = None,
    max_per_user: int | None = None,
) -> Row | None:
    """Queue a run of ``plan_id`` holding ``input_``, for any process's claimer; the new row, or None.

    The one way to put a run on the queue (issue 9): the row is ``queued``, with no
    owner and no lease until a claimer takes it, and its insert NOTIFYs ``pilot_runs``
    when the transaction commits (trigger of migration 013), so claimers in every
    process wake. None when the plan is not the user's, when ``queue_max`` is set and
    the user already has that many queued runs, or when ``scheduled_for`` is set and
    that (plan, slot) has a run.

    With ``start_owner``, the run is inserted ``running`` for that owner (its lease
    ``lease_seconds``) if a claim would take it at once: nothing queued, the user under
    ``max_per_user`` (migration 021). A started row carries ``steps`` and ``plan_exists``
    as a claimed one does.
    """
    row = _one(
        cur,
        "enqueue_run",
        start_owner=start_owner,
        lease_seconds=lease_seconds,
        max_per_user=max_per_user,
        user_id=user_id,
        plan_id=plan_id,
        trigger=trigger,
        scheduled_for=scheduled_for,
        input=PgJson(input_ or {}),
        queue_max=queue_max,
        reason=reason,
        plan_version_id=plan_version_id,
        replayed_from=replayed_from,
        replay=None if replay is None else PgJson(replay),
    )
    if row is not None:
        del row["unflushed"]  # set when started: this commit does not wait for its flush (queries.sql)
        if row["status"] == "running":
            row["plan_exists"] = True
        else:
            del row["steps"]
    return row


def commit_without_flush(cur: Cursor) -> None:
    """This transaction commits without waiting for its WAL flush (claims only: queries.sql says why)."""
    _execute(cur, "commit_without_flush", {})


def quiet_enqueue(cur: Cursor) -> None:
    """The runs this transaction queues wake no claimer: the caller claims them itself (then ``notify_queued``)."""
    _execute(cur, "quiet_enqueue", {})


def notify_queued(cur: Cursor) -> None:
    """Wake every process's claimer: runs are queued (what an insert does unless ``quiet_enqueue``)."""
    _execute(cur, "notify_queued", {})


def queued_count(cur: Cursor, user_id: str) -> int:
    """How many runs of ``user_id`` are queued (not yet claimed)."""
    row = _one(cur, "queued_count", user_id=user_id)
    return int(row["queued"]) if row else 0


def claim_runs(
    cur: Cursor,
    owner: str,
    limit: int,
    max_per_user: int | None,
    lease_seconds: int,
    max_lateness: float | None = None,
) -> list[Row]:
    """Claim and start up to ``limit`` queued runs for ``owner``, oldest first, at most ``max_per_user``
    running per user (counted across every process), each with ``steps`` (its plan version's) and
    ``plan_exists``; plus, with ``late`` true, the scheduled runs that waited over ``max_lateness`` s
    and were ended ``skipped`` instead. Only in a ``system_transaction``."""
    return _all(
        cur,
        "claim_runs",
        owner=owner,
        limit=limit,
        max_per_user=max_per_user,
        lease_seconds=lease_seconds,
        max_lateness=max_lateness,
    )


def start_run(
    cur: Cursor, user_id: str, run_id: int, owner_id: str, lease_seconds: int = DEFAULT_LEASE_SECONDS
) -> Row | None:
    """The run, now running and leased to ``owner_id``; None unless it was queued."""
    return _one(cur, "start_run", user_id=user_id, id=run_id, owner_id=owner_id, lease_seconds=lease_seconds)


def progress_run(cur: Cursor, user_id: str, run_id: int, step_results: list[Any], owner_id: str | None = None) -> None:
    """Record the steps so far (the last one may be ``running``); with ``owner_id``, only while it holds the run."""
    params = {"user_id": user_id, "id": run_id, "step_results": PgJson(step_results), "owner_id": owner_id}
    _execute(cur, "progress_run", params)


def append_progress(cur: Cursor, user_id: str, run_id: int, entries: list[Any], owner_id: str | None = None) -> None:
    """Append ``entries`` (ending with the running step's marker), replacing the last marker;
    with ``owner_id``, only while that process holds the run."""
    params = {"user_id": user_id, "id": run_id, "entries": PgJson(entries), "owner_id": owner_id}
    _execute(cur, "append_progress", params)


def finish_run(
    cur: Cursor,
    user_id: str,
    run_id: int,
    status: str,
    step_results: list[Any],
    error: str | None,
    owner_id: str | None = None,
    *,
    with_logs: bool = False,
) -> Row | None:
    """End an unfinished run; with ``owner_id``, only while that process holds it (else None).

    ``with_logs``: the row holds ``logs``, its run's log rows as ``run_logs`` reads them (the
    statements before it in this transaction included), so a wait for it need not read them.
    ``user_queued`` in the row says whether the user has runs queued (which the cap may have held back).
    """
    row = _one(
        cur,
        "finish_run",
        user_id=user_id,
        id=run_id,
        status=status,
        step_results=PgJson(step_results),
        error=error,
        owner_id=owner_id,
        with_logs=with_logs,
    )
    if row is not None:
        logs = row.pop("logs")
        if with_logs:
            row["logs"] = [_log_from_json(entry) for entry in logs]
    return row


def _log_from_json(entry: Row) -> Row:
    """A ``pilot_run_logs`` row that came as JSON, with the types ``run_logs`` gives it (JSON has no
    timestamps, and a double precision that is a whole number comes as an integer)."""
    entry["timestamp"] = datetime.fromisoformat(entry["timestamp"])
    entry["latency_ms"] = float(entry["latency_ms"])
    if entry["cost_usd"] is not None:
        entry["cost_usd"] = float(entry["cost_usd"])
    return entry


def get_run(cur: Cursor, user_id: str, run_id: int) -> Row | None:
    return _one(cur, "get_run", user_id=user_id, id=run_id)


def get_plan_version(cur: Cursor, user_id: str, version_id: int) -> Row | None:
    """One immutable version of a plan's steps (id, plan_id, version, steps, created_at)."""
    return _one(cur, "get_plan_version", user_id=user_id, id=version_id)


def list_plan_versions(cur: Cursor, user_id: str, plan_id: int) -> list[Row]:
    return _all(cur, "list_plan_versions", user_id=user_id, plan_id=plan_id)


def list_runs(cur: Cursor, user_id: str, plan_id: int, *, limit: int, offset: int) -> list[Row]:
    return _all(cur, "list_runs", user_id=user_id, plan_id=plan_id, limit=limit, offset=offset)


def list_user_runs(
    cur: Cursor,
    user_id: str,
    *,
    limit: int,
    plan_id: int | None = None,
    status: str | None = None,
    trigger: str | None = None,
    before: int | None = None,
) -> list[Row]:
    """The user's runs of every plan (with ``plan_name``, without step results), newest first."""
    return _all(
        cur,
        "list_user_runs",
        user_id=user_id,
        limit=limit,
        plan_id=plan_id,
        status=status,
        trigger=trigger,
        before=before,
    )


# --- scheduling ----------------------------------------------------------------


def recent_finished_runs(cur: Cursor, user_id: str, plan_id: int, limit: int) -> list[str]:
    return [row["status"] for row in _all(cur, "recent_finished_runs", user_id=user_id, plan_id=plan_id, limit=limit)]


def set_plan_enabled(cur: Cursor, user_id: str, plan_id: int, enabled: bool) -> Row | None:
    return _one(cur, "set_plan_enabled", user_id=user_id, id=plan_id, enabled=enabled)


def due_schedules(cur: Cursor, now: Any, limit: int) -> list[Row]:
    """Up to ``limit`` schedules due at ``now``, locked until the transaction ends (``system_transaction`` only)."""
    return _all(cur, "due_schedules", now=now, limit=limit)


def fire_schedules(
    cur: Cursor,
    owner: str | None,
    lease_seconds: int,
    next_due: dict[int, Any],
    runs: list[tuple[int, Any, str, str | None, str | None]],
) -> list[Row]:
    """Advance each plan's next due time and insert the slots' runs, in one statement.

    ``runs`` holds (plan_id, slot, status, reason, error). Returns the runs inserted: a
    ``queued`` slot of a plan with a run still going comes back ``skipped`` (reason
    ``overlap``); a slot that already had a run is absent. ``owner`` None queues runs
    unowned and unleased, for any process's claimer.
    """
    return _all(
        cur,
        "fire_schedules",
        owner=owner,
        lease_seconds=lease_seconds,
        plan_ids=list(next_due),
        next_due=list(next_due.values()),
        run_plans=[run[0] for run in runs],
        run_slots=[run[1] for run in runs],
        run_statuses=[run[2] for run in runs],
        run_reasons=[run[3] for run in runs],
        run_errors=[run[4] for run in runs],
    )


def scheduler_stats(cur: Cursor) -> Row:
    """schedules, queued (runs) and oldest_queued_seconds, across users (``system_transaction`` only)."""
    row = _one(cur, "scheduler_stats")
    assert row is not None
    return row


def heartbeat(cur: Cursor, owner: str, run_ids: list[int], lease_seconds: int) -> int:
    """Renew for ``lease_seconds`` the leases of those of ``run_ids`` that ``owner`` holds and are unfinished.

    Only in a ``system_transaction``; returns how many were renewed.
    """
    row = _one(cur, "heartbeat", owner=owner, run_ids=list(run_ids), lease_seconds=lease_seconds)
    return int(row["renewed"]) if row else 0


def interrupt_runs(cur: Cursor, owner: str | None, lease_seconds: int, reason: str) -> list[Row]:
    """Mark interrupted the unfinished runs of ``owner``, or (owner None) those whose own lease expired
    and that were not renewed for ``lease_seconds`` either. Only in a ``system_transaction``."""
    return _all(cur, "interrupt_runs", owner=owner, lease_seconds=lease_seconds, reason=reason)


def list_scheduled_plans(cur: Cursor, user_id: str) -> list[Row]:
    return _all(cur, "list_scheduled_plans", user_id=user_id)


def all_cron_plans(cur: Cursor) -> list[Row]:
    """Every user's plans with a cron schedule (id, user_id, name, cron, timezone, enabled): operator commands only."""
    return _all(cur, "all_cron_plans")


def listen(cur: Cursor | psycopg2.extensions.cursor, channel: str) -> None:
    """LISTEN on ``channel`` (pilot/data/listener.py's connection); a channel is an identifier, not a parameter."""
    cur.execute(psycopg2.sql.SQL("LISTEN {}").format(psycopg2.sql.Identifier(channel)))


# --- API tokens ----------------------------------------------------------------


def insert_api_token(cur: Cursor, user_id: str, name: str, token_hash: str) -> Row:
    row = _one(cur, "insert_api_token", user_id=user_id, name=name, token_hash=token_hash)
    assert row is not None
    return row


def list_api_tokens(cur: Cursor, user_id: str) -> list[Row]:
    return _all(cur, "list_api_tokens", user_id=user_id)


def revoke_api_token(cur: Cursor, user_id: str, token_id: int) -> bool:
    """True when an active token of ``user_id`` was revoked now."""
    return _one(cur, "revoke_api_token", user_id=user_id, id=token_id) is not None


def token_user(cur: Cursor, token_hash: str) -> str | None:
    """The user of the active token with this hash (SECURITY DEFINER: works with no user set)."""
    row = _one(cur, "token_user", token_hash=token_hash)
    return row["user_id"] if row else None


# --- operator commands -----------------------------------------------------------


def role_bypasses_rls(cur: Cursor) -> bool:
    """Whether the current role is a superuser or has BYPASSRLS (sees every user's rows)."""
    row = _one(cur, "role_bypasses_rls")
    return bool(row and row["bypass"])


def function_owner_bypasses_rls(cur: Cursor, function: str) -> bool:
    """Whether the SECURITY DEFINER ``function`` exists and its owner bypasses row-level security."""
    row = _one(cur, "function_owner_bypasses_rls", function=function)
    return bool(row and row["bypass"])


def prune_logs_batch(cur: Cursor, cutoff: Any, after_id: int, limit: int) -> list[int]:
    """Delete up to ``limit`` execution logs older than ``cutoff`` with id > ``after_id``; their ids."""
    return [row["id"] for row in _all(cur, "prune_logs_batch", cutoff=cutoff, after_id=after_id, limit=limit)]


def prune_runs_batch(cur: Cursor, cutoff: Any, after_id: int, limit: int) -> list[int]:
    """Delete up to ``limit`` finished runs older than ``cutoff`` (never a plan's latest); their ids."""
    return [row["id"] for row in _all(cur, "prune_runs_batch", cutoff=cutoff, after_id=after_id, limit=limit)]


# --- redact-history (operator command: connecting role, every user's rows) ------------------


def all_credentials(cur: Cursor) -> list[Row]:
    """Every user's credentials, unlocked (id, user_id, provider, type, encrypted_value)."""
    return _all(cur, "all_credentials")


def logs_to_redact(cur: Cursor, after_id: int, limit: int) -> list[Row]:
    """Up to ``limit`` execution logs with id > ``after_id``, locked: id, user_id, error, input, output."""
    return _all(cur, "logs_to_redact", after_id=after_id, limit=limit)


def _json_or_null(value: Any) -> PgJson | None:
    """SQL NULL stays NULL (``PgJson(None)`` would store a JSON null)."""
    return None if value is None else PgJson(value)


def set_log_redacted(cur: Cursor, log_id: int, error: str | None, input_: Any, output: Any) -> None:
    params = {"id": log_id, "error": error, "input": _json_or_null(input_), "output": _json_or_null(output)}
    _execute(cur, "set_log_redacted", params)


def runs_to_redact(cur: Cursor, after_id: int, limit: int) -> list[Row]:
    """Up to ``limit`` plan runs with id > ``after_id``, locked: id, user_id, error, step_results, replay."""
    return _all(cur, "runs_to_redact", after_id=after_id, limit=limit)


def set_run_redacted(cur: Cursor, run_id: int, error: str | None, step_results: Any, replay: Any) -> None:
    params = {
        "id": run_id,
        "error": error,
        "step_results": _json_or_null(step_results),
        "replay": _json_or_null(replay),
    }
    _execute(cur, "set_run_redacted", params)


def plans_to_redact(cur: Cursor, after_id: int, limit: int) -> list[Row]:
    """Up to ``limit`` plans with id > ``after_id``, locked: id, user_id, steps."""
    return _all(cur, "plans_to_redact", after_id=after_id, limit=limit)


def set_plan_steps(cur: Cursor, plan_id: int, steps: list[Any]) -> None:
    _execute(cur, "set_plan_steps", {"id": plan_id, "steps": PgJson(steps)})


def versions_to_redact(cur: Cursor, after_id: int, limit: int) -> list[Row]:
    """Every user's plan versions after ``after_id``, locked: redact-history, as the connecting role."""
    return _all(cur, "versions_to_redact", after_id=after_id, limit=limit)


def set_plan_version_steps(cur: Cursor, version_id: int, steps: list[Any]) -> None:
    _execute(cur, "set_plan_version_steps", {"id": version_id, "steps": PgJson(steps)})


# --- drafted plans (issue 10) -------------------------------------------------


def insert_drafted_plan(cur: Cursor, user_id: str, plan: dict[str, Any], provenance: dict[str, Any]) -> Row:
    """Store a plan the planner drafted, with where it came from (``provenance``)."""
    row = _one(cur, "insert_drafted_plan", **_plan_params(user_id, plan), provenance=PgJson(provenance))
    assert row is not None
    return row


# --- costs and budgets --------------------------------------------------------------


def budget_standing(cur: Cursor, user_id: str, plan_id: int | None, run_id: int | None) -> Row:
    """What an LLM step's admission needs: monthly_usd and on_exceed (NULL without a budget), month_spent,
    plan_max (the plan's max_cost_usd) and run_spent, as Decimals."""
    row = _one(cur, "budget_standing", user_id=user_id, plan_id=plan_id, run_id=run_id)
    assert row is not None  # SELECT FROM (SELECT 1) always yields a row
    return row


def add_month_spend(cur: Cursor, user_id: str, cost_usd: Decimal) -> None:
    """Add one step's cost to the user's spend of the current UTC month."""
    _execute(cur, "add_month_spend", {"user_id": user_id, "cost_usd": cost_usd})


def month_spend(cur: Cursor, user_id: str) -> Row:
    """``{month: 'YYYY-MM', spent_usd, priced_steps}`` of the current UTC month."""
    row = _one(cur, "month_spend", user_id=user_id)
    assert row is not None
    return row


def get_budget(cur: Cursor, user_id: str) -> Row | None:
    return _one(cur, "get_budget", user_id=user_id)


def put_budget(cur: Cursor, user_id: str, monthly_usd: Decimal, on_exceed: str) -> Row:
    row = _one(cur, "put_budget", user_id=user_id, monthly_usd=monthly_usd, on_exceed=on_exceed)
    assert row is not None
    return row


def delete_budget(cur: Cursor, user_id: str) -> bool:
    return _one(cur, "delete_budget", user_id=user_id) is not None


def budget_for_firing(cur: Cursor, user_id: str) -> Row | None:
    """The plan owner's monthly_usd, on_exceed and this month's month_spent (Decimals); None without a budget."""
    return _one(cur, "budget_for_firing", user_id=user_id)


def cost_report(cur: Cursor, user_id: str, since: Any, group_by: str) -> list[Row]:
    """The user's LLM tokens, cost and steps since ``since``, grouped by provider, model, plan or day."""
    return _all(cur, "cost_report", user_id=user_id, since=since, group_by=group_by)


# --- idempotency keys -------------------------------------------------------------


def claim_idempotency_key(
    cur: Cursor, user_id: str, key: str, *, fingerprint: str, method: str, path: str, token: str, **limits: int
) -> bool:
    """Whether this request now holds (user, key); ``limits``: lock_seconds and retention_hours."""
    row = _one(
        cur,
        "claim_idempotency_key",
        user_id=user_id,
        key=key,
        fingerprint=fingerprint,
        method=method,
        path=path,
        token=token,
        lock_seconds=limits["lock_seconds"],
        retention_hours=limits["retention_hours"],
    )
    return row is not None


def get_idempotency_key(cur: Cursor, user_id: str, key: str) -> Row | None:
    return _one(cur, "get_idempotency_key", user_id=user_id, key=key)


def complete_idempotency_key(
    cur: Cursor, user_id: str, key: str, token: str, *, status: int, headers: dict[str, str], body: bytes
) -> bool:
    """Store the answer of the request holding (user, key) with ``token``; False when it no longer holds it."""
    row = _one(
        cur,
        "complete_idempotency_key",
        user_id=user_id,
        key=key,
        token=token,
        status=status,
        headers=PgJson(headers),
        body=psycopg2.Binary(body),
    )
    return row is not None


def release_idempotency_key(cur: Cursor, user_id: str, key: str, token: str) -> None:
    """Give (user, key) up without an answer (the request failed with 5xx): it may be sent again."""
    _execute(cur, "release_idempotency_key", {"user_id": user_id, "key": key, "token": token})


def prune_idempotency_batch(cur: Cursor, cutoff: Any, after_id: int, limit: int) -> list[int]:
    """Delete up to ``limit`` idempotency keys created before ``cutoff`` with id > ``after_id``; their ids."""
    return [row["id"] for row in _all(cur, "prune_idempotency_batch", cutoff=cutoff, after_id=after_id, limit=limit)]
