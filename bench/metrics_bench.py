"""``GET /api/metrics/providers`` over 1,000,000 execution_logs rows.

    /tmp/venv/bin/python bench/metrics_bench.py                # 1M rows, 20 calls per figure
    /tmp/venv/bin/python bench/metrics_bench.py --rows 200000  # quicker

Creates a fresh database on the local PostgreSQL (dropped at the end), migrates it,
fills execution_logs with ``INSERT … SELECT generate_series`` as the connecting role:
30 days of an append-only log (physical order follows time, as in production),
five users of which one owns 85 % of the rows, five providers, ~5 % errors. Then it
ANALYZEs and times the endpoint through the Flask test client for the heavy user:

  1. as inserted (ANALYZE only): the newest rows, which the default 24 h window
     reads, are not all-visible yet, as in a busy production table;
  2. the same query with index scans disabled (a sequential scan): the baseline;
  3. after VACUUM (the visibility map set): index-only scans without heap fetches.

It prints median and p95 of ``--calls`` calls per figure, ratios against the
baseline, and the EXPLAIN (ANALYZE, BUFFERS) plan of the query as the app runs it
(as pilot_app, with row-level security). Target: the default window under 200 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA_DIR = tempfile.mkdtemp(prefix="pilot-metrics-bench-")  # the apps built below may write a development key
os.environ.setdefault("PILOT_DATA_DIR", DATA_DIR)

from bench.common import fresh_database  # noqa: E402
from pilot.data import store  # noqa: E402

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
HEAVY = "heavy-user"

# One append-only month: row g is written at start + g/rows of 30 days (plus jitter).
FILL = """
INSERT INTO execution_logs (user_id, provider, action, status, latency_ms, error_code, error, attempt,
                            input, output, "timestamp")
SELECT user_id, provider,
       CASE provider WHEN 'logic' THEN 'transform' WHEN 'webhook' THEN 'request'
                     WHEN 'anthropic' THEN 'messages' ELSE 'chat_completion' END,
       CASE WHEN failed THEN 'error' ELSE 'success' END,
       CASE provider WHEN 'logic' THEN round((random() * 2)::numeric, 2)::float
                     ELSE round((150 - 900 * ln(1 - random()))::numeric, 2)::float END,
       CASE WHEN failed THEN 'upstream_error' END,
       CASE WHEN failed THEN 'upstream failed with HTTP 500' END,
       CASE WHEN failed THEN 3 ELSE 1 END,
       jsonb_build_object('prompt', 'summarise item ' || g, 'max_tokens', 200),
       jsonb_build_object('data', jsonb_build_object('text', repeat('lorem ipsum ', 12)),
                          'metadata', jsonb_build_object('attempts', 1, 'http_status', 200)),
       now() - interval '30 days' + (g::float / %(rows)s) * interval '30 days' + random() * interval '5 seconds'
FROM (
    SELECT g,
           CASE WHEN g %% 100 < 85 THEN %(heavy)s ELSE 'user-' || (g %% 4 + 1) END AS user_id,
           (ARRAY['openai', 'openai', 'openai', 'openai', 'openai', 'openai', 'openai',
                  'groq', 'groq', 'groq', 'groq', 'anthropic', 'anthropic', 'anthropic', 'anthropic',
                  'webhook', 'webhook', 'webhook', 'logic', 'logic'])[1 + floor(random() * 20)::int] AS provider,
           random() < 0.05 AS failed
    FROM generate_series(1, %(rows)s) AS g
) AS s
"""


def timed(fn: Callable[[], Any], calls: int) -> list[float]:
    fn()  # warm: plan cache, buffers, the app's pool
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        samples.append(1000 * (time.perf_counter() - started))
    return samples


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


class AppQuery:
    """The provider_metrics query exactly as the app runs it: as pilot_app, the user set, under RLS."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg2.connect(dsn, application_name="pilot-bench")
        self.query = store.queries()["provider_metrics"]

    def run(self, user_id: str, hours: int, *, prefix: str = "", planner_off: bool = False) -> list[Any]:
        with self.conn.cursor() as cur:
            cur.execute("SET LOCAL ROLE pilot_app; SELECT set_config('app.current_user_id', %s, true)", (user_id,))
            if planner_off:
                cur.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off;")
                cur.execute("SET LOCAL enable_indexonlyscan = off")
            cur.execute(prefix + self.query, {"user_id": user_id, "hours": hours})
            rows = cur.fetchall()
        self.conn.rollback()
        return rows

    def explain(self, user_id: str, hours: int, *, planner_off: bool = False) -> str:
        rows = self.run(user_id, hours, prefix="EXPLAIN (ANALYZE, BUFFERS) ", planner_off=planner_off)
        return "\n".join(row[0] for row in rows)

    def close(self) -> None:
        self.conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-dsn", default=os.environ.get("BENCH_ADMIN_DSN", DEFAULT_ADMIN_DSN))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    if not 1000 <= args.rows <= 5_000_000 or not 3 <= args.calls <= 200:
        parser.error("--rows must be 1000..5000000 and --calls 3..200")

    from cryptography.fernet import Fernet

    os.environ.setdefault("LOG_LEVEL", "ERROR")  # no development-mode warnings between the figures
    os.environ.setdefault("FERNET_KEY", Fernet.generate_key().decode())  # every app built below uses it
    from app import create_app

    with fresh_database(args.admin_dsn) as dsn:
        owner = psycopg2.connect(dsn, application_name="pilot-bench")
        owner.autocommit = True
        with owner.cursor() as cur:
            started = time.monotonic()
            cur.execute("SELECT setseed(0.42)")
            cur.execute(FILL, {"rows": args.rows, "heavy": HEAVY})
            cur.execute("ANALYZE execution_logs")
            fill_s = time.monotonic() - started
            cur.execute(
                "SELECT pg_size_pretty(pg_table_size('execution_logs')),"
                " pg_size_pretty(pg_indexes_size('execution_logs'))"
            )
            table_size, index_size = cur.fetchone()
            cur.execute(
                "SELECT count(*) FILTER (WHERE user_id = %s), count(*) FILTER (WHERE user_id = %s"
                " AND \"timestamp\" > now() - interval '24 hours'), round(100.0 * avg((status = 'error')::int), 1)"
                " FROM execution_logs",
                (HEAVY, HEAVY),
            )
            heavy_rows, heavy_day, error_pct = cur.fetchone()
            cur.execute("SHOW server_version")
            version = cur.fetchone()[0]
        print(
            f"PostgreSQL {version}; {args.rows:,} rows in {fill_s:.1f} s (insert + ANALYZE); table {table_size},"
            f" indexes {index_size}; {HEAVY}: {heavy_rows:,} rows, {heavy_day:,} in the last 24 h; {error_pct} % errors"
        )

        app = create_app({"database_url": dsn})
        client = app.test_client()
        query = AppQuery(dsn)

        def endpoint(hours: int, path: str = "/api/metrics/providers") -> Callable[[], Any]:
            def call() -> Any:
                response = client.get(f"{path}?user_id={HEAVY}&hours={hours}")
                assert response.status_code == 200, response.get_data(as_text=True)
                return response.get_json()

            return call

        results: list[tuple[str, float, float]] = []

        def measure(label: str, fn: Callable[[], Any]) -> None:
            median, p95 = summary(timed(fn, args.calls))
            results.append((label, median, p95))
            print(f"  {label:<52} median {median:8.1f} ms   p95 {p95:8.1f} ms", flush=True)

        try:
            body = endpoint(24)()
            print(f"providers in the answer: {[row['provider'] for row in body['providers']]}")
            print("1. as inserted (ANALYZE only; newest pages not all-visible)")
            for hours in (24, 168, 720):
                measure(f"endpoint hours={hours}", endpoint(hours))
            measure("query only, hours=24", lambda: query.run(HEAVY, 24))
            measure("/api/metrics/errors hours=24", endpoint(24, "/api/metrics/errors"))
            plan_fresh = query.explain(HEAVY, 24)
            print("2. baseline: index scans off (sequential scan)")
            measure("query only, hours=24, index scans off", lambda: query.run(HEAVY, 24, planner_off=True))
            plan_seq = query.explain(HEAVY, 24, planner_off=True)
            with owner.cursor() as cur:
                started = time.monotonic()
                cur.execute("VACUUM (ANALYZE) execution_logs")
                print(f"3. after VACUUM ({time.monotonic() - started:.1f} s): visibility map set")
            for hours in (24, 168, 720):
                measure(f"endpoint hours={hours}, vacuumed", endpoint(hours))
            measure("query only, hours=24, vacuumed", lambda: query.run(HEAVY, 24))
            measure("/api/metrics/errors hours=24, vacuumed", endpoint(24, "/api/metrics/errors"))
            plan_vacuumed = query.explain(HEAVY, 24)
        finally:
            query.close()
            owner.close()
            app.db.close()
            app.engine.shutdown(wait=False)

    by_label = {label: median for label, median, _ in results}
    base = by_label["query only, hours=24, index scans off"]
    print()
    print(f"{'figure':<52} {'median ms':>10} {'p95 ms':>9} {'vs seq scan':>11}")
    for label, median, p95 in results:
        print(f"{label:<52} {median:10.1f} {p95:9.1f} {median / base:10.3f}x")
    target = by_label["endpoint hours=24"]
    print(f"\ntarget: default window (24 h) under 200 ms -> {'met' if target < 200 else 'NOT met'} ({target:.1f} ms)")
    print("\nEXPLAIN (ANALYZE, BUFFERS), hours=24, as inserted:\n" + plan_fresh)
    print("\nEXPLAIN (ANALYZE, BUFFERS), hours=24, index scans off (baseline):\n" + plan_seq)
    print("\nEXPLAIN (ANALYZE, BUFFERS), hours=24, after VACUUM:\n" + plan_vacuumed)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    finally:
        shutil.rmtree(DATA_DIR, ignore_errors=True)
