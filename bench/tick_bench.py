"""What one scheduler tick costs when N plans fall due in the same second (issue 9 item 4).

    .venv/bin/python bench/tick_bench.py                  # 1,000 and 5,000 plans (~30 s)
    .venv/bin/python bench/tick_bench.py --plans 300 2000

On a fresh database of the local PostgreSQL (dropped at the end): N plans with a
60 s interval, all due at the same whole minute, then one tick of one scheduler
(in this process, its clock injected) claims them. It reports the batches, the
statements sent (each one round trip; every batch also commits), the tick's
wall time and an idle tick's. The runs are handed to a sink that only counts
them, so the figure is the claim alone, not the runs' execution.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
from cryptography.fernet import Fernet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import database
from app import create_app
from bench.common import fresh_database
from scheduler import PilotScheduler


class CountingSink:
    def __init__(self) -> None:
        self.runs = 0

    def owner(self) -> str | None:
        return "bench"

    def capacity(self) -> int:
        return 1_000_000

    def hand_off(self, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.runs += len(runs)
        return runs


def admin(dsn: str, statement: str, params: Any = None) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def one(admin_dsn: str, plans: int) -> str:
    with fresh_database(admin_dsn) as dsn, tempfile.TemporaryDirectory() as data_dir:
        app = create_app(
            {"database_url": dsn, "data_dir": Path(data_dir), "fernet_keys": (Fernet.generate_key().decode(),)}
        )
        try:
            moment = datetime.now(UTC).replace(second=0, microsecond=0)
            admin(
                dsn,
                "INSERT INTO execution_plans (user_id, name, steps, schedule) "
                "SELECT 'bench', 'p' || n, '[]', '{\"interval_seconds\": 60}' FROM generate_series(1, %s) n",
                (plans,),
            )
            admin(dsn, "UPDATE plan_schedules SET next_due_at = %s", (moment,))
            conn = psycopg2.connect(dsn)
            conn.autocommit = True
            conn.cursor().execute("VACUUM ANALYZE")
            conn.close()
            sink = CountingSink()
            scheduler = PilotScheduler(app, clock=lambda: moment, sink=sink)
            scheduler.tick(moment.replace(year=2000))  # connections opened, nothing due
            sent = [0]
            me = threading.get_ident()
            real = database.Cursor._round_trip

            def counting(cursor: Any, query: bytes) -> None:
                if threading.get_ident() == me:
                    sent[0] += 1
                real(cursor, query)

            database.Cursor._round_trip = counting  # type: ignore[method-assign]
            try:
                started = time.perf_counter()
                result = scheduler.tick()
                busy = time.perf_counter() - started
                statements = sent[0]
                started = time.perf_counter()
                scheduler.tick()
                idle = time.perf_counter() - started
            finally:
                database.Cursor._round_trip = real  # type: ignore[method-assign]
            return (
                f"{plans:>6} plans due: {result.batches} batches, {statements} statements (+{result.batches} commits), "
                f"{sink.runs} runs queued, tick {busy * 1000:.0f} ms; idle tick {sent[0] - statements} statements, "
                f"{idle * 1000:.1f} ms"
            )
        finally:
            app.engine.shutdown(wait=True)
            app.db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--admin-dsn", default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--plans", type=int, nargs="+", default=[1000, 5000])
    args = parser.parse_args()
    for plans in args.plans:
        print(one(args.admin_dsn, plans), flush=True)


if __name__ == "__main__":
    main()
