"""The lean run path (issue 9 item 5): round trips counted on the wire, and a log row per executed step.

Pilot talks to PostgreSQL through ``bench/pgproxy.py``, a loopback proxy that parses the
protocol: a round trip is one simple-query message, a transaction ends at each idle
ReadyForQuery. Counts are asserted as counts, never as times.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest
from flask.testing import FlaskClient

from bench.pgproxy import PgProxy, Transaction
from pilot.application import PilotApp
from pilot.data import store
from pilot.errors import DatabaseError
from tests.conftest import make_app, resp_json
from tests.fake_upstreams import Reply, WebhookReceiver

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def proxy(session_db: str) -> Iterator[PgProxy]:
    params = psycopg2.extensions.parse_dsn(session_db)
    counting = PgProxy((params.get("host") or "127.0.0.1", int(params.get("port") or 5432)), ROOT)
    yield counting
    counting.close()


@pytest.fixture
def lean_app(proxy: PgProxy, session_db: str, tmp_path: Path, fernet_key: str) -> Iterator[PilotApp]:
    dsn = psycopg2.extensions.make_dsn(
        session_db, host="127.0.0.1", port=proxy.port, sslmode="disable", gssencmode="disable"
    )
    app = make_app(dsn, tmp_path, (fernet_key,))
    yield app
    app.engine.shutdown(wait=True)
    app.db.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as fake:
        yield fake


def counted(proxy: PgProxy, action: Any) -> tuple[Any, list[Transaction]]:
    """``action()``'s result and the app's transactions it made (the proxy records each as it ends)."""
    time.sleep(0.05)
    started = time.monotonic()
    result = action()
    time.sleep(0.2)  # the proxy records a transaction when the server's ReadyForQuery passes it
    return result, [tx for tx in proxy.transactions(since=started) if tx.app == "pilot"]


def round_trips(transactions: list[Transaction]) -> int:
    return sum(tx.round_trips for tx in transactions)


def log_entry(step_id: str) -> dict[str, Any]:
    return {"provider": "logic", "action": "transform", "status": "success", "step_id": step_id}


def logic(step_id: str, template: Any = "ok") -> dict[str, Any]:
    return {"id": step_id, "provider": "logic", "action": "transform", "params": {"template": template}}


def webhook(step_id: str, url: str) -> dict[str, Any]:
    params = {"url": url, "json": {"n": 1}}
    return {"id": step_id, "provider": "webhook", "action": "request", "params": params, "retry": {"max_attempts": 1}}


def new_plan(app: PilotApp, user: str, steps: list[dict[str, Any]]) -> int:
    with app.db.transaction(user) as cur:
        plan = store.insert_plan(cur, user, {"name": "p", "steps": steps, "timezone": "UTC", "enabled": True})
    return int(plan["id"])


def execute_run(app: PilotApp, user: str, plan_id: int) -> dict[str, Any]:
    run = app.engine.create_run(user, plan_id, "manual")
    assert run is not None
    finished = app.engine.run(user, run["id"])
    assert finished is not None
    return finished


def logged(app: PilotApp, user: str, run_id: int) -> list[tuple[str, str]]:
    with app.db.transaction(user, single=True) as cur:
        return [(row["step_id"], row["status"]) for row in store.run_logs(cur, user, run_id)]


# --- one round trip per transaction -------------------------------------------------


def test_a_transaction_that_reads_nothing_is_one_round_trip(lean_app: PilotApp, proxy: PgProxy, user: str) -> None:
    def write() -> None:
        with lean_app.db.transaction(user) as cur:
            store.insert_logs(cur, user, [log_entry("a"), log_entry("b")])
            store.add_month_spend(cur, user, store.Decimal("0"))

    _, txs = counted(proxy, write)
    assert [(tx.round_trips, tx.labels) for tx in txs] == [
        (1, ("SET LOCAL ROLE + set_config + insert_log + insert_log + add_month_spend",))
    ]


def test_a_single_read_is_one_round_trip(lean_app: PilotApp, proxy: PgProxy, user: str) -> None:
    def read() -> list[dict[str, Any]]:
        with lean_app.db.transaction(user, single=True) as cur:
            return store.list_credentials(cur, user, "webhook")

    rows, txs = counted(proxy, read)
    assert rows == [] and [tx.round_trips for tx in txs] == [1]


def test_a_read_then_writes_is_two_round_trips_and_one_transaction(
    lean_app: PilotApp, proxy: PgProxy, user: str
) -> None:
    def read_then_write() -> None:
        with lean_app.db.transaction(user) as cur:
            assert store.get_plan(cur, user, 1) is None  # sent at once: BEGIN, role, identity, the read
            store.insert_logs(cur, user, [log_entry("a")])  # sent with the COMMIT

    _, txs = counted(proxy, read_then_write)
    assert [tx.round_trips for tx in txs] == [2]
    assert txs[0].labels[0].startswith("BEGIN + SET LOCAL ROLE + set_config") and txs[0].labels[1].endswith("COMMIT")


def test_single_refuses_a_second_statement_after_its_read(lean_app: PilotApp, user: str) -> None:
    with pytest.raises(RuntimeError, match="single-statement"), lean_app.db.transaction(user, single=True) as cur:
        store.list_credentials(cur, user)
        store.list_credentials(cur, user)


def test_statements_not_sent_yet_are_dropped_when_the_block_fails(lean_app: PilotApp, user: str) -> None:
    with pytest.raises(KeyError), lean_app.db.transaction(user) as cur:
        store.insert_logs(cur, user, [log_entry("never")])
        raise KeyError("the caller failed before the end")
    with pytest.raises(KeyError), lean_app.db.transaction(user) as cur:
        assert store.get_plan(cur, user, 1) is None  # the transaction is open on the server now
        store.insert_logs(cur, user, [log_entry("never")])
        raise KeyError("the caller failed before the end")
    with lean_app.db.transaction(user, single=True) as cur:
        assert store.list_logs(cur, user, limit=10, offset=0) == []  # neither was committed


def test_an_error_sent_with_the_commit_is_translated_and_the_connection_reused(lean_app: PilotApp, user: str) -> None:
    with pytest.raises(DatabaseError), lean_app.db.transaction(user) as cur:
        assert store.get_plan(cur, user, 1) is None
        cur.execute("SELECT * FROM no_such_table")  # fails on the server with the COMMIT
    for _ in range(lean_app.settings.db_pool_size + 1):  # every pooled connection is usable (no open transaction)
        with lean_app.db.transaction(user, single=True) as cur:
            cur.execute("SELECT current_user_id() AS uid, current_user AS role")
            assert dict(cur.fetchone() or {}) == {"uid": user, "role": "pilot_app"}


def test_execute_step_is_one_transaction_of_one_round_trip(lean_app: PilotApp, proxy: PgProxy, user: str) -> None:
    client: FlaskClient = lean_app.test_client()
    body = {"user_id": user, "step": logic("one", {"n": 1})}
    response, txs = counted(proxy, lambda: client.post("/api/execute-step", json=body))
    assert response.status_code == 200 and resp_json(response)["success"] is True
    assert [(tx.round_trips, tx.labels) for tx in txs] == [(1, ("SET LOCAL ROLE + set_config + insert_log",))]


# --- the step loop ---------------------------------------------------------------------


def test_logic_steps_cost_no_round_trip_of_their_own(lean_app: PilotApp, proxy: PgProxy, user: str) -> None:
    one = new_plan(lean_app, user, [logic("s0")])
    ten = new_plan(lean_app, user, [logic(f"s{i}", i) for i in range(10)])
    run_one, one_txs = counted(proxy, lambda: execute_run(lean_app, user, one))
    run_ten, ten_txs = counted(proxy, lambda: execute_run(lean_app, user, ten))
    assert run_one["status"] == run_ten["status"] == "success"
    assert (len(ten_txs), round_trips(ten_txs)) == (len(one_txs), round_trips(one_txs))
    assert round_trips(ten_txs) < 20  # was 94: BEGIN, role and COMMIT apart, a marker and a log row per step
    finish = [tx for tx in ten_txs if any("finish_run" in label for label in tx.labels)]
    assert [tx.labels for tx in finish] == [("SET LOCAL ROLE + set_config" + " + insert_log" * 10 + " + finish_run",)]
    assert logged(lean_app, user, run_ten["id"]) == [(f"s{i}", "success") for i in range(10)]


def test_a_side_effect_step_costs_its_marker_and_its_log_row(
    lean_app: PilotApp, proxy: PgProxy, user: str, receiver: WebhookReceiver
) -> None:
    pure = new_plan(lean_app, user, [logic("a"), logic("b"), logic("d")])
    mixed = new_plan(lean_app, user, [logic("a"), logic("b"), webhook("c", receiver.url + "/hook"), logic("d")])
    _, pure_txs = counted(proxy, lambda: execute_run(lean_app, user, pure))
    run, mixed_txs = counted(proxy, lambda: execute_run(lean_app, user, mixed))
    assert run["status"] == "success" and len(receiver.requests) == 1
    # c's marker (with a's and b's rows), the webhook credentials (read once per run), c's log row:
    assert round_trips(mixed_txs) - round_trips(pure_txs) == 3
    assert len(mixed_txs) - len(pure_txs) == 3
    marker = [tx for tx in mixed_txs if any("append_progress" in label for label in tx.labels)]
    assert [tx.labels for tx in marker] == [
        ("SET LOCAL ROLE + set_config + insert_log + insert_log + append_progress",)
    ]
    assert logged(lean_app, user, run["id"]) == [("a", "success"), ("b", "success"), ("c", "success"), ("d", "success")]
    assert [entry["id"] for entry in run["step_results"]] == ["a", "b", "c", "d"]


def test_while_a_side_effect_step_is_in_flight_only_the_steps_before_it_are_logged(
    lean_app: PilotApp, user: str, receiver: WebhookReceiver
) -> None:
    receiver.script(Reply(200, json={"ok": True}, delay=2.0))
    plan = new_plan(lean_app, user, [logic("a"), logic("b"), webhook("c", receiver.url + "/hook"), logic("d")])
    run = lean_app.engine.create_run(user, plan, "manual")
    assert run is not None
    worker = threading.Thread(target=lean_app.engine.run, args=(user, run["id"]))
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert receiver.requests  # c is in flight now: a process dying here ...
        assert logged(lean_app, user, run["id"]) == [("a", "success"), ("b", "success")]  # ... leaves a and b only
        with lean_app.db.transaction(user, single=True) as cur:
            row = store.get_run(cur, user, run["id"])
        assert row is not None and [(e["id"], e["status"]) for e in row["step_results"]] == [
            ("a", "success"),
            ("b", "success"),
            ("c", "running"),  # the reaper would name c as the step whose outcome is unknown
        ]
    finally:
        worker.join(timeout=20)
    assert logged(lean_app, user, run["id"]) == [("a", "success"), ("b", "success"), ("c", "success"), ("d", "success")]


def test_a_run_that_fails_mid_way_has_one_log_row_per_executed_step(
    lean_app: PilotApp, user: str, receiver: WebhookReceiver
) -> None:
    steps = [
        logic("a"),
        logic("b"),
        webhook("c", receiver.url + "/hook"),
        logic("d"),
        logic("e", "{{ steps.nope.data }}"),  # fails: no such step
        logic("f"),  # never runs
    ]
    run = execute_run(lean_app, user, new_plan(lean_app, user, steps))
    assert run["status"] == "error" and "step e failed" in run["error"]
    assert logged(lean_app, user, run["id"]) == [
        ("a", "success"),
        ("b", "success"),
        ("c", "success"),
        ("d", "success"),
        ("e", "error"),
    ]
    only_logic = execute_run(
        lean_app, user, new_plan(lean_app, user, [logic("a"), logic("e", "{{ nope }}"), logic("f")])
    )
    assert only_logic["status"] == "error"
    assert logged(lean_app, user, only_logic["id"]) == [("a", "success"), ("e", "error")]


def test_credentials_are_read_once_per_run_and_provider(
    lean_app: PilotApp, proxy: PgProxy, user: str, receiver: WebhookReceiver
) -> None:
    client = lean_app.test_client()
    stored = client.post(
        "/api/provider-credentials/webhook", json={"user_id": user, "credentials": {"hmac_secret": "s"}}
    )
    assert stored.status_code in (200, 201), stored.json
    plan = new_plan(lean_app, user, [webhook(f"w{i}", receiver.url + "/hook") for i in range(3)])
    run, txs = counted(proxy, lambda: execute_run(lean_app, user, plan))
    assert run["status"] == "success" and len(receiver.requests) == 3
    assert all("X-Pilot-Signature" in request.headers for request in receiver.requests)  # each step signed
    reads = [label for tx in txs for label in tx.labels if "list_credentials" in label]
    assert len(reads) == 1


def test_a_plan_run_through_the_queue_with_wait_is_two_round_trips(
    lean_app: PilotApp, proxy: PgProxy, user: str
) -> None:
    """``run?wait=true``, nothing queued: the insert that starts the run (the plan checked and its steps handed
    back in it, migration 021), then the finish (with the logs)."""
    plan = new_plan(lean_app, user, [logic(f"s{i}", i) for i in range(3)])
    client = lean_app.test_client()

    def run() -> Any:
        return client.post(f"/api/plans/{plan}/run?wait=true", json={"user_id": user, "input": {"n": 1}})

    first, _ = counted(proxy, run)  # the first answer learns the plan version's number (it never changes)
    answer, txs = counted(proxy, run)
    assert first.status_code == answer.status_code == 200, answer.json
    assert answer.json["status"] == "success" and answer.json["plan_version"] == 1 and len(answer.json["logs"]) == 3
    labels = [tx.labels for tx in txs]
    assert [(tx.round_trips, len(tx.labels)) for tx in txs] == [(1, 1)] * 2, labels
    assert labels == [
        ("SET LOCAL ROLE + set_config + set_config + enqueue_run",),  # the second: quiet_enqueue (no NOTIFY)
        ("SET LOCAL ROLE + set_config" + " + insert_log" * 3 + " + finish_run",),
    ]
