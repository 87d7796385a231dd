"""A run's events, for ``GET /api/runs/<id>/events``: read from its row, followed through NOTIFY.

Everything a watcher may know about a run is on its ``plan_runs`` row: ``step_results``
(written before each step starts and again as the run goes on, each entry's ``result`` as
redacted as ``GET /api/runs/<id>`` answers it), ``status`` and ``error``. The events are a
pure function of that row, so a stream that starts late, or again after a reconnect,
rebuilds exactly the events it missed:

- ``step_started`` for a step with side effects (any provider that is not ``pure``: a
  webhook, a model call) once the run recorded it as begun;
- ``step_finished`` once its outcome is recorded (``success``, ``error`` or ``skipped``,
  with the step's ``result`` when it ran; a replay's reused step has only this event,
  with ``reused_from_run``);
- ``error`` when the run ended ``error`` or ``interrupted`` (its message);
- ``run_finished`` (the final status) last, and the stream ends.

Event ids are ``seq`` numbers that depend only on the run: the step at position ``i``
has ``2i+1`` (started) and ``2i+2`` (finished); with ``n`` recorded steps, ``error`` is
``2n+1`` and ``run_finished`` ``2n+2``. They increase in the order events happen, so
``Last-Event-ID: k`` means "send what has a seq above k".

``RunFollower`` subscribes to the ``pilot_run_events`` channel on the process's one listening
connection (``db.listener``) *before* it reads the run, then re-reads the row (one short
transaction, under row-level security) whenever a notification names the run, the
listener reconnects, or a heartbeat interval passes without one. While it waits it
holds no database connection.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from database import DatabaseManager
from pilot.data import store
from pilot.errors import Conflict, NotFound, PilotError, ValidationError

CHANNEL = "pilot_run_events"  # migrations 017 and 019: pg_notify('pilot_run_events', {"run_id", "user_id"})
TERMINAL = frozenset({"success", "error", "interrupted", "skipped"})
FINISHED_STEP = frozenset({"success", "error", "skipped"})
MAX_EVENT_ID = 10**12


@dataclass(frozen=True)
class RunEvent:
    """One event of a run: ``seq`` is its id (None for an event about the stream, not the run)."""

    seq: int | None
    name: str
    data: dict[str, Any]


def _step_events(run_id: int, position: int, entry: dict[str, Any], pure: Callable[[str], bool]) -> list[RunEvent]:
    status = entry.get("status")
    step = {
        "run_id": run_id,
        "index": entry.get("index", position),
        "id": entry.get("id"),
        "provider": entry.get("provider"),
        "action": entry.get("action"),
    }
    reused = entry.get("reused_from_run")  # a replay's step before from_step: recorded, never started
    events = []
    if status != "skipped" and reused is None and not pure(str(entry.get("provider"))):
        events.append(RunEvent(2 * position + 1, "step_started", step))
    if status in FINISHED_STEP:
        finished = {**step, "status": status}
        if "result" in entry:
            finished["result"] = entry["result"]
        if reused is not None:
            finished["reused_from_run"] = reused
        events.append(RunEvent(2 * position + 2, "step_finished", finished))
    return events


def run_events(run: dict[str, Any], pure: Callable[[str], bool]) -> list[RunEvent]:
    """Every event ``run`` (a plan_runs row) has had so far, in order; ``pure(provider)``: no side effects."""
    entries = run.get("step_results") or []
    events: list[RunEvent] = []
    for position, entry in enumerate(entries):
        if isinstance(entry, dict):
            events.extend(_step_events(run["id"], position, entry, pure))
    if run["status"] in TERMINAL:
        end = 2 * len(entries)
        if run["status"] in {"error", "interrupted"}:
            message = run.get("error") or f"the run ended {run['status']}"
            events.append(RunEvent(end + 1, "error", {"run_id": run["id"], "code": run["status"], "message": message}))
        finished = {"run_id": run["id"], "status": run["status"], "error": run.get("error")}
        finished |= {key: _iso(run.get(key)) for key in ("started_at", "finished_at")}
        events.append(RunEvent(end + 2, "run_finished", finished))
    return events


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def last_seq(run: dict[str, Any]) -> int | None:
    """The id of a finished run's last event; None while it can still have more."""
    if run["status"] not in TERMINAL:
        return None
    return 2 * len(run.get("step_results") or []) + 2


def parse_last_event_id(raw: str | None) -> int:
    """``Last-Event-ID`` as the seq to resume after (0 when absent); ValidationError when it is not one of ours."""
    if raw is None or raw.strip() == "":
        return 0
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 12 or int(text) > MAX_EVENT_ID:
        raise ValidationError(
            "Last-Event-ID must be the id of an event this stream sent (a non-negative integer)",
            code="bad_last_event_id",
        )
    return int(text)


class RunFollower:
    """One watcher of one run: the events after ``after`` now, then each as it happens, until the run ends.

    Built in the request (404 and a bad ``Last-Event-ID`` are raised here, before any
    byte is sent); ``events()`` yields RunEvents and ``None`` for a heartbeat; ``close()``
    (idempotent, also when ``events()`` was never started) frees the subscription.
    """

    def __init__(
        self,
        db: DatabaseManager,
        user_id: str,
        run_id: int,
        *,
        pure: Callable[[str], bool],
        after: int = 0,
        heartbeat_seconds: float = 15.0,
        max_seconds: float = 300.0,
    ) -> None:
        self.db, self.user_id, self.run_id = db, user_id, run_id
        self._pure = pure
        self._sent = after
        self._heartbeat = heartbeat_seconds
        self._max_seconds = max_seconds
        self._wake = threading.Event()
        # Subscribed before the first read: whatever commits after that read wakes us.
        self._listener = db.listener
        self._subscription = self._listener.subscribe(CHANNEL, self._on_notify)
        try:
            run = self._read()
            if run is None:
                raise NotFound(f"run {run_id} not found")
            final = last_seq(run)
            if final is not None and after > final:
                raise Conflict(
                    f"Last-Event-ID {after} is past this run's last event ({final})", code="bad_last_event_id"
                )
        except BaseException:
            self.close()
            raise
        self._run = run

    def _on_notify(self, payload: str | None) -> None:
        """In the listener's thread: wake the stream when the payload names this run (or says "read again")."""
        if payload is None:
            self._wake.set()
            return
        try:
            named = json.loads(payload).get("run_id")
        except (ValueError, AttributeError):
            return
        if named == self.run_id:
            self._wake.set()

    def _read(self) -> dict[str, Any] | None:
        with self.db.transaction(self.user_id) as cur:
            return store.get_run(cur, self.user_id, self.run_id)

    def events(self) -> Iterator[RunEvent | None]:
        """The events not sent yet, then new ones as the run changes; ``None``: nothing new (a heartbeat)."""
        deadline = time.monotonic() + self._max_seconds
        run: dict[str, Any] = self._run
        try:
            while True:
                for event in run_events(run, self._pure):
                    if event.seq is not None and event.seq > self._sent:
                        yield event
                        self._sent = event.seq
                remaining = deadline - time.monotonic()
                if run["status"] in TERMINAL or remaining <= 0 or self._listener.stopped:
                    return  # ended, or long enough: the client reconnects with Last-Event-ID
                if not self._wake.wait(min(self._heartbeat, remaining)):
                    yield None  # also how a client that went away is found: the write fails
                self._wake.clear()
                try:
                    now = self._read()  # after a notification, and every heartbeat in case one was missed
                except PilotError as exc:
                    yield RunEvent(None, "error", {"run_id": self.run_id, "code": exc.code, "message": exc.message})
                    return
                if now is None:
                    yield RunEvent(
                        None, "error", {"run_id": self.run_id, "code": "not_found", "message": "the run was deleted"}
                    )
                    return
                run = now
        finally:
            self.close()

    def close(self) -> None:
        self._subscription.close()
