"""Scheduled plans, exactly once across any number of workers and instances (SPEC §6).

APScheduler (through Flask-APScheduler) is only the clock: every serving process
has one job, the tick, about once a second (just after each whole second, when
slots fall due). PostgreSQL holds every plan's next due time (``plan_schedules``,
migration 014, kept in step with each plan change by a trigger) and decides who
fires what: a tick locks a batch of due schedules with ``FOR UPDATE SKIP LOCKED``,
inserts their runs keyed by ``(plan_id, scheduled_for)`` and advances their next
due times in one transaction of two statements, whatever the number of plans due.
Cron arithmetic (DST, crontab's day numbering, the schedule's timezone) stays
here, in ``build_trigger``. Runs hold a lease renewed by the engine executing them
(``leases.py``), and any process's scheduler marks runs whose lease expired
``interrupted``. All of it runs as ``pilot_system``, never as a request's role.

Load is shed, not queued without bound: a slot whose run could not be queued
within ``SCHEDULER_MAX_LATENESS_SECONDS`` is recorded as a ``skipped`` run with
reason ``late``. After downtime (a process's first ticks, or the database coming
back) the latest slot missed within ``SCHEDULER_MISFIRE_GRACE_SECONDS`` gets one
catch-up run instead.

Shutdown never strands a claimed slot: a firing's run is a committed ``queued`` row
that any process's run claimer takes (``pilot/execution/runs.py``); ``stop`` closes
the gate and waits for ticks in flight before it stops the engine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from flask_apscheduler import APScheduler

from execution_engine import process_owner_id
from pilot.costs.budget import budget_from, firing_allowed
from pilot.data import store
from pilot.errors import PilotError
from pilot.ops import metrics
from pilot.steps import cron

if TYPE_CHECKING:
    from database import DatabaseManager
    from pilot.application import PilotApp

log = logging.getLogger(__name__)

CHANNEL = "pilot_schedules"  # migration 004's trigger still announces every plan change here
INTERVAL_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # every process derives the same interval slots
MAX_RECORDED_MISSES = 1000
MAX_LOOKBACK = timedelta(days=7)
TICK_SECONDS = 1.0
TICK_OFFSET = timedelta(milliseconds=2)  # just after each whole second, when slots fall due (every 1 ms waited is lag)
BATCH_SIZE = 500  # due schedules locked and fired per transaction
MAX_BATCHES_PER_TICK = 20  # then the next tick goes on
STATS_SECONDS = 2.0  # how often the queue gauges and the schedule count are sampled
MISSED = "missed: the scheduler was not running at this time"
REASONS = {"skipped_misfire": "missed", "skipped_late": "late", "skipped_budget": "budget"}  # plan_runs.reason


def build_trigger(schedule: dict[str, Any], plan_timezone: str = "UTC") -> BaseTrigger:
    """The APScheduler trigger of a validated schedule (cron in its timezone, or a fixed interval).

    A stored cron text that this version refuses (see ``cron.parse``) gets a
    trigger that never fires and an error in the log, instead of stopping every
    other schedule from loading.
    """
    if schedule.get("cron"):
        zone = ZoneInfo(schedule.get("timezone") or plan_timezone or "UTC")
        try:
            return cron.CrontabTrigger(schedule["cron"], zone)
        except cron.CronError as exc:
            log.error(
                "cron schedule %r is not valid (%s): it will not fire until it is corrected "
                "(flask --app app list-weekday-schedules lists such plans)",
                schedule["cron"],
                exc,
            )
            return cron.NeverTrigger()
    return IntervalTrigger(seconds=int(schedule["interval_seconds"]), start_date=INTERVAL_EPOCH, timezone=UTC)


def slot(moment: datetime) -> datetime:
    """A fire time as stored: UTC, whole seconds (float arithmetic in triggers must not split a slot)."""
    return datetime.fromtimestamp(round(moment.timestamp()), UTC)


def fire_times(
    trigger: BaseTrigger, after: datetime, until: datetime, limit: int = MAX_RECORDED_MISSES
) -> list[datetime]:
    """The last ``limit`` fire times t of ``trigger`` with after < t <= until, oldest first."""
    after = max(after, until - MAX_LOOKBACK)
    if isinstance(trigger, IntervalTrigger):
        after = max(after, until - trigger.interval * (limit + 1))
    times: list[datetime] = []
    moment = trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
    while moment is not None and moment <= until:
        times.append(slot(moment))
        moment = trigger.get_next_fire_time(moment, moment + timedelta(microseconds=1))
    return times[-limit:]


def next_fire_time(schedule: dict[str, Any], plan_timezone: str, now: datetime | None = None) -> datetime | None:
    """The first slot strictly after ``now``: what a scheduler sets a new job to, and what /api/scheduler/jobs shows."""
    now = now or datetime.now(UTC)
    moment = build_trigger(schedule, plan_timezone).get_next_fire_time(None, now + timedelta(microseconds=1))
    return slot(moment) if moment is not None else None


def describe_trigger(schedule: dict[str, Any], plan_timezone: str) -> str:
    """How a schedule reads in a jobs listing: ``cron[0 9 * * 1-5 Europe/Berlin]`` or ``interval[300s]``."""
    if schedule.get("cron"):
        return f"cron[{schedule['cron']} {schedule.get('timezone') or plan_timezone}]"
    return f"interval[{schedule['interval_seconds']}s]"


def scheduled_jobs(db: DatabaseManager, user_id: str, now: datetime | None = None) -> list[dict[str, Any]]:
    """``user_id``'s scheduled plans as jobs: id, plan, next fire time (None while paused), trigger, paused.

    The next fire time is the one stored for the scheduler (``plan_schedules.next_due_at``);
    one not computed yet (the plan just changed) is the first slot after the change,
    exactly what the next tick stores.
    """
    with db.transaction(user_id) as cur:
        plans = store.list_scheduled_plans(cur, user_id)
    jobs = []
    for plan in plans:
        schedule = plan["schedule"]
        upcoming: datetime | None = None
        if not plan["enabled"]:
            upcoming = None
        elif plan["due_pending"]:
            upcoming = next_fire_time(schedule, plan["timezone"], plan["base_at"])
        elif plan["base_at"] is not None:
            upcoming = plan["next_due_at"]  # None: the trigger never fires
        else:  # no schedule row (not possible after migration 014): what a new one would use
            upcoming = next_fire_time(schedule, plan["timezone"], now)
        jobs.append(
            {
                "id": f"plan-{plan['id']}",
                "plan_id": plan["id"],
                "name": plan["name"],
                "next_run_time": upcoming.isoformat() if upcoming else None,
                "trigger": describe_trigger(schedule, plan["timezone"]),
                "paused": not plan["enabled"],
            }
        )
    return jobs


@dataclass(frozen=True)
class Firing:
    """What one due schedule gets at a tick: the slot to run (if any), slots recorded skipped, the next due time."""

    run: datetime | None
    skipped: list[tuple[datetime, str]]
    next_due: datetime | None  # None: the trigger never fires again
    skipped_outcome: str = "skipped_misfire"


def late_reason(moment: datetime, now: datetime, max_lateness: float) -> str:
    lag = (now - moment).total_seconds()
    if lag > max_lateness:
        return (
            f"skipped: late: it could not start within SCHEDULER_MAX_LATENESS_SECONDS ({max_lateness:g} s) "
            f"of its time (claimed {lag:.1f} s after it)"
        )
    return f"skipped: late: a later slot of this plan was due when it was claimed ({lag:.1f} s after its time)"


def plan_firing(
    trigger: BaseTrigger,
    next_due: datetime | None,
    base: datetime,
    now: datetime,
    *,
    grace: timedelta,
    max_lateness: float,
    catching_up: bool,
) -> Firing:
    """The due slots of one schedule at ``now``: the latest runs if it is recent enough, the rest are skipped.

    ``next_due`` is the stored next due time, or None when not computed yet (slots then
    count strictly after ``base``, the moment the schedule last changed). While the
    scheduler runs, a slot older than ``max_lateness`` seconds is ``late``; while it
    catches up after downtime, the latest slot within ``grace`` gets one run and the
    older ones are recorded ``missed``.
    """
    after = base if next_due is None else next_due - timedelta(microseconds=1)
    slots = fire_times(trigger, after, now)
    upcoming = trigger.get_next_fire_time(None, max(now, after) + timedelta(microseconds=1))
    next_slot = slot(upcoming) if upcoming is not None else None
    if not slots:
        return Firing(None, [], next_slot)
    latest = slots[-1]
    window = max(grace, timedelta(seconds=max_lateness)) if catching_up else timedelta(seconds=max_lateness)
    run = latest if now - latest <= window else None
    older = slots[:-1] if run is not None else slots
    if catching_up:
        return Firing(run, [(moment, MISSED) for moment in older], next_slot, "skipped_misfire")
    return Firing(run, [(m, late_reason(m, now, max_lateness)) for m in older], next_slot, "skipped_late")


@dataclass
class TickResult:
    """What one tick did in this process: batches (transactions), and the runs it inserted by outcome."""

    batches: int = 0
    handed_over: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    left_for_capacity: int = 0

    def count(self, outcome: str, n: int = 1) -> None:
        if n:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n


@dataclass
class _Batch:
    """One batch being decided: the next due time per plan, the slots' runs, what each slot was meant to be."""

    next_due: dict[int, datetime | None] = field(default_factory=dict)
    runs: list[tuple[int, datetime, str, str | None, str | None]] = field(default_factory=list)
    intended: dict[tuple[int, datetime], str] = field(default_factory=dict)
    left: int = 0
    rows: int = 0
    limit: int = BATCH_SIZE  # rows asked for
    starved: bool = False  # no capacity: only late schedules were asked for, others may be due


class RunSink(Protocol):
    """Where a tick's queued runs go: who owns them, how many it may claim now, and the hand-over itself."""

    def owner(self) -> str | None:
        """The process that leases the queued runs, or None: unowned rows for any process's claimer."""
        ...

    def capacity(self) -> int:
        """How many runnable slots the tick may claim now (the bounded firing queue)."""
        ...

    def hand_off(self, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Start ``runs`` (queued rows this tick inserted); returns those handed over."""
        ...


class _Claimer(Protocol):
    def claim_soon(self) -> None: ...


class QueueSink:
    """The hand-over to the durable run queue (the default sink): commit, then wake the claimers.

    The rows are inserted unowned and unleased; any process's claimer (NOTIFY pilot_runs
    on insert, and its poll) starts them, within MAX_RUNNING_PER_USER. The tick itself
    is not bounded by this process's workers: the queue holds what waits.
    """

    def __init__(self, engine: _Claimer, bound: int = 1_000_000) -> None:
        self.engine = engine
        self.bound = bound

    def owner(self) -> str | None:
        return None

    def capacity(self) -> int:
        return self.bound

    def hand_off(self, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if runs:
            self.engine.claim_soon()
        return runs


class PilotScheduler:
    """One process's scheduler: the tick (claims whole batches of due slots), leases, the queue gauges."""

    def __init__(self, app: PilotApp, clock: Callable[[], datetime] | None = None, sink: RunSink | None = None) -> None:
        self.app = app
        settings = app.settings
        self.clock = clock or (lambda: datetime.now(UTC))
        self.sink = sink or QueueSink(app.engine)
        self.grace = timedelta(seconds=settings.misfire_grace_seconds)
        self.max_lateness = float(settings.max_lateness_seconds)
        self.lease_seconds = settings.run_lease_seconds
        self.reap_seconds = max(1.0, settings.run_lease_seconds / 6)
        self.batch_size = BATCH_SIZE
        # Flask-APScheduler configures the scheduler from these SCHEDULER_* settings in init_app:
        # one tick job, never two at once in a process, a late tick simply runs (it decides what is late).
        app.config.update(
            SCHEDULER_TIMEZONE=UTC,
            SCHEDULER_EXECUTORS={"default": {"type": "threadpool", "max_workers": 1}},
            SCHEDULER_JOB_DEFAULTS={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            SCHEDULER_API_ENABLED=False,  # schedules are Pilot's plans, managed through /api/plans, not its REST API
        )
        self._aps = APScheduler(BackgroundScheduler())
        self._aps.init_app(app)
        self._catching_up = True  # a process's first ticks catch up what was missed while none ran
        self._catch_up_began: datetime | None = None
        self._schedules = 0
        self._stop = threading.Event()
        self._paused = threading.Event()  # no more firings; leases are still renewed
        self._firing = 0  # ticks between their pause check and handing their runs over
        self._firings_done = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.started_at: datetime | None = None

    # --- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the clock (one tick job) and the lease keeper.

        A database that is down does not stop the start: ticks fail and log until it
        answers, and the first tick that succeeds catches up what was missed.
        """
        try:
            with self.app.db.transaction(None, as_app=False) as cur:
                for function in ("pilot_due_schedules", "pilot_fire_schedules", "pilot_interrupt_runs"):
                    if not store.function_owner_bypasses_rls(cur, function):
                        log.error(
                            "%s is owned by a role that does not bypass row-level security: the scheduler "
                            "cannot see every user's schedules or reap their runs; run the migrations as a "
                            "superuser or a role with BYPASSRLS (README: Database, roles and row-level security)",
                            function,
                        )
            self.sample()
        except PilotError as exc:
            log.error("scheduler cannot read schedules yet (%s); it will when the database answers", exc.message)
        self._aps.add_job(
            id="pilot-tick",
            func=self._tick_job,
            trigger=IntervalTrigger(seconds=TICK_SECONDS, start_date=INTERVAL_EPOCH + TICK_OFFSET, timezone=UTC),
            replace_existing=True,
        )
        self._aps.start()
        self.started_at = datetime.now(UTC)
        thread = threading.Thread(target=self._maintain, name="pilot-reaper", daemon=True)
        thread.start()
        self._threads.append(thread)
        log.info("scheduler started", extra={"jobs": self._schedules, "owner": process_owner_id()})

    def pause(self) -> None:
        """Stop firing at once (safe in a signal handler); runs in flight keep their leases."""
        self._paused.set()

    def stop(self, timeout: float) -> None:
        """Stop firing, let in-flight runs finish for up to ``timeout`` s, mark the rest interrupted.

        Ticks already past their pause check hand their runs over first, so the
        engine stops only after every slot claimed here is in it (or, if one is
        stuck past ``timeout``, the engine ends that run instead of leaving it queued).
        """
        deadline = time.monotonic() + timeout  # one budget for both waits (gunicorn's grace period)
        with self._firings_done:
            self._paused.set()
        self._stop.set()
        if self._aps.running:
            self._aps.shutdown(wait=False)
        with self._firings_done:
            if not self._firings_done.wait_for(lambda: self._firing == 0, timeout=timeout):
                log.warning("%d tick(s) still claiming at shutdown; the engine will end their runs", self._firing)
        self.app.engine.stop(max(0.0, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(timeout=2)

    def state(self) -> dict[str, Any]:
        return {
            "status": "running" if self._aps.running and not self._paused.is_set() else "stopped",
            "jobs": self._schedules,
            "owner": process_owner_id(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
        }

    # --- the tick -----------------------------------------------------------------

    def _tick_job(self) -> None:
        try:
            self.tick()
        except PilotError as exc:
            metrics.record_scheduler_firing("error")
            log.error("scheduler tick failed (%s); the next one retries", exc.message)
        except Exception:
            metrics.record_scheduler_firing("error")
            log.exception("scheduler tick failed")

    def tick(self, now: datetime | None = None) -> TickResult:
        """Fire every schedule due at ``now`` (the clock's time by default): batches of one transaction each.

        Returns what this process did; nothing while paused or stopping.
        """
        with self._firings_done:
            if self._paused.is_set():
                return TickResult()
            self._firing += 1
        try:
            return self._tick(now or self.clock())
        except PilotError:
            self._catching_up, self._catch_up_began = True, None  # the database was away: catch up when back
            raise
        finally:
            with self._firings_done:
                self._firing -= 1
                self._firings_done.notify_all()

    def _catch_up_mode(self, now: datetime) -> bool:
        if self._catching_up:
            self._catch_up_began = self._catch_up_began or now
            if now - self._catch_up_began > self.grace:
                self._catching_up = False
        return self._catching_up

    def _tick(self, now: datetime) -> TickResult:
        result = TickResult()
        catching_up = self._catch_up_mode(now)
        for _ in range(MAX_BATCHES_PER_TICK):
            batch = self._fire_batch(now, catching_up, result)
            if batch.left or batch.rows < batch.limit:
                break
        if not (batch.left or batch.starved or batch.rows >= batch.limit):
            self._catching_up = False  # everything due was seen: what is missed from now on is late
        for outcome, count in result.outcomes.items():
            metrics.record_scheduler_firing(outcome, count)
        return result

    def _fire_batch(self, now: datetime, catching_up: bool, result: TickResult) -> _Batch:
        """One transaction: lock due schedules (no more than the sink can start), record their slots, advance them.

        With no capacity left only schedules already past SCHEDULER_MAX_LATENESS_SECONDS are
        taken (to record them); the others stay unlocked for a process that can start them.
        """
        capacity = self.sink.capacity()
        batch = _Batch(limit=min(self.batch_size, capacity) if capacity > 0 else self.batch_size)
        horizon = now if capacity > 0 else now - timedelta(seconds=self.max_lateness)
        with self.app.db.system_transaction() as cur:
            rows = store.due_schedules(cur, horizon, batch.limit)
            batch.rows = len(rows)
            batch.starved = capacity <= 0
            for row in rows:
                capacity -= self._decide(row, now, catching_up, capacity, batch)
            inserted = (
                store.fire_schedules(cur, self.sink.owner(), self.lease_seconds, batch.next_due, batch.runs)
                if batch.next_due
                else []
            )
        result.batches += 1
        result.left_for_capacity += batch.left
        self._account(batch, inserted, now, result)
        return batch

    def _decide(self, row: dict[str, Any], now: datetime, catching_up: bool, capacity: int, batch: _Batch) -> int:
        """Add one due schedule's slots to ``batch``; returns the run slots it takes (0 or 1)."""
        plan_id = row["plan_id"]
        firing = plan_firing(
            build_trigger(row["schedule"], row["timezone"]),
            row["next_due_at"],
            row["base_at"],
            now,
            grace=self.grace,
            max_lateness=self.max_lateness,
            catching_up=catching_up,
        )
        taken = 0
        wanted: list[tuple[datetime, str, str | None, str]] = [
            (moment, "skipped", reason, firing.skipped_outcome) for moment, reason in firing.skipped
        ]
        if firing.run is not None:
            decision = firing_allowed(
                budget_from(row if row["monthly_usd"] is not None else None), Decimal(row["month_spent"] or 0)
            )
            if not decision.allowed:
                wanted.append((firing.run, "skipped", decision.reason, "skipped_budget"))
            elif capacity <= 0:
                batch.left += 1  # no worker can start it soon: leave it due for a process that can
                return 0
            else:
                won = "catch_up" if (now - firing.run).total_seconds() > self.max_lateness else "claimed"
                wanted.append((firing.run, "queued", None, won))
                taken = 1
        batch.next_due[plan_id] = firing.next_due
        for moment, status, error, outcome in wanted[-MAX_RECORDED_MISSES:]:
            batch.runs.append((plan_id, moment, status, REASONS.get(outcome), error))
            batch.intended[(plan_id, moment)] = outcome
        return taken

    def _account(self, batch: _Batch, inserted: list[dict[str, Any]], now: datetime, result: TickResult) -> None:
        got = {(run["plan_id"], run["scheduled_for"]): run for run in inserted}
        for key, outcome in batch.intended.items():
            run = got.get(key)
            if run is None:
                result.count("lost")
            elif outcome in ("claimed", "catch_up") and run["status"] != "queued":
                result.count("skipped_overlap")
            else:
                result.count(outcome)
        result.handed_over.extend(self.sink.hand_off([run for run in inserted if run["status"] == "queued"]))

    # --- the gauges ---------------------------------------------------------------

    def sample(self) -> dict[str, Any]:
        """Count the schedules and the queued runs (and the oldest one's age) for the gauges: one query."""
        with self.app.db.system_transaction() as cur:
            stats = store.scheduler_stats(cur)
        self._schedules = int(stats["schedules"])
        metrics.set_scheduler_jobs(self._schedules)
        metrics.set_run_queue(int(stats["queued"]), float(stats["oldest_queued_seconds"]))
        return stats

    # --- reaping -----------------------------------------------------------------

    def reap(self) -> list[dict[str, Any]]:
        """Mark interrupted the runs whose lease expired (their executor stopped renewing it)."""
        with self.app.db.system_transaction() as cur:
            rows = store.interrupt_runs(
                cur, None, self.lease_seconds, "interrupted: the process running it stopped (its lease expired)"
            )
        if rows:
            log.warning("marked %d run(s) interrupted after their owner died", len(rows))
        return rows

    def _maintain(self) -> None:
        every = min(self.reap_seconds, STATS_SECONDS)
        since_reap = 0.0
        while not self._stop.wait(every):
            since_reap += every
            try:
                self.sample()
                if since_reap >= self.reap_seconds:
                    since_reap = 0.0
                    self.reap()
            except PilotError as exc:
                log.warning("reaping or sampling failed: %s", exc.message)


def start_for_serving(app: PilotApp) -> PilotScheduler | None:
    """Start the scheduler in a serving process (python app.py, a gunicorn worker) when enabled."""
    if not app.settings.scheduler_enabled or app.scheduler is not None:
        return app.scheduler
    scheduler = PilotScheduler(app)
    scheduler.start()
    app.scheduler = scheduler
    return scheduler


def pause_for_shutdown(app: PilotApp) -> None:
    """Stop firing schedules and claiming runs at once, e.g. when SIGTERM arrives, before requests have drained.

    Run event streams end too (their clients reconnect, with Last-Event-ID, to a process that stays).
    """
    app.engine.pause_claiming()
    app.db.listener.stop()
    if app.scheduler is not None:
        app.scheduler.pause()


def stop_for_serving(app: PilotApp, timeout: float = 30.0) -> None:
    """Stop firing, let in-flight runs finish up to ``timeout`` s, mark the rest interrupted."""
    app.db.listener.stop()
    if app.scheduler is not None:
        app.scheduler.stop(timeout)
    else:
        app.engine.stop(timeout)
