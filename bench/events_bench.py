"""Run events (``GET /api/runs/<id>/events``): how soon a committed change reaches many open streams.

    /work/main/.venv/bin/python bench/events_bench.py --streams 50 --rounds 20

A fresh migrated database on the local PostgreSQL (dropped at the end) and Pilot under
``gunicorn -c deploy/gunicorn.conf.py`` with one worker of ``--streams + 4`` threads,
``DB_POOL_SIZE=4`` and ``EVENTS_HEARTBEAT_SECONDS=60`` (so only a NOTIFY can deliver an
event in time). ``--streams`` runs are inserted ``running`` by SQL and one stream is opened
on each. Each round one UPDATE (one commit) records a new side-effect step as begun on
every run; the bench measures, per stream, the time from that commit to the arrival of
its ``step_started`` event. It reports p50/p95/max over all deliveries, and the worker's
database connections while the streams are open: its LISTEN connections
(``pilot-listener``, the goal is 1) and its pooled ones. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import DEFAULT_ADMIN_DSN, Admin, Server, fresh_database, loadavg, pct, pilot_env, request

USER = "bench_events"
WAIT_S = 30.0


class Watcher(threading.Thread):
    """One open stream; ``arrivals[seq]`` is when the event with that id arrived (monotonic)."""

    def __init__(self, port: int, run_id: int) -> None:
        super().__init__(daemon=True)
        self.port, self.run_id = port, run_id
        self.arrivals: dict[int, float] = {}
        self.opened = threading.Event()
        self.changed = threading.Condition()
        self.error: str | None = None

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT_S * 4)
        try:
            conn.request("GET", f"/api/runs/{self.run_id}/events?user_id={USER}")
            response = conn.getresponse()
            if response.status != 200:
                self.error = f"status {response.status}"
                return
            for raw in response:
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    self.opened.set()
                elif line.startswith("id: "):
                    with self.changed:
                        self.arrivals[int(line[4:])] = time.monotonic()
                        self.changed.notify_all()
        except OSError as exc:
            self.error = type(exc).__name__
        finally:
            self.opened.set()
            conn.close()

    def wait_for(self, seq: int, deadline: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: seq in self.arrivals, timeout=max(0.0, deadline - time.monotonic()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--admin-dsn", default=DEFAULT_ADMIN_DSN)
    args = parser.parse_args()
    with fresh_database(args.admin_dsn) as dsn, tempfile.TemporaryDirectory(prefix="pilot-events-") as tmp:
        env = pilot_env(dsn, Path(tmp) / "data", DB_POOL_SIZE="4", EVENTS_HEARTBEAT_SECONDS="60")
        server = Server("events", env, Path(tmp), workers=1, threads=args.streams + 4)
        admin = Admin(dsn)
        try:
            server.wait_healthy()
            step = {"provider": "logic", "action": "transform", "params": {"template": "x"}}
            status, plan = request(server.port, "POST", "/api/plans", {"user_id": USER, "name": "b", "steps": [step]})
            assert status == 201, plan
            run_ids = [
                admin.one(
                    "INSERT INTO plan_runs (plan_id, user_id, trigger, status, owner_id, started_at) "
                    "VALUES (%s, %s, 'api', 'running', 'bench', now()) RETURNING id",
                    (plan["id"], USER),
                )
                for _ in range(args.streams)
            ]
            watchers = [Watcher(server.port, run_id) for run_id in run_ids]
            for watcher in watchers:
                watcher.start()
            for watcher in watchers:
                watcher.opened.wait(WAIT_S)
            failed = [w.error for w in watchers if w.error]
            assert not failed, failed
            connections = admin.rows(
                "SELECT application_name, count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'pilot%%' GROUP BY 1 ORDER BY 1"
            )
            latencies: list[float] = []
            missed = 0
            for round_ in range(args.rounds):
                entry = json.dumps({"index": round_, "provider": "webhook", "action": "request", "status": "running"})
                admin.execute(
                    "UPDATE plan_runs SET step_results = step_results || jsonb_build_array(%s::jsonb) "
                    "WHERE id = ANY(%s)",
                    (entry, run_ids),
                )
                committed = time.monotonic()
                deadline = committed + WAIT_S
                seq = 2 * round_ + 1
                for watcher in watchers:
                    if watcher.wait_for(seq, deadline):
                        latencies.append((watcher.arrivals[seq] - committed) * 1000)
                    else:
                        missed += 1
            admin.execute("UPDATE plan_runs SET status = 'success', finished_at = now() WHERE id = ANY(%s)", (run_ids,))
            for watcher in watchers:
                watcher.join(WAIT_S)
        finally:
            admin.close()
            server.stop()
    print(f"streams {args.streams}, rounds {args.rounds}, load {loadavg()}")
    print("worker connections while streams were open:", {row["application_name"]: row["n"] for row in connections})
    print(
        f"commit -> step_started at the client: p50 {pct(latencies, 0.5):.1f} ms, p95 {pct(latencies, 0.95):.1f} ms, "
        f"max {max(latencies):.1f} ms over {len(latencies)} deliveries; missed {missed}"
    )
    return 0 if missed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
