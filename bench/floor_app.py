"""The floor for Pilot's short request paths: a minimal hand-written Flask app doing the same durable writes.

    gunicorn -c bench/floor_gunicorn.conf.py bench.floor_app:app      # what bench/run_bench.py starts

Served with every server setting of ``deploy/gunicorn.conf.py`` (``bench/floor_gunicorn.conf.py``
loads that file and leaves out only Pilot's scheduler hooks), against the same database, as the
same connecting role. Each transaction is one round trip: an autocommit connection sends the
role, the identity and the statement(s) in one query string, which PostgreSQL runs as one
implicit transaction (``SET LOCAL`` lasts until its end; committed when the string ends).

``POST /floor/step`` {user_id, step}
    One RLS-scoped, durable (``synchronous_commit`` on) ``execution_logs`` insert, as
    ``POST /api/execute-step`` writes for a logic step; answers ``{success, data, …}``.
``POST /floor/run?steps=n`` {user_id, plan_id, input}
    The rows a plan run writes, in two transactions: the ``plan_runs`` row, already ``running``
    and holding its input, read together with the plan's steps (commit asynchronous: the client
    is only answered after the second, synchronous commit, which flushes the first); then the
    finish: the run ``success`` with its step results and one log row per step, in one statement.
    Answers the run with its logs, as ``?wait=true`` does. ``steps`` caps the plan's steps.

Nothing else: no validation beyond what the writes need, no templating, no metrics, no logging.
The connection pool keeps ``DB_POOL_SIZE`` (10) connections per worker, opened on first use.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions
from flask import Flask, Response, jsonify, request

# Every statement string starts with the role and the identity, as Pilot's transactions do.
STEP_SQL = """SET LOCAL ROLE pilot_app; SELECT set_config('app.current_user_id', %(user_id)s, true);
INSERT INTO execution_logs (user_id, provider, action, status, latency_ms, attempt, input, output)
VALUES (%(user_id)s, %(provider)s, %(action)s, 'success', %(latency_ms)s, 1, %(input)s, %(output)s)
RETURNING id"""

START_SQL = """SET LOCAL ROLE pilot_app; SELECT set_config('app.current_user_id', %(user_id)s, true);
SET LOCAL synchronous_commit = off;
WITH plan AS (SELECT id, user_id, steps FROM execution_plans WHERE user_id = %(user_id)s AND id = %(plan_id)s),
run AS (INSERT INTO plan_runs (plan_id, user_id, trigger, status, started_at, owner_id, heartbeat_at,
                               lease_expires_at, input)
        SELECT id, user_id, 'manual', 'running', now(), %(owner)s, now(), now() + interval '30 seconds', %(input)s
        FROM plan RETURNING id)
SELECT run.id, plan.steps FROM run, plan"""

FINISH_SQL = """SET LOCAL ROLE pilot_app; SELECT set_config('app.current_user_id', %(user_id)s, true);
WITH fin AS (UPDATE plan_runs SET status = 'success', finished_at = now(), step_results = %(results)s
             WHERE user_id = %(user_id)s AND id = %(run_id)s AND status = 'running'
             RETURNING *),
logs AS (INSERT INTO execution_logs (user_id, plan_id, run_id, step_index, step_id, provider, action, status,
                                     latency_ms, attempt, input, output)
         SELECT fin.user_id, fin.plan_id, fin.id, l.step_index, l.step_id, l.provider, l.action, 'success',
                l.latency_ms, 1, l.input, l.output
         FROM fin CROSS JOIN jsonb_to_recordset(%(logs)s) AS l(step_index int, step_id text, provider text,
              action text, latency_ms float8, input jsonb, output jsonb)
         RETURNING id, step_index, step_id, provider, action, status, latency_ms, output, "timestamp")
SELECT row_to_json(fin) AS run,
       (SELECT coalesce(json_agg(row_to_json(logs) ORDER BY logs.step_index), '[]') FROM logs) AS logs
FROM fin"""


class Pool:
    """``size`` autocommit connections, opened on first use in this process; callers wait for a free one."""

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn, self.size = dsn, size
        self._free: queue.LifoQueue[psycopg2.extensions.connection] = queue.LifoQueue()
        self._opened = 0
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        conn = None
        with self._lock:
            if self._free.empty() and self._opened < self.size:
                self._opened += 1
                conn = psycopg2.connect(self.dsn, application_name="pilot-floor")
                conn.autocommit = True
        if conn is None:
            conn = self._free.get(timeout=10)
        try:
            yield conn
        except psycopg2.Error:
            conn.close()
            with self._lock:
                self._opened -= 1
            raise
        else:
            self._free.put(conn)


app = Flask(__name__)
_pool = Pool(os.environ["DATABASE_URL"], int(os.environ.get("DB_POOL_SIZE") or 10))
_owner = f"floor:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _query(statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    with _pool.connection() as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall()


def _logic(step: dict[str, Any]) -> tuple[Any, float]:
    """What a logic/transform step yields here: its template, as is (Pilot renders it)."""
    started = time.perf_counter()
    data = (step.get("params") or {}).get("template")
    return data, round((time.perf_counter() - started) * 1000, 3)


@app.post("/floor/step")
def step() -> Response:
    body = request.get_json()
    step = body["step"]
    data, latency = _logic(step)
    _query(
        STEP_SQL,
        {
            "user_id": body["user_id"],
            "provider": step["provider"],
            "action": step["action"],
            "latency_ms": latency,
            "input": json.dumps(step.get("params") or {}),
            "output": json.dumps(data),
        },
    )
    return jsonify({"success": True, "data": data, "error": None, "latency_ms": latency})


@app.post("/floor/run")
def run() -> tuple[Response, int]:
    body = request.get_json()
    user_id, limit = body["user_id"], int(request.args.get("steps", "1000"))
    params = {"user_id": user_id, "plan_id": body["plan_id"], "owner": _owner}
    started = _query(START_SQL, {**params, "input": json.dumps(body.get("input") or {})})
    if not started:
        return jsonify({"error": {"code": "not_found", "message": "plan not found"}}), 404
    run_id, steps = started[0]
    results, logs = [], []
    for index, step in enumerate(steps[:limit]):
        data, latency = _logic(step)
        outcome = {"success": True, "data": data, "error": None, "latency_ms": latency}
        entry = {"index": index, "id": step.get("id"), "provider": step["provider"], "action": step["action"]}
        results.append({**entry, "status": "success", "result": outcome})
        logs.append(
            {
                "step_index": index,
                "step_id": step.get("id"),
                "provider": step["provider"],
                "action": step["action"],
                "latency_ms": latency,
                "input": step.get("params") or {},
                "output": data,
            }
        )
    finished = _query(
        FINISH_SQL, {"user_id": user_id, "run_id": run_id, "results": json.dumps(results), "logs": json.dumps(logs)}
    )
    run_row, log_rows = finished[0]
    return jsonify({**run_row, "logs": log_rows}), 200


@app.get("/floor/health")
def health() -> Response:
    _query("SELECT 1", {})
    return jsonify({"status": "ok"})
