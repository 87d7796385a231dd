"""One LISTEN connection per process, shared by everything in it that waits for a NOTIFY.

PostgreSQL's NOTIFY reaches every session that LISTENs on the channel, on commit. A
process that opened a connection per waiter (per event stream, say) would soon hold more
connections than the server allows (100 by default, shared by every process), so each
process keeps exactly one, here, and a thread hands each notification to the callbacks
subscribed to its channel: ``db.listener.subscribe(channel, callback)``.

- The thread and its connection start with the first subscriber (a process nobody
  watches from opens none) and stop with ``stop()`` (``db.close()``, shutdown).
- A callback runs in the listener's thread: it must be quick (set an event, note an id).
  It gets the payload, or ``None`` when the connection was (re)made or the listener is
  stopping: notifications sent while there was no connection are lost, so a ``None``
  means "read again what you are watching from the database".
- A dropped connection is reopened every ``retry_seconds`` until it works; keepalives
  find a silently dead one.
- ``subscribe`` waits (up to ``wait`` s) until the channel is listened to, so a caller
  that subscribes, then reads the state, misses nothing committed after that read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import threading
from collections.abc import Callable

import psycopg2
import psycopg2.extensions

from pilot.errors import ServiceUnavailable

log = logging.getLogger(__name__)

Callback = Callable[[str | None], None]
CHANNEL_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
APPLICATION_NAME = "pilot-listener"
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


class Subscription:
    """One callback on one channel; ``close()`` (idempotent) takes it off."""

    def __init__(self, listener: Listener, channel: str, callback: Callback) -> None:
        self.listener = listener
        self.channel = channel
        self.callback = callback
        self.closed = False

    def close(self) -> None:
        self.listener._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Listener:
    """The process's LISTEN connection and the thread dispatching its notifications to subscribers."""

    def __init__(
        self,
        dsn: Callable[[], str],
        *,
        application_name: str = APPLICATION_NAME,
        poll_seconds: float = 1.0,
        retry_seconds: float = 1.0,
    ) -> None:
        self._dsn = dsn
        self._application_name = application_name
        self._poll_seconds = poll_seconds
        self._retry_seconds = retry_seconds
        self._lock = threading.Condition()
        self._subscribers: dict[str, list[Subscription]] = {}
        self._active: set[str] = set()  # channels LISTENed on the live connection
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self.connections_opened = 0  # every connection this listener has made (one at a time)

    # --- for subscribers -------------------------------------------------------------------

    def subscribe(self, channel: str, callback: Callback, *, wait: float = 5.0) -> Subscription:
        """Call ``callback`` with every NOTIFY on ``channel`` until the subscription is closed.

        Starts the listener on first use and waits up to ``wait`` s for the channel to be
        listened to (a database that is down does not make it fail: the callback gets
        ``None`` once the connection is made). ServiceUnavailable once the listener stopped.
        """
        if not CHANNEL_NAME.fullmatch(channel):
            raise ValueError(f"not a channel name Pilot uses: {channel!r}")
        subscription = Subscription(self, channel, callback)
        with self._lock:
            if self._stopping.is_set():
                raise ServiceUnavailable("the server is shutting down; reconnect shortly", code="shutting_down")
            self._subscribers.setdefault(channel, []).append(subscription)
            if self._thread is None:
                self._start()
            elif channel not in self._active:
                self._poke()
            self._lock.wait_for(lambda: channel in self._active or self._stopping.is_set(), timeout=wait)
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription.closed:
                return
            subscription.closed = True
            subscribers = self._subscribers.get(subscription.channel, [])
            if subscription in subscribers:
                subscribers.remove(subscription)

    def subscriber_count(self, channel: str | None = None) -> int:
        """How many subscriptions are open (on ``channel``, or on all channels)."""
        with self._lock:
            if channel is not None:
                return len(self._subscribers.get(channel, []))
            return sum(len(subs) for subs in self._subscribers.values())

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the connection and end the thread; every subscriber gets ``None`` (then sees ``stopped``)."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            thread = self._thread
            self._poke()
            self._lock.notify_all()
        if thread is not None:
            thread.join(timeout)
        self._broadcast(None)
        if thread is None or not thread.is_alive():
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    # --- the thread ---------------------------------------------------------------------------

    def _start(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="pilot-listener", daemon=True)
        self._thread.start()

    def _poke(self) -> None:
        """Wake the thread from its select (a new channel, or stop)."""
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError):  # the pipe is full: it is awake anyway
                os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while not self._stopping.is_set():
            conn = None
            try:
                conn = psycopg2.connect(self._dsn(), application_name=self._application_name, **KEEPALIVES)
                conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
                self.connections_opened += 1
                self._listen_new(conn)
                self._broadcast(None)  # whatever changed while nobody listened: read it again
                self._serve(conn)
            except (psycopg2.Error, OSError) as exc:
                log.warning("event listener lost its database connection (%s); reconnecting", type(exc).__name__)
                self._stopping.wait(self._retry_seconds)
            except Exception:  # never let the thread die: subscribers would wait for nothing
                log.exception("event listener failed; reconnecting")
                self._stopping.wait(self._retry_seconds)
            finally:
                with self._lock:
                    self._active.clear()
                if conn is not None:
                    conn.close()

    def _serve(self, conn: psycopg2.extensions.connection) -> None:
        while not self._stopping.is_set():
            readable = select.select([conn, self._wake_r], [], [], self._poll_seconds)[0]
            if self._wake_r in readable:
                self._drain_wake()
                self._listen_new(conn)
            if conn in readable:
                conn.poll()
                notifies = list(conn.notifies)
                conn.notifies.clear()
                for notify in notifies:
                    self._dispatch(notify.channel, notify.payload)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def _listen_new(self, conn: psycopg2.extensions.connection) -> None:
        """LISTEN on every subscribed channel not listened to yet on this connection."""
        from pilot.data import store  # not at the top: store imports database, which imports this module

        with self._lock:
            wanted = [channel for channel in self._subscribers if channel not in self._active]
        for channel in wanted:
            with conn.cursor() as cur:
                store.listen(cur, channel)
        with self._lock:
            self._active.update(wanted)
            self._lock.notify_all()

    def _dispatch(self, channel: str, payload: str | None) -> None:
        with self._lock:
            subscribers = list(self._subscribers.get(channel, []))
        for subscription in subscribers:
            try:
                subscription.callback(payload)
            except Exception:
                log.exception("a %s subscriber failed on a notification", channel)

    def _broadcast(self, payload: str | None) -> None:
        with self._lock:
            channels = list(self._subscribers)
        for channel in channels:
            self._dispatch(channel, payload)
