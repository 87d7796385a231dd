"""The durable run queue (issue 9, items 1-3): enqueue, claim, cap, requeue, 429, wait.

The store-level cases run on a database of their own (``fresh_db``): claims cross users,
so a shared database would hand one test's runs to another.
"""

from __future__ import annotations

import select
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from pilot.data import store
from tests.conftest import make_app
from tests.test_scheduler import admin


def logic_plan(app: Any, user: str, steps: int = 1) -> dict[str, Any]:
    step = {"provider": "logic", "action": "transform", "params": {"template": "{{ input.x }}"}}
    response = app.test_client().post("/api/plans", json={"user_id": user, "name": "q", "steps": [step] * steps})
    assert response.status_code == 201, response.json
    return dict(response.json)


def test_enqueue_notifies_on_commit_and_claims_take_each_run_once_oldest_first(
    fresh_db: str, tmp_path: Path, fernet_key: str
) -> None:
    app = make_app(fresh_db, tmp_path, (fernet_key,))
    listener = psycopg2.connect(fresh_db)
    listener.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    try:
        with listener.cursor() as cur:
            cur.execute("LISTEN pilot_runs")
        plan = logic_plan(app, "alice")
        with app.db.transaction("alice") as cur:
            ids = [
                store.enqueue_run(cur, "alice", plan["id"], trigger="api", input_={"x": n})["id"]  # type: ignore[index]
                for n in range(3)
            ]
        assert select.select([listener], [], [], 5.0)[0], "no NOTIFY on pilot_runs after the commit"
        listener.poll()
        assert [n.channel for n in listener.notifies] == ["pilot_runs"]  # folded into one per transaction
        with app.db.transaction("alice") as cur:
            assert store.queued_count(cur, "alice") == 3
            row = store.get_run(cur, "alice", ids[0])
        assert row is not None and row["status"] == "queued" and row["owner_id"] is None and row["input"] == {"x": 0}
        with app.db.system_transaction() as cur:
            first = store.claim_runs(cur, "p1", 2, None, 30)
        with app.db.system_transaction() as cur:
            second = store.claim_runs(cur, "p2", 5, None, 30)
            third = store.claim_runs(cur, "p3", 5, None, 30)
        assert [r["id"] for r in first] == ids[:2] and [r["id"] for r in second] == ids[2:] and third == []
        assert all(r["status"] == "running" and r["attempts"] == 1 and r["claimed_at"] for r in first + second)
        assert first[0]["input"] == {"x": 0} and first[0]["owner_id"] == "p1"
    finally:
        listener.close()
        app.db.close()


def test_claims_respect_the_per_user_cap_across_claims(fresh_db: str, tmp_path: Path, fernet_key: str) -> None:
    app = make_app(fresh_db, tmp_path, (fernet_key,))
    try:
        burst, other = logic_plan(app, "alice"), logic_plan(app, "bob")
        with app.db.transaction("alice") as cur:
            alice = [store.enqueue_run(cur, "alice", burst["id"], trigger="api")["id"] for _ in range(5)]  # type: ignore[index]
        with app.db.transaction("bob") as cur:
            bob = store.enqueue_run(cur, "bob", other["id"], trigger="api")["id"]  # type: ignore[index]
        with app.db.system_transaction() as cur:
            claimed = [r["id"] for r in store.claim_runs(cur, "p1", 10, 2, 30)]
        assert claimed == [*alice[:2], bob]  # bob's newer run is not starved by alice's burst
        with app.db.system_transaction() as cur:
            assert store.claim_runs(cur, "p2", 10, 2, 30) == []  # alice still has 2 running
        admin(fresh_db, "UPDATE plan_runs SET status = 'success' WHERE id = %s", (alice[0],))
        with app.db.system_transaction() as cur:
            assert [r["id"] for r in store.claim_runs(cur, "p2", 10, 2, 30)] == [alice[2]]
    finally:
        app.db.close()


def test_queue_max_refuses_the_insert(fresh_db: str, tmp_path: Path, fernet_key: str) -> None:
    app = make_app(fresh_db, tmp_path, (fernet_key,))
    try:
        plan = logic_plan(app, "alice")
        with app.db.transaction("alice") as cur:
            assert store.enqueue_run(cur, "alice", plan["id"], trigger="api", queue_max=2) is not None
            assert store.enqueue_run(cur, "alice", plan["id"], trigger="api", queue_max=2) is not None
            assert store.enqueue_run(cur, "alice", plan["id"], trigger="api", queue_max=2) is None
            assert store.queued_count(cur, "alice") == 2
    finally:
        app.db.close()
