"""``GET /api/metrics/providers`` and ``/api/metrics/errors`` over 1,000,000 execution_logs rows.

    .venv/bin/python bench/metrics_bench.py                # 1M rows, 20 calls per figure
    .venv/bin/python bench/metrics_bench.py --rows 200000  # quicker

Creates a fresh database on the local PostgreSQL (dropped at the end), migrates it,
fills execution_logs with ``INSERT … SELECT generate_series`` as the connecting role:
30 days of an append-only log (physical order follows time, as in production),
five users of which one owns 85 % of the rows, five providers, ~5 % errors. Then
``VACUUM ANALYZE`` (autovacuum is off on the bench machines) and, for the heavy user:

  1. before: the raw queries (every row of the window, ``provider_metrics_raw`` and
     ``error_trends_raw``, as the app ran them before migration 015: as pilot_app, RLS on);
  2. the rollup: ``flask rollup-metrics``' work (``pilot.ops.rollup.catch_up``), timed, then ANALYZE;
  3. after: the endpoints through the Flask test client (whole hours from
     ``provider_metrics_hourly``, the partial first hour and the open hour from the raw rows),
     and the answers compared with the raw query's (counts exact, p95 within a bucket).

It prints median and p95 of ``--calls`` calls per figure and the EXPLAIN (ANALYZE, BUFFERS)
of the rolled-up query over 30 days. Target: every window (24 h, 7 d, 30 d) under 200 ms.
"""

from __future__ import annotations

import argparse
import bisect
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
    """A metrics query exactly as the app runs it: as pilot_app, the user set, under RLS."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg2.connect(dsn, application_name="pilot-bench")

    def run(self, name: str, user_id: str, hours: int, *, prefix: str = "") -> list[Any]:
        with self.conn.cursor() as cur:
            cur.execute("SET LOCAL ROLE pilot_app; SELECT set_config('app.current_user_id', %s, true)", (user_id,))
            if not name.endswith("_raw"):  # as store.py runs the rolled-up reads
                cur.execute(store.queries()["jit_off"])
            cur.execute(prefix + store.queries()[name], {"user_id": user_id, "hours": hours})
            rows = cur.fetchall()
        self.conn.rollback()
        return rows

    def explain(self, name: str, user_id: str, hours: int) -> str:
        return "\n".join(row[0] for row in self.run(name, user_id, hours, prefix="EXPLAIN (ANALYZE, BUFFERS) "))

    def close(self) -> None:
        self.conn.close()


def compare(app: Any, hours: int) -> str:
    """The app's answers against the raw queries', read in one transaction (one ``now()``, one window)."""
    with app.db.transaction(HEAVY) as cur:
        rolled, raw = store.provider_metrics(cur, HEAVY, hours), store.provider_metrics_raw(cur, HEAVY, hours)
        trends_equal = store.error_trends(cur, HEAVY, hours) == store.error_trends_raw(cur, HEAVY, hours)
    keys = ("provider", "total_executions", "successful", "failed", "success_rate", "max_latency_ms")
    exact = [{k: r[k] for k in keys} for r in rolled] == [{k: w[k] for k in keys} for w in raw]
    avg = max(abs(r["avg_latency_ms"] - w["avg_latency_ms"]) for r, w in zip(rolled, raw, strict=True))
    p95_buckets = max(
        abs(
            bisect.bisect_right(store.LATENCY_BOUNDS_MS, r["p95_latency_ms"])
            - bisect.bisect_right(store.LATENCY_BOUNDS_MS, w["p95_latency_ms"])
        )
        for r, w in zip(rolled, raw, strict=True)
    )
    return (
        f"counts, rates, max {'equal' if exact else 'DIFFERENT'}; avg off by {avg:.2f} ms at most;"
        f" p95 off by at most {p95_buckets} bucket(s); errors per hour {'equal' if trends_equal else 'DIFFERENT'}"
    )


def raw_query(query: AppQuery, name: str, hours: int) -> Callable[[], Any]:
    return lambda: query.run(name, HEAVY, hours)


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
    from pilot.ops import rollup

    with fresh_database(args.admin_dsn) as dsn:
        owner = psycopg2.connect(dsn, application_name="pilot-bench")
        owner.autocommit = True
        with owner.cursor() as cur:
            started = time.monotonic()
            cur.execute("SELECT setseed(0.42)")
            cur.execute(FILL, {"rows": args.rows, "heavy": HEAVY})
            cur.execute("VACUUM (ANALYZE) execution_logs")
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
            f"PostgreSQL {version}; {args.rows:,} rows in {fill_s:.1f} s (insert + VACUUM ANALYZE); table {table_size},"
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
            print("1. before: the raw queries over every row of the window (as pilot_app, RLS)")
            for hours in (24, 168, 720):
                measure(f"raw provider_metrics hours={hours}", raw_query(query, "provider_metrics_raw", hours))
            for hours in (24, 720):
                measure(f"raw error_trends hours={hours}", raw_query(query, "error_trends_raw", hours))
            started = time.monotonic()
            hours_rolled = rollup.catch_up(app.db)
            rollup_s = time.monotonic() - started
            with owner.cursor() as cur:
                cur.execute("ANALYZE provider_metrics_hourly")
                cur.execute(
                    "SELECT count(*), pg_size_pretty(pg_table_size('provider_metrics_hourly'))"
                    " FROM provider_metrics_hourly"
                )
                hourly_rows, hourly_size = cur.fetchone()
            print(
                f"2. rollup (rollup-metrics): {hours_rolled} closed hours in {rollup_s:.1f} s ->"
                f" {hourly_rows:,} hourly rows ({hourly_size}); one closed hour: see 4."
            )
            print("3. after: the endpoints (whole hours rolled up, the rest raw)")
            for hours in (24, 168, 720):
                measure(f"endpoint /api/metrics/providers hours={hours}", endpoint(hours))
            for hours in (24, 720):
                measure(f"endpoint /api/metrics/errors hours={hours}", endpoint(hours, "/api/metrics/errors"))
            for hours in (24, 168, 720):
                print(f"  hours={hours} against the raw queries: {compare(app, hours)}")
            with owner.cursor() as cur:  # the periodic job's cost once current: one more closed hour
                cur.execute("UPDATE metrics_rollup_state SET rolled_until = rolled_until - interval '1 hour'")
            started = time.monotonic()
            rollup.roll_up(app.db)
            print(f"4. rolling up one closed hour (the hourly job): {1000 * (time.monotonic() - started):.0f} ms")
            plan_after = query.explain("provider_metrics", HEAVY, 720)
        finally:
            query.close()
            owner.close()
            app.db.close()
            app.engine.shutdown(wait=False)

    print()
    print(f"{'figure':<52} {'median ms':>10} {'p95 ms':>9}")
    for label, median, p95 in results:
        print(f"{label:<52} {median:10.1f} {p95:9.1f}")
    worst = max(median for label, median, _ in results if label.startswith("endpoint"))
    print(
        f"\ntarget: every window under 200 ms -> {'met' if worst < 200 else 'NOT met'}"
        f" (slowest endpoint median {worst:.1f} ms)"
    )
    print("\nEXPLAIN (ANALYZE, BUFFERS), provider_metrics hours=720 after the rollup:\n" + plan_after)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    finally:
        shutil.rmtree(DATA_DIR, ignore_errors=True)
