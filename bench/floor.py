"""The floor for scheduled runs: the same durable writes as a queue of plan runs, with SKIP LOCKED and nothing else.

    python bench/floor.py queue --plans 1000 --burst              # N plans due in the same second
    python bench/floor.py queue --plans 500 --seconds 30          # N plans every second
    (bench/queue_bench.py runs it in the same run as Pilot, on the same plans)

``--processes`` (4, like 2 instances x 2 workers) processes, each with one ticker, one claimer
and ``--threads`` (8) finishing threads, share one database (issue 9 design §12):

* tick (every process; commit asynchronous, as the design's tick): claim due rows of a narrow
  ``floor_schedules (plan_id, next_run_at, …)`` table ``FOR UPDATE SKIP LOCKED LIMIT 500``,
  insert their slot rows into ``plan_runs`` (``queued``, keyed by ``(plan_id, scheduled_for)``),
  advance ``next_run_at`` by the interval and ``pg_notify`` once, all in one statement; it then
  sleeps until the earliest next due time (at most 0.2 s);
* claim (commit asynchronous): ``UPDATE plan_runs … WHERE id IN (SELECT … WHERE status = 'queued'
  ORDER BY id LIMIT <free threads> FOR UPDATE SKIP LOCKED)`` returning each run's plan steps,
  again at once after a claim that got rows, else woken by LISTEN, by a finishing thread, or a
  0.1 s poll;
* finish (commit synchronous, RLS identity as ``pilot_app``): the run ``success`` with its step
  results and one ``execution_logs`` row per step, in one statement.

Every transaction is one round trip (one query string on an autocommit connection). The tick
and the claim run as the connecting role (Pilot's design gives them ``pilot_system`` policies
that do not exist yet). The schedule table lives in the bench database and is dropped with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import select
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SETUP = """
CREATE TABLE IF NOT EXISTS floor_schedules (
    plan_id     bigint PRIMARY KEY REFERENCES execution_plans (id) ON DELETE CASCADE,
    user_id     varchar(255) NOT NULL,
    interval_s  integer NOT NULL,
    next_run_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS floor_schedules_due_idx ON floor_schedules (next_run_at);
TRUNCATE floor_schedules;
"""

TICK = """SET LOCAL synchronous_commit = off;
WITH due AS (SELECT plan_id, user_id, interval_s, next_run_at FROM floor_schedules
             WHERE next_run_at <= now() ORDER BY next_run_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED),
ins AS (INSERT INTO plan_runs (plan_id, user_id, trigger, scheduled_for, status)
        SELECT plan_id, user_id, 'schedule', next_run_at, 'queued' FROM due
        ON CONFLICT (plan_id, scheduled_for) DO NOTHING RETURNING 1),
adv AS (UPDATE floor_schedules s SET next_run_at = due.next_run_at + make_interval(secs => due.interval_s)
        FROM due WHERE s.plan_id = due.plan_id RETURNING 1)
SELECT (SELECT count(*) FROM due),
       (SELECT count(*) FROM ins),
       (SELECT count(*) FROM adv),
       (SELECT pg_notify('floor_runs', '') WHERE EXISTS (SELECT FROM ins)) IS NULL,
       extract(epoch FROM (SELECT min(next_run_at) FROM floor_schedules) - now())"""

CLAIM = """SET LOCAL synchronous_commit = off;
UPDATE plan_runs r SET status = 'running', started_at = now(), owner_id = %(owner)s, heartbeat_at = now()
FROM execution_plans p
WHERE r.id IN (SELECT id FROM plan_runs WHERE status = 'queued' ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
  AND p.id = r.plan_id
RETURNING r.id, r.user_id, p.steps"""

FINISH = """SET LOCAL ROLE pilot_app; SELECT set_config('app.current_user_id', %(user_id)s, true);
WITH fin AS (UPDATE plan_runs SET status = 'success', finished_at = now(), step_results = %(results)s
             WHERE user_id = %(user_id)s AND id = %(run_id)s AND status = 'running'
             RETURNING id, plan_id, user_id)
INSERT INTO execution_logs (user_id, plan_id, run_id, step_index, step_id, provider, action, status, latency_ms,
                            attempt, input, output)
SELECT fin.user_id, fin.plan_id, fin.id, l.step_index, l.step_id, l.provider, l.action, 'success', l.latency_ms,
       1, l.input, l.output
FROM fin CROSS JOIN jsonb_to_recordset(%(logs)s) AS l(step_index int, step_id text, provider text, action text,
     latency_ms float8, input jsonb, output jsonb)"""


def connect(dsn: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(dsn, application_name="pilot-floor")
    conn.autocommit = True
    return conn


def prepare(dsn: str, plan_ids: list[int], interval_s: int, first: datetime) -> None:
    """Fill ``floor_schedules`` with ``plan_ids``, all first due at ``first``."""
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(SETUP)
            cur.execute(
                "INSERT INTO floor_schedules (plan_id, user_id, interval_s, next_run_at)"
                " SELECT id, user_id, %s, %s FROM execution_plans WHERE id = ANY(%s)",
                (interval_s, first, plan_ids),
            )
            cur.execute("ANALYZE floor_schedules")
    finally:
        conn.close()


def aligned(seconds_ahead: float) -> datetime:
    """The first whole second at least ``seconds_ahead`` s from now (UTC)."""
    moment = datetime.now(UTC) + timedelta(seconds=seconds_ahead)
    return moment.replace(microsecond=0) + timedelta(seconds=1)


# --- one floor process --------------------------------------------------------------------------


class FloorProcess:
    """One process of the floor: ticker, claimer and finishing threads, until ``until`` (epoch s)."""

    def __init__(self, dsn: str, threads: int, batch: int, until: float, stop_file: str | None = None) -> None:
        self.dsn, self.threads, self.batch, self.until = dsn, threads, batch, until
        self.stop_file = Path(stop_file) if stop_file else None
        self.owner = f"floor:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.work: queue.Queue[tuple[int, str, list[dict[str, Any]]]] = queue.Queue()
        self.busy = 0
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()  # a finishing thread wakes the claimer (design D4)
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def running(self) -> bool:
        return time.time() < self.until and not (self.stop_file is not None and self.stop_file.exists())

    def tick(self) -> None:
        conn = connect(self.dsn)
        with conn.cursor() as cur:
            while self.running():
                cur.execute(TICK, {"batch": self.batch})
                due, _, _, _, next_in = cur.fetchone()
                if due >= self.batch:
                    continue
                time.sleep(min(0.2, max(0.001, float(next_in if next_in is not None else 0.2))))
        conn.close()

    def claim(self) -> None:
        conn, listen = connect(self.dsn), connect(self.dsn)
        with listen.cursor() as cur:
            cur.execute("LISTEN floor_runs")
        with conn.cursor() as cur:
            while self.running():
                with self.lock:
                    free = self.threads - self.busy - self.work.qsize()
                if free > 0:
                    cur.execute(CLAIM, {"owner": self.owner, "limit": free})
                    claimed = cur.fetchall()
                    for row in claimed:
                        self.work.put(row)
                    if claimed:
                        continue  # more may be queued: claim again while threads are free
                # Nothing queued, or no free thread: wait for a NOTIFY or a thread finishing (0.1 s poll as the net).
                ready = select.select([listen, self.wake_r], [], [], 0.1)[0]
                if listen in ready:
                    listen.poll()
                    listen.notifies.clear()
                if self.wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
        conn.close()
        listen.close()

    def finish(self) -> None:
        conn = connect(self.dsn)
        with conn.cursor() as cur:
            while self.running():
                try:
                    run_id, user_id, steps = self.work.get(timeout=0.1)
                except queue.Empty:
                    continue
                with self.lock:
                    self.busy += 1
                try:
                    results, logs = [], []
                    for index, step in enumerate(steps):
                        data = (step.get("params") or {}).get("template")
                        entry = {"index": index, "id": step.get("id"), "provider": step["provider"]}
                        entry |= {"action": step["action"], "status": "success"}
                        results.append({**entry, "result": {"success": True, "data": data}})
                        logs.append(
                            {
                                "step_index": index,
                                "step_id": step.get("id"),
                                "provider": step["provider"],
                                "action": step["action"],
                                "latency_ms": 0.01,
                                "input": step.get("params") or {},
                                "output": data,
                            }
                        )
                    cur.execute(
                        FINISH,
                        {
                            "user_id": user_id,
                            "run_id": run_id,
                            "results": json.dumps(results),
                            "logs": json.dumps(logs),
                        },
                    )
                finally:
                    with self.lock:
                        self.busy -= 1
                    with contextlib.suppress(BlockingIOError):
                        os.write(self.wake_w, b"x")
        conn.close()

    def serve(self) -> None:
        threads = [threading.Thread(target=self.tick, daemon=True), threading.Thread(target=self.claim, daemon=True)]
        threads += [threading.Thread(target=self.finish, daemon=True) for _ in range(self.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(0.1, self.until - time.time() + 10))


class Floor:
    """``processes`` floor processes for at most ``seconds`` s; ``stop()`` ends them sooner."""

    def __init__(self, dsn: str, seconds: float, processes: int = 4, threads: int = 8, batch: int = 500) -> None:
        self.until = time.time() + seconds
        self.stop_file = Path(tempfile.gettempdir()) / f"pilot-floor-stop-{uuid.uuid4().hex}"
        cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--dsn", dsn, "--until", f"{self.until:.3f}"]
        cmd += ["--threads", str(threads), "--batch", str(batch), "--stop-file", str(self.stop_file)]
        self.procs = [subprocess.Popen(cmd) for _ in range(processes)]

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def stop(self) -> None:
        """Ask every process to stop, wait for them (bounded), kill what is left."""
        self.stop_file.touch()
        for proc in self.procs:
            try:
                proc.wait(timeout=max(1.0, min(15.0, self.until - time.time() + 15)))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.stop_file.unlink(missing_ok=True)


# --- standalone ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="one floor process (started by run_floor)")
    worker.add_argument("--dsn", required=True)
    worker.add_argument("--until", type=float, required=True)
    worker.add_argument("--threads", type=int, default=8)
    worker.add_argument("--batch", type=int, default=500)
    worker.add_argument("--stop-file")
    standalone = sub.add_parser("queue", help="the floor alone, on a fresh database")
    standalone.add_argument("--admin-dsn", default=None)
    standalone.add_argument("--plans", type=int, default=1000)
    standalone.add_argument("--burst", action="store_true", help="all due in the same second (else every second)")
    standalone.add_argument("--seconds", type=int, default=30)
    standalone.add_argument("--processes", type=int, default=4)
    standalone.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    if args.command == "worker":
        FloorProcess(args.dsn, args.threads, args.batch, args.until, args.stop_file).serve()
        return 0
    from bench import queue_bench  # the measuring half lives with the Pilot side of the same bench

    return queue_bench.floor_standalone(args)


if __name__ == "__main__":
    raise SystemExit(main())
