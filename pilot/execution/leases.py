"""Run leases: whoever executes a run renews its lease, in every process that executes runs (SPEC §6).

A run row carries ``owner_id`` and ``lease_expires_at``. The engine holds each run
it has accepted or is executing here (a request with ``?wait=true``, the worker
pool, a scheduler firing: whatever ``SCHEDULER_ENABLED`` says), and one thread per
process renews exactly the held runs, every sixth of the lease, in one
``pilot_system`` transaction. A run whose executor is gone is no longer held, so
its lease lapses and any process's reaper marks it ``interrupted``, even while
this process lives.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from database import DatabaseManager
from pilot.data import store
from pilot.errors import PilotError

log = logging.getLogger(__name__)

MIN_RENEW_INTERVAL_S = 0.5


class LeaseKeeper:
    """The runs this process holds, and the thread that renews their leases (started on first use)."""

    def __init__(self, db: DatabaseManager, lease_seconds: int, owner: Callable[[], str]) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        self.interval = max(MIN_RENEW_INTERVAL_S, lease_seconds / 6)
        self._owner = owner
        self._held: dict[int, int] = {}  # run id -> how many holders (queued in the pool, executing)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, run_id: int) -> None:
        """Renew ``run_id``'s lease from now on, until every ``hold`` has its ``release``."""
        with self._lock:
            self._held[run_id] = self._held.get(run_id, 0) + 1
            if self._thread is None and not self._stop.is_set():
                # Started here, not in create_app: only a process that executes runs needs it.
                self._thread = threading.Thread(target=self._loop, name="pilot-leases", daemon=True)
                self._thread.start()

    def release(self, run_id: int) -> None:
        with self._lock:
            remaining = self._held.get(run_id, 0) - 1
            if remaining > 0:
                self._held[run_id] = remaining
            else:
                self._held.pop(run_id, None)

    @contextmanager
    def holding(self, run_id: int) -> Iterator[None]:
        """Hold ``run_id`` for the duration of the block."""
        self.hold(run_id)
        try:
            yield
        finally:
            self.release(run_id)

    def held(self) -> list[int]:
        with self._lock:
            return sorted(self._held)

    def renew(self) -> int:
        """Renew the leases of the held runs now; how many rows were renewed."""
        run_ids = self.held()
        if not run_ids:
            return 0
        with self.db.system_transaction() as cur:
            return store.heartbeat(cur, self._owner(), run_ids, self.lease_seconds)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except PilotError as exc:
                log.warning("renewing run leases failed: %s", exc.message)
            except Exception:  # a bug here must not end renewal for every run of the process
                log.exception("renewing run leases failed")

    def close(self, timeout: float = 2.0) -> None:
        """Stop renewing (after the engine drained or interrupted its runs)."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=timeout)
