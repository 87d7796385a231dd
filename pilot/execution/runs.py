"""Whole runs of a plan: accept, queue, execute, finish; the run half of ``ExecutionEngine``.

A run is a ``plan_runs`` row holding its input (SPEC §6: the queue). ``submit``
puts it on this process's bounded worker pool (``RUN_WORKERS`` threads,
``RUN_WORKERS`` x 16 runs accepted at once, more are refused as ServiceUnavailable); ``run`` executes it
in the caller's thread (``?wait=true``). Either way the run is held by the
``LeaseKeeper`` while this process owns it, and every way out of ``run`` ends
the row: success, error (a step failed, or anything else did), or, on
shutdown, interrupted.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from database import DatabaseManager
from pilot.data import store
from pilot.errors import DatabaseError, NotFound, PilotError, ServiceUnavailable
from pilot.execution.leases import LeaseKeeper
from pilot.execution.replay import replayed_steps
from pilot.ops import metrics
from pilot.settings import Settings
from pilot.steps.plan_schema import Step
from pilot.steps.templating import evaluate, truthy
from provider_registry import ProviderResult

log = logging.getLogger(__name__)

RUN_QUEUE_PER_WORKER = 16
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

    def _setup_runs(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.settings.run_workers, thread_name_prefix="pilot-run")
        # Runs accepted but not finished, per process (README: "Run queue"); more are refused.
        self._slots = threading.BoundedSemaphore(self.settings.run_workers * RUN_QUEUE_PER_WORKER)
        self._inflight = 0
        self._idle = threading.Condition()
        self._closed = False
        self.leases = LeaseKeeper(self.db, self.settings.run_lease_seconds, process_owner_id)

    def execute_run_step(
        self, user_id: str, step: Any, run_context: dict[str, Any], *, plan_id: int, run_id: int, step_index: int
    ) -> ProviderResult:
        """Run one step of a run and write its log row; a failed result for every failure (ExecutionEngine)."""
        raise NotImplementedError

    def _insert_log(
        self, user_id: str, step: Step, result: ProviderResult, params: Any, where: dict[str, Any], attempts: int
    ) -> None:
        """Write one execution_logs row for ``step`` (ExecutionEngine)."""
        raise NotImplementedError

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
        """Insert a queued run holding its input; None when a run for this (plan, scheduled_for) already exists.

        The run executes the plan's latest version, or ``plan_version_id`` (a replay: ``replay.py``).
        """
        with self.db.transaction(user_id) as cur:
            if store.get_plan(cur, user_id, plan_id) is None:
                raise NotFound(f"plan {plan_id} not found")
            return store.insert_run(
                cur,
                user_id,
                plan_id,
                trigger=trigger,
                owner_id=process_owner_id(),
                scheduled_for=scheduled_for,
                input_=input_,
                lease_seconds=self.settings.run_lease_seconds,
                plan_version_id=plan_version_id,
                replayed_from=replayed_from,
                replay=replay,
            )

    def submit(self, user_id: str, run_id: int) -> None:
        """Run a queued run on the bounded worker pool.

        ServiceUnavailable when the run queue is full or the engine is stopping; the run is then
        ended (``error`` or ``interrupted``), never left ``queued``.
        """
        with self._idle:  # one lock with stop(): a run is either in the pool or refused, never lost between
            if self._closed:
                refusal = ("interrupted", "interrupted: the server was shutting down; the run did not start")
            elif not self._slots.acquire(blocking=False):
                refusal = ("error", "rejected: the run queue is full")
            else:
                self._inflight += 1
                self.leases.hold(run_id)
                self._pool.submit(self._work, user_id, run_id)
                return
        status, reason = refusal
        self._finish(user_id, run_id, status, [], reason)
        if status == "interrupted":
            raise ServiceUnavailable("the server is shutting down; try again shortly", code="shutting_down")
        raise ServiceUnavailable("too many runs are queued; try again shortly", code="busy")

    def free_run_slots(self, per_worker: int = RUN_QUEUE_PER_WORKER) -> int:
        """How many more runs ``submit`` takes now, counting ``per_worker`` per run worker (the scheduler's bound)."""
        with self._idle:
            return 0 if self._closed else max(0, self.settings.run_workers * per_worker - self._inflight)

    def _work(self, user_id: str, run_id: int) -> None:
        try:
            self.run(user_id, run_id)
        except Exception:  # run() ends the run itself; this is only a database that stayed down
            log.exception("run %s could not be recorded as finished", run_id)
        finally:
            self.leases.release(run_id)
            self._slots.release()
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for submitted runs to finish; True when none is left."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout)

    def run(self, user_id: str, run_id: int) -> dict[str, Any] | None:
        """Execute a queued run, with the input stored on its row, to the end.

        Returns the finished run row, or None if it was not queued (or could not be
        read). A step's failure is that step's failed result with its log row; any
        other failure ends the run as ``error``. Only a database that is down makes
        this raise, and then the run's lease lapses and a reaper ends it.
        """
        results: list[dict[str, Any]] = []
        with self.leases.holding(run_id):
            try:
                return self._run(user_id, run_id, results)
            except (DatabaseError, ServiceUnavailable):
                raise
            except Exception as exc:
                failure = unexpected_failure(exc, "the run")
                error = (failure.error or {}).get("message", "the run failed")
                return self._finish(user_id, run_id, "error", results, error)

    def _run(self, user_id: str, run_id: int, results: list[dict[str, Any]]) -> dict[str, Any] | None:
        with self.db.transaction(user_id) as cur:
            run = store.start_run(cur, user_id, run_id, process_owner_id(), self.settings.run_lease_seconds)
            plan = store.get_plan(cur, user_id, run["plan_id"]) if run else None
            version_id = run.get("plan_version_id") if plan and run else None
            version = store.get_plan_version(cur, user_id, version_id) if version_id else None
        if run is None:
            return None
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
            entry: dict[str, Any] = {
                "index": index,
                "id": step.get("id"),
                "provider": step.get("provider"),
                "action": step.get("action"),
            }
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

    def _run_step(
        self,
        user_id: str,
        run_id: int,
        plan_id: int,
        index: int,
        step: dict[str, Any],
        context: dict[str, Any],
        results: list[dict[str, Any]],
    ) -> ProviderResult | None:
        """One step of a run: None when its ``when`` is false, else its result (logged), failed or not."""
        try:
            if step.get("when") and not truthy(evaluate(step["when"], context)):
                return None
            # Recorded before the call: if this process dies now, the step's outcome is known to be unknown.
            running = {"index": index, "id": step.get("id"), "status": "running"}
            running |= {"provider": step.get("provider"), "action": step.get("action")}
            with self.db.transaction(user_id) as cur:
                store.progress_run(cur, user_id, run_id, [*results, running])
            return self.execute_run_step(user_id, step, context, plan_id=plan_id, run_id=run_id, step_index=index)
        except Exception as exc:  # before or around the call: still this step's failure, with its log row
            result = unexpected_failure(exc)
            where = {"plan_id": plan_id, "run_id": run_id, "step_index": index}
            self._insert_log(user_id, _loggable(step), result, None, where, 1)
            return result

    def _finish(
        self, user_id: str, run_id: int, status: str, results: list[dict[str, Any]], error: str | None
    ) -> dict[str, Any] | None:
        try:
            run = self._record_finish(user_id, run_id, status, results, error)
        except (DatabaseError, ServiceUnavailable):
            raise
        except Exception as exc:  # results the database refused: keep the outcome, drop the payloads
            log.warning("run %s: its step results could not be stored (%s)", run_id, type(exc).__name__)
            bare = [{key: value for key, value in entry.items() if key != "result"} for entry in results]
            run = self._record_finish(user_id, run_id, status, bare, error)
        if run is not None:
            metrics.record_run_finished(run["trigger"], run["status"])
        return run

    def _record_finish(
        self, user_id: str, run_id: int, status: str, results: list[dict[str, Any]], error: str | None
    ) -> dict[str, Any] | None:
        with self.db.transaction(user_id) as cur:
            run = store.finish_run(cur, user_id, run_id, status, results, error)
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
        """Accept no more runs, let submitted ones finish for up to ``timeout`` s, mark the rest interrupted."""
        with self._idle:
            self._closed = True
        if not self.drain(timeout):
            with self.db.system_transaction() as cur:
                rows = store.interrupt_runs(
                    cur, process_owner_id(), 0, "interrupted: the server shut down before the run finished"
                )
            log.warning("shutdown interrupted %d run(s)", len(rows))
        self.shutdown(wait=False)

    def shutdown(self, wait: bool = True) -> None:
        """Accept no more runs and stop the worker pool and lease renewal (``wait``: after the runs in it)."""
        with self._idle:
            self._closed = True
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
