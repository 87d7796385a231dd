"""Transactions and round trips to PostgreSQL per run, counted on the wire.

    python bench/roundtrips.py                   # ~2 minutes
    python bench/roundtrips.py --runs 50 --scheduled-steps 1

Pilot talks to PostgreSQL through ``bench/pgproxy.py``, a loopback TCP proxy that parses
the protocol: one frontend ``Q`` message is one round trip (psycopg2 only uses the simple
query protocol), a transaction ends at each ``ReadyForQuery`` that reports idle. Pilot is
started only through its command line (``gunicorn -c deploy/gunicorn.conf.py APP_SPEC``)
with ``DATABASE_URL`` pointing at the proxy; plans are created and run over HTTP.

Paths (logic steps only, so no credentials are read and nothing leaves the machine):

  wait      ``POST /api/plans/<id>/run?wait=true`` for 1-, 3- and 10-step plans, one at a time;
  async     ``POST /api/plans/<id>/run`` (202), then the bench waits for the run to finish;
  step      ``POST /api/execute-step`` (logic/transform);
  schedule  plans with ``interval_seconds: 1`` on 2 instances x 2 workers (four schedulers, the
            production shape) for ``--window`` s: every transaction of the window that is not
            background work (lease renewal, reaping, schedule listing, LISTEN) divided by the
            runs created in it; claims (transactions holding ``pg_advisory_xact_lock``) and the
            claims that lost are shown apart.

For each path: transactions and round trips per run from the proxy, ``pg_stat_database
.xact_commit`` per run (the database's own count over the same window, less the bench's own
queries; it also counts background work and rollbacks do not count), and the round trips per
run by statement, named after ``pilot/data/queries.sql``. Leases are set long
(``RUN_LEASE_SECONDS=600``) for the request paths so that no renewal falls into a window.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg2.extensions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    APP_SPEC,
    DEFAULT_ADMIN_DSN,
    ROOT,
    Admin,
    Server,
    fresh_database,
    loadavg,
    pilot_env,
    post_ok,
    request,
    wait_until,
)
from bench.pgproxy import PgProxy, Transaction

USER = "bench-rt"
# Work that is not any one run's: lease renewal, reaping, schedule listing, startup checks. Claims,
# ticks and shedding are a run's own cost and stay counted.
BACKGROUND = re.compile(
    r"pilot_interrupt_runs|pilot_heartbeat|pilot_list_schedules|function_owner_bypasses_rls|role_bypasses_rls"
    r"|^LISTEN|heartbeat|interrupt_runs|list_schedules|reap"
)
BACKGROUND_APPS = {"pilot-listen", "pilot-migrate", "pilot-cli", "pilot-bench"}
CLAIM = re.compile(r"pg_advisory_xact_lock|lock_plan|claim_slot|claim_runs|due_schedules|tick")


def logic_steps(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"s{i}", "provider": "logic", "action": "transform", "params": {"template": {"i": i, "ok": True}}}
        for i in range(n)
    ]


def is_background(tx: Transaction) -> bool:
    return tx.app in BACKGROUND_APPS or any(BACKGROUND.search(label) for label in tx.labels)


class Window:
    """Transactions the proxy saw, and commits the database counted, between two marks.

    Idle backends report their counters to pg_stat_database up to 10 s late (PostgreSQL 15's
    idle stats interval), so each mark waits ``settle`` s first; a window's close is the next one's open.
    """

    def __init__(self, proxy: PgProxy, admin: Admin, settle: float) -> None:
        self.proxy, self.admin, self.settle = proxy, admin, settle
        self.started = 0.0
        self.commits = 0

    def open(self) -> None:
        time.sleep(self.settle)
        self.commits = self.admin.xact_commit()
        self.started = self.marked = time.monotonic()

    def close(self, own_queries: int = 0, *, reopen: bool = True) -> tuple[list[Transaction], int, int]:
        """The window's transactions; the database's commits between the marks, less the bench's own;
        and every transaction the proxy saw between the marks (background included), to compare with it."""
        started, ended, before, marked = self.started, time.monotonic(), self.commits, self.marked
        self.open()  # the closing mark
        if not reopen:
            self.started = float("inf")
        # Each mark runs two statements (each its own transaction); the opening one's second is in the window.
        commits = self.commits - before - 2 - own_queries
        return self.proxy.transactions(started, ended), commits, len(self.proxy.transactions(marked, self.marked))


def report(name: str, runs: int, txs: list[Transaction], commits: int, seen: int, extra: str = "") -> dict[str, Any]:
    work = [tx for tx in txs if not is_background(tx)]
    background = len(txs) - len(work)
    n = max(1, runs)
    per_tx = len(work) / n
    per_rt = sum(tx.round_trips for tx in work) / n
    print(
        f"{name:<28} runs {runs:>4}   transactions/run {per_tx:6.2f}   round trips/run {per_rt:7.2f}"
        f"   (background tx in window: {background})\n    pg_stat_database.xact_commit between the marks {commits}"
        f" ({commits / n:.2f}/run); the proxy saw {seen} transactions between them (incl. background){extra}"
    )
    labels: Counter[str] = Counter(label for tx in work for label in tx.labels)
    print("    round trips/run by statement: " + ", ".join(f"{k} {v / n:.2f}" for k, v in labels.most_common()))
    return {"path": name, "runs": runs, "tx": per_tx, "rt": per_rt, "commits": commits / n}


def api_paths(
    args: argparse.Namespace, admin: Admin, proxy: PgProxy, proxy_dsn: str, tmp: Path
) -> list[dict[str, Any]]:
    env = pilot_env(proxy_dsn, tmp / "api", DB_POOL_SIZE="4", RUN_LEASE_SECONDS="600", SCHEDULER_ENABLED="false")
    server = Server("api", env, tmp, workers=1)
    results = []
    try:
        server.wait_healthy()
        plans = {}
        for n in (1, 3, 10):
            plans[n] = post_ok(
                server.port, "/api/plans", {"user_id": USER, "name": f"rt {n}", "steps": logic_steps(n)}
            )["id"]
        for plan_id in plans.values():  # warm up every path
            for _ in range(3):
                post_ok(server.port, f"/api/plans/{plan_id}/run?wait=true", {"user_id": USER})
        admin.vacuum_analyze()
        window = Window(proxy, admin, args.settle)
        window.open()
        for n, plan_id in plans.items():
            for _ in range(args.runs):
                run = post_ok(server.port, f"/api/plans/{plan_id}/run?wait=true", {"user_id": USER})
                if run.get("status") != "success":
                    raise RuntimeError(f"run failed: {run}")
            txs, commits, seen = window.close()
            results.append(report(f"run?wait=true, {n} step(s)", args.runs, txs, commits, seen))
        for n, plan_id in plans.items():
            ids = [
                post_ok(server.port, f"/api/plans/{plan_id}/run", {"user_id": USER}, (202,))["id"]
                for _ in range(args.runs)
            ]
            polls = [0]

            def finished(ids: list[int] = ids, polls: list[int] = polls) -> bool:
                polls[0] += 1
                return bool(
                    admin.one(
                        "SELECT count(*) = %s FROM plan_runs WHERE id = ANY(%s) AND status = 'success'", (len(ids), ids)
                    )
                )

            if not wait_until(finished, 60):
                raise RuntimeError("202 runs did not finish within 60 s")
            txs, commits, seen = window.close(own_queries=polls[0])
            results.append(report(f"run (202), {n} step(s)", args.runs, txs, commits, seen))
        body = {"user_id": USER, "step": logic_steps(1)[0]}
        for _ in range(args.runs):
            status, answer = request(server.port, "POST", "/api/execute-step", body)
            if status != 200 or not answer.get("success"):
                raise RuntimeError(f"execute-step failed: {status} {answer}")
        txs, commits, seen = window.close(reopen=False)
        results.append(report("execute-step (logic)", args.runs, txs, commits, seen))
    finally:
        server.stop()
    return results


def scheduled_path(
    args: argparse.Namespace, admin: Admin, proxy: PgProxy, proxy_dsn: str, tmp: Path, steps: int
) -> dict[str, Any]:
    env = pilot_env(proxy_dsn, tmp / f"sched-{steps}", DB_POOL_SIZE="4", SCHEDULER_ENABLED="true")
    servers = [Server(f"sched{steps}-{i}", env, tmp, workers=2) for i in range(2)]
    try:
        for server in servers:
            server.wait_healthy()
        ids = [
            post_ok(
                servers[0].port,
                "/api/plans",
                {
                    "user_id": USER,
                    "name": f"tick {steps}.{i}",
                    "steps": logic_steps(steps),
                    "schedule": {"interval_seconds": 1},
                },
                (201,),
            )["id"]
            for i in range(args.scheduled_plans)
        ]
        time.sleep(3)  # every scheduler has its jobs
        window = Window(proxy, admin, args.settle)
        window.open()
        opened = admin.one("SELECT now()")
        time.sleep(args.window)
        # Stop the schedules (the NOTIFY reaches every process), then let the last runs finish.
        admin.execute("UPDATE execution_plans SET enabled = false WHERE id = ANY(%s)", (ids,))
        polls = [0]

        def idle() -> bool:
            polls[0] += 1
            return not admin.one("SELECT count(*) FROM plan_runs WHERE status IN ('queued', 'running')")

        wait_until(idle, 30)
        txs, commits, seen = window.close(own_queries=2 + polls[0], reopen=False)
        rows = admin.rows(
            "SELECT status, count(*) AS n FROM plan_runs WHERE plan_id = ANY(%s) AND created_at >= %s GROUP BY status",
            (ids, opened),
        )
        statuses = {r["status"]: r["n"] for r in rows}
        runs = sum(n for status, n in statuses.items() if status != "skipped")
        claims = [tx for tx in txs if not is_background(tx) and any(CLAIM.search(label) for label in tx.labels)]
        won = sum(1 for tx in claims if any(tag.startswith("INSERT 0 1") for tag in tx.tags))
        extra = (
            f"\n    claims/run {len(claims) / max(1, runs):.2f} (won {won}, lost {len(claims) - won});"
            f" claim round trips/run {sum(tx.round_trips for tx in claims) / max(1, runs):.2f}; statuses {statuses}"
        )
        result = report(f"scheduled, {steps} step(s), 2x2", runs, txs, commits, seen, extra)
        background = [tx for tx in txs if is_background(tx)]
        seconds = args.window + 1
        print(
            f"    background over 4 processes: {len(background) / seconds:.1f} transactions/s,"
            f" {sum(tx.round_trips for tx in background) / seconds:.1f} round trips/s"
        )
        return result
    finally:
        for server in servers:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-dsn", default=DEFAULT_ADMIN_DSN)
    parser.add_argument("--runs", type=int, default=20, help="runs per request path")
    parser.add_argument("--scheduled-steps", default="1,3,10", help="step counts of the scheduled path ('' skips it)")
    parser.add_argument("--scheduled-plans", type=int, default=10, help="plans firing every second")
    parser.add_argument("--window", type=float, default=12.0, help="seconds the schedules fire per step count")
    parser.add_argument("--settle", type=float, default=11.0, help="seconds before reading pg_stat_database")
    args = parser.parse_args()
    if not 1 <= args.runs <= 500 or not 1 <= args.scheduled_plans <= 50 or not 3 <= args.window <= 60:
        parser.error("--runs 1..500, --scheduled-plans 1..50, --window 3..60")
    print(f"roundtrips: app {APP_SPEC!r}; load average {loadavg()}; {' '.join(sys.argv[1:])}")
    with tempfile.TemporaryDirectory(prefix="pilot-rt-bench-") as tmpdir, fresh_database(args.admin_dsn) as dsn:
        params = psycopg2.extensions.parse_dsn(dsn)
        proxy = PgProxy((params.get("host") or "127.0.0.1", int(params.get("port") or 5432)), ROOT)
        proxy_dsn = psycopg2.extensions.make_dsn(
            dsn, host="127.0.0.1", port=proxy.port, sslmode="disable", gssencmode="disable"
        )
        admin = Admin(dsn)
        try:
            api_paths(args, admin, proxy, proxy_dsn, Path(tmpdir))
            for steps in [int(s) for s in args.scheduled_steps.split(",") if s.strip()]:
                admin.vacuum_analyze()
                scheduled_path(args, admin, proxy, proxy_dsn, Path(tmpdir), steps)
        finally:
            admin.close()
            proxy.close()
    print(f"load average at the end {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
