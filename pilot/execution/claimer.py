"""The claimer thread of a serving process: wakes on NOTIFY ``pilot_runs`` or every second, claims runs.

Every serving process (``python app.py``, each gunicorn worker) runs one, whatever
``SCHEDULER_ENABLED`` says; tests and CLI commands do not start it (the engine then
claims inline, when a run is accepted or finished). A listener thread holds one
autocommit connection with ``LISTEN pilot_runs`` (a trigger NOTIFYs on every insert
of a queued run, the reaper on every requeue) and sets an event; the claim thread
waits for that event or the poll interval, whichever comes first, asks the engine
to claim as many runs as it has free workers, and reaps runs whose lease lapsed
every sixth of the lease.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from typing import Protocol

import psycopg2
import psycopg2.extensions

from database import Cursor
from pilot.data import store
from pilot.errors import PilotError

log = logging.getLogger(__name__)

CHANNEL = "pilot_runs"
POLL_SECONDS = 1.0  # the safety net under NOTIFY: a missed notification delays a run by this much at most
RECONNECT_SECONDS = 1.0


class Claims(Protocol):
    """What the claimer drives (``RunExecution``)."""

    def claim_now(self) -> int: ...

    def reap(self) -> int: ...


class RunClaimer:
    """One process's claim loop and its LISTEN connection."""

    def __init__(self, engine: Claims, dsn: str, reap_seconds: float, poll_seconds: float = POLL_SECONDS) -> None:
        self.engine = engine
        self.dsn = dsn
        self.reap_seconds = reap_seconds
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._claim_loop, "pilot-claim"), (self._listen, "pilot-claim-listen")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._stop.is_set()

    def wake(self) -> None:
        """Claim soon (a run was queued here, or a worker became free)."""
        self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=timeout)

    def _claim_loop(self) -> None:
        next_reap = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.engine.claim_now()
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + self.reap_seconds
                    self.engine.reap()
            except PilotError as exc:
                log.warning("claiming runs failed: %s", exc.message)
                self._stop.wait(RECONNECT_SECONDS)
            except Exception:  # a bug here must not stop this process from ever claiming again
                log.exception("claiming runs failed")
                self._stop.wait(RECONNECT_SECONDS)

    def _listen(self) -> None:
        while not self._stop.is_set():
            conn = None
            try:
                conn = psycopg2.connect(self.dsn, application_name="pilot-claim-listen")
                conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
                with conn.cursor(cursor_factory=Cursor) as cur:
                    store.listen(cur, CHANNEL)
                self._wake.set()  # runs queued while nobody listened
                while not self._stop.is_set():
                    if select.select([conn], [], [], 1.0)[0]:
                        conn.poll()
                        # An empty payload says "runs were queued" (migration 013); the run events
                        # have had their own channel since migration 019 (a payload is none of ours).
                        queued = any(not notify.payload for notify in conn.notifies)
                        conn.notifies.clear()
                        if queued:
                            self._wake.set()
            except (psycopg2.Error, PilotError) as exc:
                log.warning("run listener lost its connection (%s); reconnecting", type(exc).__name__)
                self._stop.wait(RECONNECT_SECONDS)
            finally:
                if conn is not None:
                    conn.close()
