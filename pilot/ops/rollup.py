"""Provider metrics rolled up by the hour (migration 015): the job, in serving processes and for operators.

``roll_up`` rolls the closed hours of ``execution_logs`` since the last rollup into
``provider_metrics_hourly`` (``pilot_rollup_metrics``, as ``pilot_system``): an hour is
rolled up once it ended ``SETTLE_SECONDS`` ago, by exactly one process (the others
find the advisory lock taken and skip). ``RollupThread`` calls it every
``METRICS_ROLLUP_SECONDS`` in each serving process; ``flask rollup-metrics`` calls it
until it is current. The metrics reads (``store.provider_metrics``, ``error_trends``)
take whole rolled-up hours from the table and everything else from the raw rows, so a
late or stopped rollup makes them slower, never wrong.
"""

from __future__ import annotations

import logging
import threading

from database import DatabaseManager
from pilot.data import store

log = logging.getLogger(__name__)

SETTLE_SECONDS = 120  # a log row carries its transaction's start time: an hour is closed this long after its end
MAX_HOURS_PER_CALL = 24 * 31  # a first rollup over a long history goes a month per transaction
MAX_CALLS = 1000  # ``catch_up``'s bound: 1000 months


def roll_up(db: DatabaseManager, *, settle_seconds: int = SETTLE_SECONDS, max_hours: int = MAX_HOURS_PER_CALL) -> int:
    """One rollup step: the hours rolled up, 0 when none had closed since, -1 when another process holds the job."""
    with db.system_transaction(single=True) as cur:
        return store.rollup_metrics(cur, settle_seconds, max_hours)


def catch_up(db: DatabaseManager, *, settle_seconds: int = SETTLE_SECONDS) -> int:
    """Roll up every closed hour (operators: ``flask rollup-metrics``); the hours rolled up, -1 if another held it."""
    total = 0
    for _ in range(MAX_CALLS):
        hours = roll_up(db, settle_seconds=settle_seconds)
        if hours <= 0:
            return total if hours == 0 or total else hours
        total += hours
    return total


class RollupThread:
    """Calls ``roll_up`` every ``interval`` s in a serving process until stopped; errors are logged, not raised."""

    def __init__(self, db: DatabaseManager, interval: float) -> None:
        self.db = db
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pilot-metrics-rollup", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                hours = roll_up(self.db)
                if hours > 0:
                    log.info("provider metrics: %d closed hour(s) rolled up", hours)
            except Exception as exc:  # the database may be down for a while: the next tick tries again
                log.warning("provider metrics rollup failed (%s)", type(exc).__name__)

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


_threads: dict[int, RollupThread] = {}
_threads_lock = threading.Lock()


def start_for_serving(app: object) -> None:
    """Start this serving process's rollup thread (once per app) unless METRICS_ROLLUP_SECONDS is 0."""
    settings = app.settings  # type: ignore[attr-defined]
    if settings.metrics_rollup_seconds <= 0:
        return
    with _threads_lock:
        if id(app) in _threads:
            return
        thread = RollupThread(app.db, settings.metrics_rollup_seconds)  # type: ignore[attr-defined]
        _threads[id(app)] = thread
    thread.start()


def stop_for_serving(app: object) -> None:
    with _threads_lock:
        thread = _threads.pop(id(app), None)
    if thread is not None:
        thread.stop()
