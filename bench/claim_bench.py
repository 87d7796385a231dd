"""One claim (``pilot_claim_runs``) against queues of growing size: migration 018's claim beside 013's, same run.

    python bench/claim_bench.py                       # ~1 minute
    python bench/claim_bench.py --sizes 1000,5000 --reps 30

On a fresh database (dropped at the end), N queued runs spread over 50 users (or, with the
head held, the oldest half all of one user already at the cap) are inserted with SQL; then
each claim of 32 runs (cap 32 per user) runs in a transaction that is rolled back, so every
repetition sees the same queue. Migration 013's claim (the window over every queued row)
is created beside it as ``bench_claim_013`` from the text of that migration, so both are
timed in the same database, alternately. Printed: the median and p90 of the claim statement
(sent and its rows read, in ms) and their ratio. ``VACUUM ANALYZE`` after loading.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_ADMIN_DSN, fresh_database, loadavg

ROOT = Path(__file__).resolve().parent.parent
USERS = 50


def old_claim_sql() -> str:
    """Migration 013's pilot_claim_runs, renamed bench_claim_013."""
    text = (ROOT / "migrations" / "013_run_queue.sql").read_text(encoding="utf-8")
    body = re.search(r"CREATE OR REPLACE FUNCTION pilot_claim_runs\(.*?\n\$\$;\n", text, re.S)
    if body is None:
        raise SystemExit("migration 013's claim not found")
    return body.group(0).replace("pilot_claim_runs", "bench_claim_013")


def load(conn: psycopg2.extensions.connection, size: int, head_held: bool) -> None:
    with conn.cursor() as cur:
        cur.execute("TRUNCATE plan_runs, execution_logs")
        cur.execute("DELETE FROM execution_plans")
        cur.execute(
            "INSERT INTO execution_plans (user_id, name, steps, timezone, enabled)"
            " SELECT 'u' || g, 'p', '[]'::jsonb, 'UTC', true FROM generate_series(0, %s) g",
            (USERS - 1,),
        )
        if head_held:  # u0: 32 running (at the cap) and the oldest half of the queue
            cur.execute(
                "INSERT INTO plan_runs (plan_id, user_id, trigger, status, owner_id)"
                " SELECT p.id, p.user_id, 'api', 'running', 'x' FROM execution_plans p, generate_series(1, 32)"
                " WHERE p.user_id = 'u0'"
            )
            cur.execute(
                "INSERT INTO plan_runs (plan_id, user_id, trigger, status)"
                " SELECT p.id, p.user_id, 'api', 'queued' FROM execution_plans p, generate_series(1, %s)"
                " WHERE p.user_id = 'u0'",
                (size // 2,),
            )
        rest = size - (size // 2 if head_held else 0)
        cur.execute(
            "INSERT INTO plan_runs (plan_id, user_id, trigger, status)"
            " SELECT p.id, p.user_id, 'api', 'queued' FROM generate_series(1, %s) g"
            " JOIN execution_plans p ON p.user_id = 'u' || (1 + g %% %s)",
            (rest, USERS - 1),
        )
    conn.commit()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
    conn.autocommit = False


def timed(conn: psycopg2.extensions.connection, statement: str) -> tuple[float, int]:
    with conn.cursor() as cur:
        started = time.perf_counter()
        cur.execute(statement)
        rows = cur.fetchall()
        elapsed = (time.perf_counter() - started) * 1000
    conn.rollback()
    return elapsed, len(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-dsn", default=DEFAULT_ADMIN_DSN)
    parser.add_argument("--sizes", default="100,1000,5000,20000")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",") if size]
    if not sizes or not all(1 <= size <= 100_000 for size in sizes) or not 1 <= args.reps <= 200:
        parser.error("--sizes 1..100000 each, --reps 1..200")
    print(f"claim_bench: {' '.join(sys.argv[1:])}; load average {loadavg()}")
    new = "SELECT * FROM pilot_claim_runs('bench', 32, 32, 30, 30)"
    old = "SELECT * FROM bench_claim_013('bench', 32, 32, 30)"
    with fresh_database(args.admin_dsn) as dsn:
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(old_claim_sql())
            conn.commit()
            for head_held in (False, True):
                for size in sizes:
                    load(conn, size, head_held)
                    times: dict[str, list[float]] = {"018": [], "013": []}
                    got: dict[str, int] = {}
                    for rep in range(args.reps):
                        order = (("018", new), ("013", old)) if rep % 2 == 0 else (("013", old), ("018", new))
                        for name, statement in order:
                            elapsed, count = timed(conn, statement)
                            times[name].append(elapsed)
                            got[name] = count
                    med = {name: statistics.median(values) for name, values in times.items()}
                    p90 = {name: sorted(values)[int(0.9 * (len(values) - 1))] for name, values in times.items()}
                    shape = "head held by a capped user" if head_held else f"{USERS - 1} users"
                    print(
                        f"  {size:>6} queued ({shape}): 018 median {med['018']:6.2f} ms p90 {p90['018']:6.2f}"
                        f" | 013 median {med['013']:6.2f} ms p90 {p90['013']:6.2f}"
                        f" | 018/013 {med['018'] / med['013']:.2f} | runs claimed {got['018']} / {got['013']}"
                    )
        finally:
            conn.close()
    print(f"load average at the end {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
