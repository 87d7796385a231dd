"""Whole runs of a plan: queue, claim, execute, finish; the run half of ``ExecutionEngine``.

The queue is the runs table (issue 9, SPEC §6). ``enqueue`` inserts a ``queued`` row
holding the run's input (429 when the user already has ``RUN_QUEUE_MAX_PER_USER``
queued); nothing about an accepted run lives only in this process. Any process with
free workers claims queued rows, oldest first, at most ``MAX_RUNNING_PER_USER``
running per user across all processes (``claim_now``: one ``pilot_system``
statement, ``FOR UPDATE SKIP LOCKED``), and executes them on its pool of
``RUN_WORKERS`` threads, holding each with the ``LeaseKeeper``. Serving processes
claim from a thread woken by NOTIFY (``claimer.py``); elsewhere (tests, CLI) the
engine claims inline when it accepts or finishes a run. A ``?wait=true`` run that a
claim would take at once (nothing queued, the user under the cap) is started by its own
insert on a worker reserved here (migration 021). ``wait_for_run`` is
``?wait=true``: it waits up to ``RUN_WAIT_SECONDS`` for the run to end, wherever it
runs. Every way out of a run ends its row: success, error (a step failed, or
anything else did), or, on shutdown, interrupted. A step entry in ``step_results``
says whether its provider is ``pure`` (logic: no side effect), so a run that dies
having done only pure work is requeued by the reaper, and any other is interrupted.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from database import DatabaseManager
from pilot.data import store
from pilot.errors import DatabaseError, NotFound, PilotError, ServiceUnavailable, TooManyRequests
from pilot.execution.claimer import RunClaimer
from pilot.execution.leases import LeaseKeeper
from pilot.execution.progress import RunProgress, pending_logs
from pilot.execution.replay import replayed_steps
from pilot.ops import metrics
from pilot.settings import Settings
from pilot.steps.plan_schema import Step
from pilot.steps.templating import evaluate, truthy
from provider_registry import ProviderRegistry, ProviderResult

log = logging.getLogger(__name__)

QUEUE_FULL_RETRY_AFTER_S = 5
WAIT_POLL_FIRST_S, WAIT_POLL_MAX_S = 0.01, 0.5  # ?wait=true reads the row this often (a local run wakes it at once)
UNFINISHED = ("queued", "running")
ENDED_REMEMBERED = 1024
VERSION_NUMBERS_REMEMBERED = 4096
REAPED = "interrupted: the process running it stopped (its lease expired)"
_owner: tuple[int, str] | None = None


def process_owner_id() -> str:
    """Identifies this process (host, pid, boot) as the owner of the runs it executes."""
    global _owner
    if _owner is None or _owner[0] != os.getpid():
        _owner = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    return _owner[1]


def unexpected_failure(exc: BaseException, what: str = "the step") -> ProviderResult:
    """A failed result for an error nobody anticipated: named by its type only (its text may hold data)."""
    if isinstance(exc, PilotError):
        return ProviderResult.fail(exc.code, exc.message)
    if isinstance(exc, RecursionError):
        return ProviderResult.fail("nested_too_deeply", f"{what} failed: a value is nested too deeply")
    log.error("%s failed unexpectedly", what, exc_info=exc)
    return ProviderResult.fail("internal_error", f"{what} failed unexpectedly ({type(exc).__name__})")


class RunExecution:
    """Runs of whole plans, for ``ExecutionEngine`` (which supplies the step half below)."""

    settings: Settings
    db: DatabaseManager
    registry: ProviderRegistry

    def _setup_runs(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.settings.run_workers, thread_name_prefix="pilot-run")
        self._inflight = 0  # runs claimed here and not finished; never more than RUN_WORKERS
        self._idle = threading.Condition()
        self._claim_lock = threading.Lock()
        self._closed = False
        self._claiming_paused = False  # set from a signal handler: a plain flag, no lock
        self._backlog = False  # the last claim took all it could: more may be queued
        self._waiters: dict[int, threading.Event] = {}
        self._ended_here: deque[int] = deque(maxlen=ENDED_REMEMBERED)  # for a wait that starts after its run ended
        self._ended_rows: dict[int, dict[str, Any]] = {}  # finished rows of runs a wait here is waiting for
        self._version_numbers: dict[tuple[str, int], int] = {}  # (user, plan version id) -> its number
        self._claimer: RunClaimer | None = None
        self.leases = LeaseKeeper(self.db, self.settings.run_lease_seconds, process_owner_id)

    def execute_run_step(
        self,
        user_id: str,
        step: Any,
        run_context: dict[str, Any],
        *,
        plan_id: int,
        run_id: int,
        step_index: int,
        run: RunProgress | None = None,
    ) -> ProviderResult:
        """Run one step of a run and log it (a pure step's row waits in ``run``); a failed result for every failure."""
        raise NotImplementedError

    def _insert_log(
        self,
        user_id: str,
        step: Step,
        result: ProviderResult,
        params: Any,
        where: dict[str, Any],
        attempts: int,
        redactor: Any = None,
        *,
        run: RunProgress | None = None,
    ) -> None:
        """Write one execution_logs row for ``step``, after the rows ``run`` still owes (ExecutionEngine)."""
        raise NotImplementedError

    def step_is_pure(self, step: Any) -> bool:
        """Whether the step's provider is pure: no network, no credentials, no side effect (ExecutionEngine)."""
        raise NotImplementedError

    # --- the queue -------------------------------------------------------------------

    def enqueue(
        self,
        user_id: str,
        plan_id: int,
        trigger: str,
        input_: dict[str, Any] | None = None,
        *,
        claim_here: bool = False,
        plan_version_id: int | None = None,
        replayed_from: int | None = None,
        replay: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Queue a run of the user's plan holding ``input_``; the queued row.

        NotFound for another user's or a missing plan; TooManyRequests when the user
        already has ``RUN_QUEUE_MAX_PER_USER`` runs queued. Wakes a claimer here; the
        insert wakes every other process's (NOTIFY). ``claim_here`` (``?wait=true``)
        starts the run in its insert when it may (a free worker here, nothing queued, the
        user under the cap), or else claims in the caller's thread at once, so that with
        free workers the run most likely starts in this process, whose end wakes the wait
        without a poll.
        """
        limit = self.settings.run_queue_max_per_user
        start = claim_here and self._reserve(1) == 1  # a worker for the run, should its insert start it
        try:
            with self.db.transaction(user_id, single=True) as cur:  # the plan checked in the insert: one round trip
                if claim_here:
                    store.quiet_enqueue(cur)  # no claimer anywhere is woken for a run this thread claims next
                run = store.enqueue_run(
                    cur,
                    user_id,
                    plan_id,
                    trigger=trigger,
                    input_=input_,
                    queue_max=limit,
                    plan_version_id=plan_version_id,
                    replayed_from=replayed_from,
                    replay=replay,
                    start_owner=process_owner_id() if start else None,
                    lease_seconds=self.settings.run_lease_seconds,
                    max_per_user=self.settings.max_running_per_user,
                )
        except BaseException:
            if start:
                self._unreserve(1)
            raise
        if start and (run is None or run["status"] != "running"):
            self._unreserve(1)  # queued behind others (or the user at the cap): claimed below, or elsewhere
        if run is None:
            with self.db.transaction(user_id, single=True) as cur:
                if store.get_plan(cur, user_id, plan_id) is None:
                    raise NotFound(f"plan {plan_id} not found")
            raise TooManyRequests(
                f"you have {limit} runs queued already, the most RUN_QUEUE_MAX_PER_USER allows; "
                f"retry after {QUEUE_FULL_RETRY_AFTER_S} s, when some have started",
                code="run_queue_full",
                retry_after=QUEUE_FULL_RETRY_AFTER_S,
                details={"queued": limit},
            )
        if claim_here:  # the caller waits next: its end here hands the wait the finished row (no read)
            with self._idle:
                self._waiters.setdefault(run["id"], threading.Event())
            if run["status"] == "running":  # started by its insert, on the worker reserved above
                return self._start_here(run)
            claimed, mine = self._claim_inline(here=run["id"])
            if run["id"] not in claimed:
                self._wake_claimers()  # not taken here (no free worker, the user's cap): any process may
            elif mine is not None:
                self._work(mine)  # only pure steps: run in this thread, which would only wait for it
        else:
            self.claim_soon()
        return run

    def _start_here(self, run: dict[str, Any]) -> dict[str, Any]:
        """Execute a run its insert started (``enqueue``, migration 021) on its reserved worker; the run row.

        Only pure steps: in this thread, which would only wait for it; otherwise on the pool.
        """
        answer = {key: value for key, value in run.items() if key not in ("steps", "plan_exists")}
        self.leases.hold(run["id"])
        if self._only_pure(run):
            self._work(run)
        else:
            try:
                self._pool.submit(self._work, run)
            except RuntimeError:  # the pool shut down meanwhile (the process is stopping): run it here
                self._work(run)
        return answer

    def _reserve(self, wanted: int) -> int:
        """Take up to ``wanted`` of this process's free workers for runs about to start; how many.

        Taken ones count as in flight until ``_unreserve`` or the end of their run (``_work``), so a
        claim and a starting insert in two threads can never start more than RUN_WORKERS runs here.
        """
        with self._idle:
            if self._closed or self._claiming_paused:
                return 0
            taken = max(0, min(wanted, self.settings.run_workers - self._inflight))
            self._inflight += taken
            return taken

    def _unreserve(self, count: int) -> None:
        if count > 0:
            with self._idle:
                self._inflight -= count
                self._idle.notify_all()

    def create_run(
        self,
        user_id: str,
        plan_id: int,
        trigger: str,
        scheduled_for: Any = None,
        input_: dict[str, Any] | None = None,
        *,
        plan_version_id: int | None = None,
        replayed_from: int | None = None,
        replay: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Insert a queued run holding its input, without a queue limit and without waking a claimer here;
        None when a run for this (plan, scheduled_for) already exists.

        The run executes the plan's latest version, or ``plan_version_id`` (a replay: ``replay.py``).
        """
        with self.db.transaction(user_id) as cur:
            if store.get_plan(cur, user_id, plan_id) is None:
                raise NotFound(f"plan {plan_id} not found")
            return store.enqueue_run(
                cur,
                user_id,
                plan_id,
                trigger=trigger,
                input_=input_,
                scheduled_for=scheduled_for,
                plan_version_id=plan_version_id,
                replayed_from=replayed_from,
                replay=replay,
            )

    def submit(self, user_id: str, run_id: int) -> None:
        """A queued run was committed: claim soon (it may run here or in any other process)."""
        self.claim_soon()

    def start_claiming(self) -> None:
        """Start this process's claimer thread (serving processes only: ``python app.py``, gunicorn workers)."""
        with self._claim_lock:
            if self._claimer is not None or self._closed:
                return
            self._claimer = RunClaimer(self, self.db.dsn, reap_seconds=max(1.0, self.settings.run_lease_seconds / 6))
            self._claimer.start()

    def pause_claiming(self) -> None:
        """Claim nothing more (safe in a signal handler); queued runs stay queued for other processes."""
        self._claiming_paused = True

    def claim_soon(self) -> None:
        """Wake the claimer thread, or (no thread: tests, CLI) claim now in this thread."""
        claimer = self._claimer
        if claimer is not None and claimer.running:
            claimer.wake()
        else:
            self._claim_inline()

    def _claim_inline(self, here: int | None = None) -> tuple[list[int], dict[str, Any] | None]:
        try:
            return self._claim(here)
        except PilotError as exc:  # the run is queued and safe; another claim will take it
            log.warning("claiming runs failed: %s", exc.message)
            return [], None

    def _wake_claimers(self) -> None:
        """NOTIFY every process's claimer (runs this process queued quietly and could not take)."""
        try:
            with self.db.system_transaction() as cur:
                store.notify_queued(cur)
        except PilotError as exc:  # the claimers' poll finds the run within a second
            log.warning("waking the claimers failed: %s", exc.message)

    def claim_now(self) -> int:
        """Claim as many queued runs as this process has free workers and start them; how many."""
        return len(self._claim()[0])

    def _claim(self, here: int | None = None) -> tuple[list[int], dict[str, Any] | None]:
        """``claim_now``, naming the runs it started; run ``here``, if claimed and all its steps are pure
        (they end in milliseconds: logic), is returned instead of handed to the pool, for the caller's
        thread to execute (``?wait=true``: the thread that would wait for it). It counts as a worker."""
        mine: dict[str, Any] | None = None
        with self._claim_lock:
            if self._closed or self._claiming_paused:
                return [], None
            free = self._reserve(self.settings.run_workers)  # every free worker, held through the claim
            if free <= 0:
                self._backlog = True
                return [], None
            try:
                with self.db.system_transaction(single=True) as cur:
                    store.commit_without_flush(cur)
                    claimed = store.claim_runs(
                        cur,
                        process_owner_id(),
                        free,
                        self.settings.max_running_per_user,
                        self.settings.run_lease_seconds,
                        self.settings.max_lateness_seconds,
                    )
            except BaseException:
                self._unreserve(free)
                raise
            runs = [run for run in claimed if not run["late"]]
            if len(runs) < len(claimed):  # scheduled runs that waited too long: ended skipped (late), counted
                metrics.record_scheduler_firing("skipped_late", len(claimed) - len(runs))
            self._backlog = len(runs) == free
            self._unreserve(free - len(runs))
            for run in runs:
                self.leases.hold(run["id"])
                if run["id"] == here and self._only_pure(run):
                    mine = run
                else:
                    self._pool.submit(self._work, run)
        return [run["id"] for run in runs], mine

    def _only_pure(self, run: dict[str, Any]) -> bool:
        steps = run.get("steps")
        return bool(run.get("plan_exists")) and isinstance(steps, list) and all(map(self.step_is_pure, steps))

    def reap(self) -> int:
        """Requeue or interrupt the runs whose lease lapsed (their process died); how many were interrupted."""
        with self.db.system_transaction() as cur:
            rows = store.interrupt_runs(cur, None, self.settings.run_lease_seconds, REAPED)
        if rows:
            log.warning("marked %d run(s) interrupted after their owner died", len(rows))
        return len(rows)

    def _work(self, run: dict[str, Any]) -> None:
        run_id = run["id"]
        ended: dict[str, Any] | None = None
        try:
            ended = self._execute_claimed(run)
        except Exception:  # _execute_claimed ends the run itself; this is only a database that stayed down
            log.exception("run %s could not be recorded as finished", run_id)
        finally:
            self.leases.release(run_id)
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()
                waiter = self._waiters.get(run_id)
                self._ended_here.append(run_id)
                if waiter is not None and ended is not None:
                    if len(self._ended_rows) >= ENDED_REMEMBERED:  # waits that never came for theirs
                        self._ended_rows.clear()
                    self._ended_rows[run_id] = ended  # the row its finish returned: the wait need not read it
            if waiter is not None:
                waiter.set()
            if self._backlog:
                self.claim_soon()

    def _execute_claimed(self, run: dict[str, Any]) -> dict[str, Any] | None:
        """A run as the claim handed it over: with the steps of its plan version, or none if its plan is gone."""
        user_id = run["user_id"]
        results = RunProgress()
        try:
            plan = {"id": run["plan_id"], "steps": run["steps"]} if run["plan_exists"] else None
            return self._steps(user_id, run, plan, None, results)
        except (DatabaseError, ServiceUnavailable):
            raise
        except Exception as exc:
            failure = unexpected_failure(exc, "the run")
            error = (failure.error or {}).get("message", "the run failed")
            return self._finish(user_id, run["id"], "error", results, error)

    def wait_for_run(self, user_id: str, run_id: int, timeout: float) -> dict[str, Any] | None:
        """The run once it ended, or as it is after ``timeout`` s (``?wait=true``); None if it is gone.

        A run executed here wakes the wait at once; one executed by another process is
        seen by reading its row, at most every half second. A run still executing here when
        the time is up has its lease renewed first: that synchronous commit also flushes its
        insert, which started it without waiting for the flush (``enqueue``).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._idle:
            event = self._waiters.setdefault(run_id, threading.Event())  # set up by enqueue(claim_here=True)
            if run_id in self._ended_here:
                event.set()
        try:
            delay = WAIT_POLL_FIRST_S
            while True:
                event.wait(max(0.0, min(delay, deadline - time.monotonic())))
                event.clear()  # woken once per end here; a row that still says running is polled
                delay = min(delay * 2, WAIT_POLL_MAX_S)
                with self._idle:
                    run = self._ended_rows.pop(run_id, None)
                if run is None or run["user_id"] != user_id:
                    with self.db.transaction(user_id, single=True) as cur:
                        run = store.get_run(cur, user_id, run_id)
                if run is None or run["status"] not in UNFINISHED:
                    return run
                if time.monotonic() >= deadline:
                    if run_id in self.leases.held():  # its starting insert did not wait for the WAL flush
                        self.leases.renew()  # a synchronous write: the run is on disk before the 202 names it
                    return run
        finally:
            with self._idle:
                if self._waiters.get(run_id) is event:
                    del self._waiters[run_id]
                self._ended_rows.pop(run_id, None)

    def version_number(self, user_id: str, version_id: int) -> int | None:
        """A plan version's number if known here (versions never change: a bounded map, no expiry)."""
        return self._version_numbers.get((user_id, version_id))

    def remember_version_number(self, user_id: str, version_id: int, number: int) -> None:
        if len(self._version_numbers) >= VERSION_NUMBERS_REMEMBERED:
            self._version_numbers.clear()
        self._version_numbers[(user_id, version_id)] = number

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the runs claimed here to finish; True when none is left."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout)

    def run(self, user_id: str, run_id: int) -> dict[str, Any] | None:
        """Execute one queued run in the caller's thread, with the input stored on its row, to the end.

        Returns the finished run row, or None if it was not queued (or could not be
        read). A step's failure is that step's failed result with its log row; any
        other failure ends the run as ``error``. Only a database that is down makes
        this raise, and then the run's lease lapses and a reaper ends it.
        """
        results = RunProgress()
        with self.leases.holding(run_id):
            try:
                return self._run(user_id, run_id, results)
            except (DatabaseError, ServiceUnavailable):
                raise
            except Exception as exc:
                failure = unexpected_failure(exc, "the run")
                error = (failure.error or {}).get("message", "the run failed")
                return self._finish(user_id, run_id, "error", results, error)

    def _run(self, user_id: str, run_id: int, results: RunProgress) -> dict[str, Any] | None:
        with self.db.transaction(user_id) as cur:
            run = store.start_run(cur, user_id, run_id, process_owner_id(), self.settings.run_lease_seconds)
            plan = store.get_plan(cur, user_id, run["plan_id"]) if run else None
            version_id = run.get("plan_version_id") if plan and run else None
            version = store.get_plan_version(cur, user_id, version_id) if version_id else None
        if run is None:
            return None
        return self._steps(user_id, run, plan, version, results)

    def _steps(
        self,
        user_id: str,
        run: dict[str, Any],
        plan: dict[str, Any] | None,
        version: dict[str, Any] | None,
        results: RunProgress,
    ) -> dict[str, Any] | None:
        """Execute the plan's steps for the started ``run``, then end it."""
        run_id = run["id"]
        if plan is None:
            return self._finish(user_id, run_id, "error", [], "the plan was deleted")
        context: dict[str, Any] = {"steps": {}, "step_results": {}, "input": run.get("input") or {}}
        # The run's own plan version (a replay's may be older than the plan); a replay's reused results first.
        steps, reused = replayed_steps(version["steps"] if version else plan["steps"], run.get("replay"))
        status, error = "success", None
        for index, step in enumerate(steps):
            if index < len(reused):  # replay: the recorded result, fed on as it was; no call, no log row
                results.append(reused[index])
                if reused[index].get("status") != "skipped":
                    _remember(context, index, step, reused[index].get("result") or {})
                continue
            entry = self._entry(index, step)
            result = self._run_step(user_id, run_id, plan["id"], index, step, context, results)
            if result is None:
                results.append({**entry, "status": "skipped"})
                continue
            outcome = result.to_dict()
            _remember(context, index, step, outcome)
            results.append({**entry, "status": "success" if result.success else "error", "result": outcome})
            if not result.success and not step.get("continue_on_error"):
                status = "error"
                error = f"step {step.get('id') or index} failed: {(result.error or {}).get('message', '')}"
                break
        return self._finish(user_id, run_id, status, results, error)

    def _entry(self, index: int, step: dict[str, Any]) -> dict[str, Any]:
        """A step's entry in ``step_results``; ``pure`` says its provider has no side effect (README)."""
        return {
            "index": index,
            "id": step.get("id"),
            "provider": step.get("provider"),
            "action": step.get("action"),
            "pure": self.step_is_pure(step),
        }

    def _run_step(
        self,
        user_id: str,
        run_id: int,
        plan_id: int,
        index: int,
        step: dict[str, Any],
        context: dict[str, Any],
        results: RunProgress,
    ) -> ProviderResult | None:
        """One step of a run: None when its ``when`` is false, else its result (logged), failed or not."""
        try:
            if step.get("when") and not truthy(evaluate(step["when"], context)):
                return None
            if not self.step_is_pure(step):
                self._mark_running(user_id, run_id, index, step, results)
            return self.execute_run_step(
                user_id, step, context, plan_id=plan_id, run_id=run_id, step_index=index, run=results
            )
        except Exception as exc:  # before or around the call: still this step's failure, with its log row
            result = unexpected_failure(exc)
            where = {"plan_id": plan_id, "run_id": run_id, "step_index": index}
            self._insert_log(user_id, _loggable(step), result, None, where, 1, run=results)
            return result

    def _mark_running(self, user_id: str, run_id: int, index: int, step: dict[str, Any], results: RunProgress) -> None:
        """Before a step with side effects: its ``running`` marker, with the pure steps' log rows, in one round trip.

        If this process dies during the call, the step's outcome is known to be unknown (the reaper names it).
        Only the entries since the last marker are sent (``append_progress``), not the whole list.
        """
        running = {**self._entry(index, step), "status": "running"}
        with self.db.transaction(user_id) as cur:
            store.insert_logs(cur, user_id, results.logs)
            store.append_progress(cur, user_id, run_id, [*results[results.written :], running], process_owner_id())
        results.logs.clear()
        results.written = len(results)

    def _finish(
        self, user_id: str, run_id: int, status: str, results: list[dict[str, Any]], error: str | None
    ) -> dict[str, Any] | None:
        logs = pending_logs(results)  # the pure steps' rows still waiting: written with the finish
        try:
            run = self._record_finish(user_id, run_id, status, results, error, logs)
        except (DatabaseError, ServiceUnavailable):
            raise
        except Exception as exc:  # results the database refused: keep the outcome, drop the payloads
            log.warning("run %s: its step results could not be stored (%s)", run_id, type(exc).__name__)
            bare = [{key: value for key, value in entry.items() if key != "result"} for entry in results]
            run = self._record_finish(user_id, run_id, status, bare, error, logs)
        logs.clear()
        if run is not None:
            if run.pop("user_queued"):  # the place this run leaves may start one the cap held back: claim next
                self._backlog = True
            metrics.record_run_finished(run["trigger"], run["status"])
        return run

    def _record_finish(
        self,
        user_id: str,
        run_id: int,
        status: str,
        results: list[dict[str, Any]],
        error: str | None,
        logs: list[dict[str, Any]],
    ) -> dict[str, Any] | None:
        # Only a failed run may go on to pause its plan: any other finish is its read and nothing after it,
        # so the waiting log rows, the finish and the commit go in one round trip. Only while this process
        # holds the run (owner_id): one whose lease lapsed may have been requeued and claimed elsewhere.
        # A request here waiting for the run (?wait=true) gets its log rows back with the finish: no read.
        waited = run_id in self._waiters
        with self.db.transaction(user_id, single=status != "error") as cur:
            store.insert_logs(cur, user_id, logs)
            run = store.finish_run(cur, user_id, run_id, status, results, error, process_owner_id(), with_logs=waited)
            if run is not None and run["trigger"] == "schedule" and status == "error":
                self._maybe_pause(cur, user_id, run["plan_id"])
        return run

    def _maybe_pause(self, cur: Any, user_id: str, plan_id: int) -> None:
        """``pause_on_failure: N``: disable the plan after N consecutive failed scheduled runs."""
        plan = store.get_plan(cur, user_id, plan_id)
        limit = ((plan or {}).get("schedule") or {}).get("pause_on_failure")
        if not plan or not limit or not plan["enabled"]:
            return
        recent = store.recent_finished_runs(cur, user_id, plan_id, int(limit))
        if len(recent) == int(limit) and all(status != "success" for status in recent):
            store.set_plan_enabled(cur, user_id, plan_id, False)
            log.warning("plan %s paused after %s consecutive failed runs", plan_id, limit)

    def stop(self, timeout: float) -> None:
        """Claim no more, let the runs claimed here finish for up to ``timeout`` s, mark the rest interrupted.

        Queued runs stay queued: another process (or this one, restarted) claims them.
        """
        self._close()
        if not self.drain(timeout):
            with self.db.system_transaction() as cur:
                rows = store.interrupt_runs(
                    cur, process_owner_id(), 0, "interrupted: the server shut down before the run finished"
                )
            log.warning("shutdown interrupted %d run(s)", len(rows))
        self.shutdown(wait=False)

    def _close(self) -> None:
        with self._claim_lock:  # a claim in progress hands its runs to the pool first
            self._closed = True
            claimer = self._claimer
        if claimer is not None:
            claimer.stop()

    def shutdown(self, wait: bool = True) -> None:
        """Claim no more and stop the worker pool and lease renewal (``wait``: after the runs in it)."""
        self._close()
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        self.leases.close()


def _remember(context: dict[str, Any], index: int, step: dict[str, Any], outcome: dict[str, Any]) -> None:
    """Make a step's outcome visible to the later steps of its run (by index, and by id)."""
    context["step_results"][str(index)] = outcome
    if step.get("id"):
        context["steps"][step["id"]] = outcome


def _loggable(step: Any) -> Step:
    """A saved step as far as a log row needs it, even when it no longer validates."""
    raw = step if isinstance(step, dict) else {}
    return Step.model_construct(
        id=raw.get("id") if isinstance(raw.get("id"), str) else None,
        provider=str(raw.get("provider") or "unknown")[:64],
        action=str(raw.get("action") or "unknown")[:64],
    )
