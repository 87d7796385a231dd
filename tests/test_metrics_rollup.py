"""Provider metrics from hourly rollups (migration 015, issue 9 item 7): the same answers as the raw rows.

Counts, success rates, maxima and errors per hour must equal the raw query's; the
average may differ in the last float bit (a sum of sums), so to 0.01; p95 comes from
the hourly histograms once a rolled-up hour is in the window, and must fall in the
bucket of the exact answer or a neighbouring one.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from pilot.application import PilotApp
from pilot.data import store
from pilot.ops import maintenance, rollup
from tests.conftest import make_app

ROLLUP_LOCK = "SELECT pg_advisory_lock(x'50494C4F54'::bigint + 15)"
PROVIDERS = ("openai", "groq", "webhook", "logic")


@pytest.fixture
def rollup_app(fresh_db: str, tmp_path: Path, fernet_key: str) -> Iterator[PilotApp]:
    """An app on a database of its own: the rollup's watermark is one per database."""
    app = make_app(fresh_db, tmp_path, (fernet_key,))
    yield app
    app.db.close()


def seed(dsn: str, user: str, hours_back: float, rows: int, *, seed_value: int = 7, at: datetime | None = None) -> None:
    """``rows`` log rows of ``user`` spread over the last ``hours_back`` hours, or all ``at`` (connecting role)."""
    rng = random.Random(seed_value)
    now = datetime.now(UTC)
    values = []
    for _ in range(rows):
        provider = rng.choice(PROVIDERS)
        latency = rng.uniform(0, 3) if provider == "logic" else 100 + rng.expovariate(1 / 700)
        status = "error" if rng.random() < 0.1 else "success"
        when = at or now - timedelta(seconds=rng.uniform(1, hours_back * 3600))
        values.append((user, provider, "x", status, round(latency, 2), when))
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.executemany(
                'INSERT INTO execution_logs (user_id, provider, action, status, latency_ms, "timestamp")'
                " VALUES (%s, %s, %s, %s, %s, %s)",
                values,
            )
    finally:
        conn.close()


def bucket(latency: float) -> int:
    return bisect.bisect_right(store.LATENCY_BOUNDS_MS, latency)


def answers(app: PilotApp, user: str, hours: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any, Any]:
    with app.db.transaction(user) as cur:
        rolled = store.provider_metrics(cur, user, hours)
        raw = store.provider_metrics_raw(cur, user, hours)
        trends = store.error_trends(cur, user, hours)
        trends_raw = store.error_trends_raw(cur, user, hours)
    return rolled, raw, trends, trends_raw


def assert_same_answers(app: PilotApp, user: str, hours: int, *, exact_p95: bool = False) -> None:
    rolled, raw, trends, trends_raw = answers(app, user, hours)
    assert [r["provider"] for r in rolled] == [r["provider"] for r in raw]  # same order too
    exact = ("total_executions", "successful", "failed", "success_rate", "max_latency_ms")
    for mine, theirs in zip(rolled, raw, strict=True):
        assert {k: mine[k] for k in exact} == {k: theirs[k] for k in exact}, (hours, mine, theirs)
        assert mine["avg_latency_ms"] == pytest.approx(theirs["avg_latency_ms"], abs=0.011)
        if exact_p95:
            assert mine["p95_latency_ms"] == pytest.approx(theirs["p95_latency_ms"])
        else:
            assert abs(bucket(mine["p95_latency_ms"]) - bucket(theirs["p95_latency_ms"])) <= 1, (mine, theirs)
    assert trends == trends_raw


def rollup_state(app: PilotApp) -> dict[str, Any]:
    with app.db.transaction(None) as cur:
        state = store.rollup_state(cur)
    assert state is not None
    return state


def test_the_latency_buckets_are_the_same_in_python_and_in_postgres(rollup_app: PilotApp) -> None:
    with rollup_app.db.transaction(None) as cur:
        cur.execute("SELECT pilot_latency_bounds() AS bounds")
        row = cur.fetchone()
    assert row is not None and row["bounds"] == [float(b) for b in store.LATENCY_BOUNDS_MS]


def test_rolled_up_metrics_equal_the_raw_query(rollup_app: PilotApp, fresh_db: str, user: str, other_user: str) -> None:
    seed(fresh_db, user, 75, 3000)
    seed(fresh_db, other_user, 75, 500, seed_value=8)
    for hours in (1, 24, 72):  # nothing rolled up yet: every answer comes from the raw rows, p95 exact
        assert_same_answers(rollup_app, user, hours, exact_p95=True)

    assert rollup.roll_up(rollup_app.db, settle_seconds=0) >= 75
    state = rollup_state(rollup_app)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    assert state["rolled_until"] in (hour, hour - timedelta(hours=1))  # every closed hour
    with rollup_app.db.transaction(user) as cur:  # RLS: the user's own hours only
        cur.execute("SELECT DISTINCT user_id FROM provider_metrics_hourly")
        assert [row["user_id"] for row in cur.fetchall()] == [user]
        cur.execute("SELECT sum(total) AS n FROM provider_metrics_hourly")
        row = cur.fetchone()
        assert row is not None
        rolled_rows = int(row["n"])
    assert 2500 < rolled_rows <= 3000  # all but the open hour's rows
    for hours in (1, 2, 3, 24, 72, 720):
        assert_same_answers(rollup_app, user, hours)

    seed(fresh_db, user, 0.0003, 40, seed_value=9)  # the open hour grows after the rollup: read raw
    assert rollup.roll_up(rollup_app.db, settle_seconds=0) == 0  # nothing closed since
    for hours in (1, 24, 720):
        assert_same_answers(rollup_app, user, hours)


def test_the_rollup_runs_in_one_process_at_a_time(rollup_app: PilotApp, fresh_db: str, user: str) -> None:
    seed(fresh_db, user, 30, 600)
    holder = psycopg2.connect(fresh_db)
    try:
        with holder.cursor() as cur:
            cur.execute(ROLLUP_LOCK)  # another process is rolling up
        assert rollup.roll_up(rollup_app.db, settle_seconds=0) == -1  # it skips at once, rolls nothing
        assert rollup_state(rollup_app)["rolled_until"] is None
    finally:
        holder.close()

    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(rollup.roll_up(rollup_app.db, settle_seconds=0)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 4 and sum(1 for hours in results if hours > 0) == 1  # one did the work
    assert_same_answers(rollup_app, user, 48)  # and nothing was counted twice


def test_prune_logs_keeps_the_rollup_equal_to_the_raw_rows(rollup_app: PilotApp, fresh_db: str, user: str) -> None:
    seed(fresh_db, user, 24 * 40, 2000)
    assert rollup.catch_up(rollup_app.db, settle_seconds=0) > 24 * 39  # two calls: a month at most per call
    now = datetime.now(UTC).replace(minute=30)  # a cutoff in the middle of an hour
    result = maintenance.prune_history(rollup_app.db, 30, include_runs=False, now=now)
    assert result.logs > 0
    with rollup_app.db.transaction(None, as_app=False) as cur:
        cur.execute("SELECT min(hour) AS first FROM provider_metrics_hourly")
        row = cur.fetchone()
    assert row is not None and row["first"] >= result.cutoff - timedelta(hours=1)
    for hours in (24 * 29, 24 * 31, 24 * 45):
        assert_same_answers(rollup_app, user, hours)


def test_rollup_metrics_command_catches_up_every_closed_hour(rollup_app: PilotApp, fresh_db: str, user: str) -> None:
    seed(fresh_db, user, 9.9, 300)
    seed(fresh_db, user, 10, 1, at=datetime.now(UTC) - timedelta(hours=10))  # the oldest row: 10 closed hours
    result = rollup_app.test_cli_runner().invoke(args=["rollup-metrics", "--settle-seconds", "0"])
    assert result.exit_code == 0, result.output
    assert "rolled up 10 closed hour(s)" in result.output
    again = rollup_app.test_cli_runner().invoke(args=["rollup-metrics", "--settle-seconds", "0"])
    assert again.exit_code == 0 and "rolled up 0 closed hour(s)" in again.output
    assert_same_answers(rollup_app, user, 24)


def test_serving_processes_roll_up_in_the_background(fresh_db: str, tmp_path: Path, fernet_key: str) -> None:
    app = make_app(fresh_db, tmp_path, (fernet_key,), metrics_rollup_seconds=1)
    seed(fresh_db, "someone", 5, 50)
    rollup.start_for_serving(app)
    try:
        deadline = time.monotonic() + 20
        while rollup_state(app)["rolled_until"] is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rollup_state(app)["rolled_until"] is not None  # the thread rolled the closed hours up
    finally:
        rollup.stop_for_serving(app)
        app.db.close()
