"""Scheduled plans, exactly once across any number of workers and instances (SPEC §6).

APScheduler (through Flask-APScheduler) is only the clock: every process keeps
a job per enabled schedule and fires it. PostgreSQL decides who runs a firing:
each firing inserts ``plan_runs (plan_id, scheduled_for)`` with ``ON CONFLICT DO
NOTHING`` under a per-plan advisory lock, and only the process whose insert
returned a row runs it. Schedules reach every process through LISTEN/NOTIFY
(a trigger on ``execution_plans``) with a periodic reconcile as a safety net;
runs hold a lease renewed by the engine executing them (``leases.py``), and any
process's scheduler marks runs whose lease expired ``interrupted``. Listing
schedules and reaping run as ``pilot_system``, never as a request's role.

Shutdown never strands a claimed slot: a firing's run is a committed ``queued`` row
that any process's run claimer takes (``pilot/execution/runs.py``); ``stop`` closes
the gate and waits for firings in flight before it stops the engine.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import psycopg2
import psycopg2.extensions
from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.base import BaseExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from flask_apscheduler import APScheduler

from execution_engine import process_owner_id
from pilot.costs.firing import check_firing
from pilot.data import store
from pilot.errors import PilotError
from pilot.ops import metrics
from pilot.steps import cron

if TYPE_CHECKING:
    from database import DatabaseManager
    from pilot.application import PilotApp

log = logging.getLogger(__name__)

CHANNEL = "pilot_schedules"
INTERVAL_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # every process derives the same interval slots
MAX_RECORDED_MISSES = 1000
MAX_LOOKBACK = timedelta(days=7)


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
    """``user_id``'s scheduled plans as jobs: id, plan, next fire time (None while paused), trigger, paused."""
    with db.transaction(user_id) as cur:
        plans = store.list_scheduled_plans(cur, user_id)
    jobs = []
    for plan in plans:
        schedule = plan["schedule"]
        upcoming = next_fire_time(schedule, plan["timezone"], now) if plan["enabled"] else None
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


class FiringExecutor(BaseExecutor):
    """Hands each firing, with the exact times it was due, to ``PilotScheduler.fire``.

    APScheduler's own executors call the job function without its scheduled
    time; Pilot needs that time, because it is the key that makes a firing unique.
    """

    def __init__(self, on_fire: Any, workers: int = 8) -> None:
        super().__init__()
        self._on_fire = on_fire
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pilot-fire")
        self._lock = threading.Lock()
        self._closed = False

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        def fire() -> None:
            try:
                self._on_fire(job, run_times)
            except Exception:
                metrics.record_scheduler_firing("error")
                log.exception("firing %s failed", job.id)
            self._run_job_success(job.id, [JobExecutionEvent(EVENT_JOB_EXECUTED, job.id, "default", run_times[-1])])

        with self._lock:
            if self._closed:  # APScheduler's loop may still hand over a due job while it shuts down
                return
            self._pool.submit(fire)

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=not wait)


class PilotScheduler:
    """One process's scheduler: clock, claims, schedule sync, leases."""

    def __init__(self, app: PilotApp) -> None:
        self.app = app
        settings = app.settings
        self.grace = timedelta(seconds=settings.misfire_grace_seconds)
        self.lease_seconds = settings.run_lease_seconds
        self.reap_seconds = max(1.0, settings.run_lease_seconds / 6)
        self.reconcile_seconds = 30.0
        # Flask-APScheduler configures the scheduler from these SCHEDULER_* settings in init_app.
        app.config.update(
            SCHEDULER_TIMEZONE=UTC,
            SCHEDULER_EXECUTORS={"default": FiringExecutor(self._on_job)},
            # Every due slot reaches fire(), which decides: no coalescing, no overlap limit, no misfire drop.
            SCHEDULER_JOB_DEFAULTS={"coalesce": False, "max_instances": 1000, "misfire_grace_time": None},
            SCHEDULER_API_ENABLED=False,  # jobs are Pilot's plans, managed through /api/plans, not its REST API
        )
        self._aps = APScheduler(BackgroundScheduler())
        self._aps.init_app(app)
        self._specs: dict[int, tuple[str, Any]] = {}  # plan_id -> (user_id, schedule spec it was built from)
        self._lock = threading.Lock()
        self._reconcile_lock = threading.Lock()
        self._caught_up = False
        self._stop = threading.Event()
        self._paused = threading.Event()  # no more firings; leases are still renewed
        self._firing = 0  # firings between their pause check and handing their run over
        self._firings_done = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.started_at: datetime | None = None

    # --- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Catch up missed slots, load every schedule, start the clock, the listener and the lease keeper.

        A database that is down does not stop the start: the listener keeps reconnecting
        and loads (and catches up) the schedules as soon as it answers.
        """
        try:
            with self.app.db.transaction(None, as_app=False) as cur:
                for function in ("pilot_list_schedules", "pilot_interrupt_runs"):
                    if not store.function_owner_bypasses_rls(cur, function):
                        log.error(
                            "%s is owned by a role that does not bypass row-level security: the scheduler "
                            "cannot see every user's schedules or reap their runs; run the migrations as a "
                            "superuser or a role with BYPASSRLS (README: Database, roles and row-level security)",
                            function,
                        )
            self.reconcile()
        except PilotError as exc:
            log.error("scheduler cannot load schedules yet (%s); it will when the database answers", exc.message)
        self._aps.start()
        self.started_at = datetime.now(UTC)
        for target, name in ((self._listen, "pilot-listen"), (self._maintain, "pilot-reaper")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("scheduler started", extra={"jobs": len(self._specs), "owner": process_owner_id()})

    def pause(self) -> None:
        """Stop firing at once (safe in a signal handler); runs in flight keep their leases."""
        self._paused.set()

    def stop(self, timeout: float) -> None:
        """Stop firing, let in-flight runs finish for up to ``timeout`` s, mark the rest interrupted.

        Firings already past their pause check hand their runs over first, so the
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
                log.warning("%d firing(s) still claiming at shutdown; the engine will end their runs", self._firing)
        self.app.engine.stop(max(0.0, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(timeout=2)

    def state(self) -> dict[str, Any]:
        return {
            "status": "running" if self._aps.running and not self._paused.is_set() else "stopped",
            "jobs": len(self._specs),
            "owner": process_owner_id(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
        }

    # --- firing -------------------------------------------------------------------

    def _on_job(self, job: Any, run_times: list[datetime]) -> None:
        if self._paused.is_set():
            return
        plan_id = int(job.kwargs["plan_id"])
        with self._lock:
            spec = self._specs.get(plan_id)
        if spec is not None:
            self.fire(plan_id, spec[0], [slot(t) for t in run_times])

    def fire(
        self, plan_id: int, user_id: str, due: list[datetime], now: datetime | None = None, *, won: str = "claimed"
    ) -> dict[str, Any] | None:
        """Claim the latest due slot within the grace window (older ones are recorded as skipped).

        Returns the run this process won and queued, or None when another process
        won, the slot was too old, the previous run is still going (then a
        ``skipped`` row records it), or this scheduler is stopping (then nothing
        is claimed).
        """
        with self._firings_done:
            if self._paused.is_set():
                return None
            self._firing += 1
        try:
            return self._claim_and_submit(plan_id, user_id, due, now or datetime.now(UTC), won)
        finally:
            with self._firings_done:
                self._firing -= 1
                self._firings_done.notify_all()

    def _claim_and_submit(
        self, plan_id: int, user_id: str, due: list[datetime], now: datetime, won: str
    ) -> dict[str, Any] | None:
        latest = due[-1] if due and now - due[-1] <= self.grace else None
        missed = due[:-1] if latest is not None else due
        with self.app.db.transaction(user_id) as cur:
            store.lock_plan(cur, plan_id)
            for moment in missed[-MAX_RECORDED_MISSES:]:
                store.insert_run(
                    cur,
                    user_id,
                    plan_id,
                    trigger="schedule",
                    owner_id=process_owner_id(),
                    scheduled_for=moment,
                    status="skipped",
                    error="missed: the scheduler was not running at this time",
                )
            run, budget_skipped = None, False
            if latest is not None:
                # Issue 11: an owner over a refuse budget gets the slot recorded skipped and nothing runs.
                firing = check_firing(cur, user_id)
                if firing.allowed:
                    run = store.claim_slot(cur, user_id, plan_id, latest, process_owner_id(), self.lease_seconds)
                else:
                    run = store.insert_run(
                        cur,
                        user_id,
                        plan_id,
                        trigger="schedule",
                        owner_id=process_owner_id(),
                        scheduled_for=latest,
                        status="skipped",
                        error=firing.reason,
                    )
                    budget_skipped = True
        for _ in missed[-MAX_RECORDED_MISSES:]:
            metrics.record_scheduler_firing("skipped_misfire")
        if latest is None:
            return None
        if run is None or run["status"] != "queued":
            skipped = "skipped_budget" if budget_skipped else "skipped_overlap"
            metrics.record_scheduler_firing("lost" if run is None else skipped)
            return None
        metrics.record_scheduler_firing(won)
        self.app.engine.claim_soon()  # the queued row is committed: any process's claimer may run it
        return run

    def catch_up(self, row: dict[str, Any], now: datetime) -> dict[str, Any] | None:
        """After downtime: one catch-up run for the latest missed slot (if within grace), the rest skipped."""
        since = max(t for t in (row["last_scheduled_for"], row["schedule_changed_at"]) if t is not None)
        missed = fire_times(build_trigger(row["schedule"], row["timezone"]), since, now)
        return self.fire(row["plan_id"], row["user_id"], missed, now, won="catch_up") if missed else None

    # --- schedule sync ------------------------------------------------------------

    def _list_schedules(self, plan_id: int | None) -> list[dict[str, Any]]:
        with self.app.db.system_transaction() as cur:
            return store.list_schedules(cur, plan_id)

    def _sync_row(self, row: dict[str, Any], now: datetime) -> None:
        plan_id = row["plan_id"]
        spec = (row["user_id"], [row["schedule"], row["timezone"]])
        with self._lock:
            if self._specs.get(plan_id) == spec:
                return
            self._specs[plan_id] = spec
            metrics.set_scheduler_jobs(len(self._specs))
        trigger = build_trigger(row["schedule"], row["timezone"])
        self._aps.add_job(
            id=f"plan-{plan_id}",
            func=_never_called,
            kwargs={"plan_id": plan_id},
            trigger=trigger,
            replace_existing=True,
            next_run_time=next_fire_time(row["schedule"], row["timezone"], now),
        )

    def _drop(self, plan_id: int) -> None:
        with self._lock:
            if self._specs.pop(plan_id, None) is None:
                return
            metrics.set_scheduler_jobs(len(self._specs))
        job = self._aps.get_job(f"plan-{plan_id}")
        if job is not None:
            job.remove()

    def sync_plan(self, plan_id: int) -> None:
        rows = self._list_schedules(plan_id)
        if rows:
            self._sync_row(rows[0], datetime.now(UTC))
        else:
            self._drop(plan_id)

    def reconcile(self) -> None:
        """Make the jobs match the database exactly (the safety net under NOTIFY).

        The first successful pass also catches up the slots missed while no scheduler ran.
        """
        with self._reconcile_lock:
            rows = self._list_schedules(None)
            now = datetime.now(UTC)
            for row in rows:
                if not self._caught_up:
                    self.catch_up(row, now)
                self._sync_row(row, now)
            self._caught_up = True
            with self._lock:
                stale = set(self._specs) - {row["plan_id"] for row in rows}
            for plan_id in stale:
                self._drop(plan_id)

    def _listen(self) -> None:
        while not self._stop.is_set():
            conn = None
            try:
                conn = psycopg2.connect(self.app.db.dsn, application_name="pilot-listen")
                conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
                with conn.cursor() as cur:
                    cur.execute(f"LISTEN {CHANNEL}")
                self.reconcile()  # changes made while we were not listening
                while not self._stop.is_set():
                    if select.select([conn], [], [], 1.0)[0]:
                        conn.poll()
                        plan_ids = {int(n.payload) for n in conn.notifies if n.payload.isdigit()}
                        conn.notifies.clear()
                        for plan_id in plan_ids:
                            self.sync_plan(plan_id)
            except (psycopg2.Error, PilotError) as exc:
                log.warning("schedule listener lost its connection (%s); reconnecting", type(exc).__name__)
                self._stop.wait(1.0)
            finally:
                if conn is not None:
                    conn.close()

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
        last_reconcile = 0.0
        elapsed = 0.0
        while not self._stop.wait(self.reap_seconds):
            elapsed += self.reap_seconds
            try:
                self.reap()
                if elapsed - last_reconcile >= self.reconcile_seconds:
                    last_reconcile = elapsed
                    self.reconcile()
            except PilotError as exc:
                log.warning("reaping or reconciling failed: %s", exc.message)


def _never_called(plan_id: int) -> None:
    """Jobs are run by FiringExecutor, which calls PilotScheduler.fire instead."""
    raise RuntimeError(f"plan {plan_id}: job function called directly")


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
