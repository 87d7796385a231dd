"""Operator housekeeping over every user's rows: pruning old execution history, and
listing the cron schedules whose meaning the crontab(5) fix changed.

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

from apscheduler.triggers.cron import CronTrigger

from database import Cursor, DatabaseManager
from pilot.data import store
from pilot.errors import Forbidden, ValidationError
from pilot.steps import cron

DEFAULT_BATCH_SIZE = 5000
MAX_BATCH_SIZE = 100_000
IDEMPOTENCY_RETENTION = timedelta(hours=24)  # pilot.http.idempotency.RETENTION_HOURS: a key answers for a day


@dataclass(frozen=True)
class PruneResult:
    """What one prune removed, and the cutoff it used."""

    cutoff: datetime
    logs: int
    runs: int
    idempotency_keys: int = 0


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
    """Delete execution logs (and, with ``include_runs``, finished runs) older than ``older_than_days`` days,
    and idempotency keys older than 24 hours (past their use whatever ``older_than_days`` says).

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
    with db.transaction(None, as_app=False) as cur:  # the hourly metrics forget what was pruned
        store.rollup_pruned(cur, cutoff)
    runs = _delete_in_batches(db, store.prune_runs_batch, cutoff, batch_size) if include_runs else 0
    key_cutoff = (now or datetime.now(UTC)) - IDEMPOTENCY_RETENTION
    keys = _delete_in_batches(db, store.prune_idempotency_batch, key_cutoff, batch_size)
    return PruneResult(cutoff=cutoff, logs=logs, runs=runs, idempotency_keys=keys)


def describe(result: PruneResult) -> str:
    """One line for the operator."""
    return (
        f"removed {result.logs} execution log(s) and {result.runs} finished run(s) "
        f"older than {result.cutoff.isoformat(timespec='seconds')}, "
        f"and {result.idempotency_keys} idempotency key(s) older than 24 hours"
    )


# --- cron schedules written before the crontab(5) fix -----------------------------

DAY_LABELS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
WEEK_ORDER = (1, 2, 3, 4, 5, 6, 0)  # an operator reads a week from Monday
A_MONDAY = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ScheduleChange:
    """A plan whose cron text now means something else than it did, and how."""

    plan_id: int
    user_id: str
    name: str
    cron: str
    timezone: str
    enabled: bool
    change: str


def legacy_weekdays(field: str) -> frozenset[int] | None:
    """The days (0 = Sunday) the previous version ran a day-of-week field on, or None if it refused it.

    That version read schedules with APScheduler 3's ``CronTrigger.from_crontab``,
    which counts 0 = Monday; asking APScheduler itself is the faithful record of it.
    """
    try:
        trigger = CronTrigger.from_crontab(f"0 0 * * {field}", timezone=UTC)
    except ValueError:
        return None
    days: set[int] = set()
    moment = trigger.get_next_fire_time(None, A_MONDAY)
    while moment is not None and moment < A_MONDAY + timedelta(days=7):  # at most seven midnights
        days.add(moment.isoweekday() % 7)
        moment = trigger.get_next_fire_time(moment, moment + timedelta(seconds=1))
    return frozenset(days)


def _days(days: frozenset[int]) -> str:
    return "every day" if len(days) == 7 else ",".join(DAY_LABELS[day] for day in WEEK_ORDER if day in days)


def schedule_change(expression: str) -> str | None:
    """How the crontab(5) fix changed what ``expression`` means, or None when it did not.

    Changed: a day of week given by number (0 was Monday, now Sunday), both day
    fields restricted (both had to match, now either does), and texts the
    previous version accepted that crontab(5) refuses (they no longer fire).
    """
    try:
        spec = cron.parse(expression)
    except cron.CronError as exc:
        return f"not valid any more ({exc}): it does not fire until it is corrected"
    if expression.strip().startswith("@"):
        return None  # the previous version refused macros: no plan has one from before
    notes = []
    weekday_field = expression.split()[4]
    if any(char.isdigit() for char in weekday_field):
        old = legacy_weekdays(weekday_field)
        if old is None:
            notes.append(f"day of week: now {_days(spec.weekdays)} (the previous version refused it)")
        elif old == spec.weekdays:
            notes.append(f"day of week unchanged: {_days(old)}")
        else:
            notes.append(f"day of week: was {_days(old)}; now {_days(spec.weekdays)}")
    if spec.either_day:
        notes.append("a day now matches when either day of month or day of week does (was: both)")
    return "; ".join(notes) or None


def weekday_schedules(db: DatabaseManager) -> list[ScheduleChange]:
    """Every user's cron plans whose meaning changed (see ``schedule_change``), by id. Changes nothing."""
    require_rls_bypass(db, "list-weekday-schedules")
    with db.transaction(None, as_app=False) as cur:
        rows = store.all_cron_plans(cur)
    changes = []
    for row in rows:
        change = schedule_change(row["cron"])
        if change is not None:
            changes.append(
                ScheduleChange(
                    plan_id=row["id"],
                    user_id=row["user_id"],
                    name=row["name"],
                    cron=row["cron"],
                    timezone=row["timezone"],
                    enabled=row["enabled"],
                    change=change,
                )
            )
    return changes
