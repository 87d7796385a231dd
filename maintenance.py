"""Operator housekeeping over every user's rows: pruning old execution history.

These run as the connecting role (never ``pilot_app``), which must bypass
row-level security to see all users' rows; they refuse otherwise rather than
silently deleting nothing. Deletes go in short batches, each its own
transaction, so a large prune never holds locks or grows WAL for long and
can be interrupted and re-run safely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import store
from database import Cursor, DatabaseManager
from errors import Forbidden, ValidationError

DEFAULT_BATCH_SIZE = 5000
MAX_BATCH_SIZE = 100_000


@dataclass(frozen=True)
class PruneResult:
    """What one prune removed, and the cutoff it used."""

    cutoff: datetime
    logs: int
    runs: int


def require_rls_bypass(db: DatabaseManager, command: str) -> None:
    """Raise Forbidden unless the connecting role is a superuser or has BYPASSRLS."""
    with db.transaction(None, as_app=False) as cur:
        if not store.role_bypasses_rls(cur):
            raise Forbidden(
                f"{command} must run as a role that bypasses row-level security (superuser or BYPASSRLS): "
                "as any other role it would see no user's rows",
                code="rls_bypass_required",
            )


def _delete_in_batches(
    db: DatabaseManager, batch: Callable[[Cursor, datetime, int, int], list[int]], cutoff: datetime, size: int
) -> int:
    removed, after_id = 0, 0
    while True:
        with db.transaction(None, as_app=False) as cur:
            ids = batch(cur, cutoff, after_id, size)
        removed += len(ids)
        if len(ids) < size:
            return removed
        after_id = max(ids)


def prune_history(
    db: DatabaseManager,
    older_than_days: int,
    *,
    include_runs: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    now: datetime | None = None,
) -> PruneResult:
    """Delete execution logs (and, with ``include_runs``, finished runs) older than ``older_than_days`` days.

    Queued and running runs are never touched, nor the latest run of any plan
    (the scheduler remembers its last firing by it).
    """
    if older_than_days < 1:
        raise ValidationError("--older-than-days must be at least 1")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValidationError(f"--batch-size must be between 1 and {MAX_BATCH_SIZE}")
    require_rls_bypass(db, "prune-logs")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=older_than_days)
    logs = _delete_in_batches(db, store.prune_logs_batch, cutoff, batch_size)
    runs = _delete_in_batches(db, store.prune_runs_batch, cutoff, batch_size) if include_runs else 0
    return PruneResult(cutoff=cutoff, logs=logs, runs=runs)


def describe(result: PruneResult) -> str:
    """One line for the operator."""
    return (
        f"removed {result.logs} execution log(s) and {result.runs} finished run(s) "
        f"older than {result.cutoff.isoformat(timespec='seconds')}"
    )
