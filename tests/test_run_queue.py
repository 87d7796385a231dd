"""The durable run queue (issue 9, items 1-3): enqueue, claim, cap, requeue, 429, wait.

The store-level cases run on a database of their own (``fresh_db``): claims cross users,
so a shared database would hand one test's runs to another.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from pilot.application import PilotApp
from pilot.data import store
from tests.conftest import make_app, resp_json
from tests.fake_upstreams import RecordedRequest, Reply, WebhookReceiver
from tests.test_metrics_endpoint import scrape, value
from tests.test_scheduler import admin, rows, wait_for


class SlowReceiver(WebhookReceiver):
    """A webhook receiver that answers after ``?delay=`` seconds (0 by default)."""

    def reply_for(self, behaviour: str, request: RecordedRequest) -> Reply:
        return Reply(json={"received": True}, delay=float(request.query.get("delay", ["0"])[0]))


def logic_plan(app: Any, user: str, steps: int = 1) -> dict[str, Any]:
    step = {"provider": "logic", "action": "transform", "params": {"template": "{{ input.x }}"}}
    response = app.test_client().post("/api/plans", json={"user_id": user, "name": "q", "steps": [step] * steps})
    assert response.status_code == 201, response.json
    return dict(response.json)


def webhook_plan(app: Any, user: str, url: str) -> dict[str, Any]:
    step = {"id": "hook", "provider": "webhook", "action": "request", "params": {"url": url, "json": "{{ input }}"}}
    response = app.test_client().post("/api/plans", json={"user_id": user, "name": "hook", "steps": [step]})
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
        # The queue's wake-up (empty payload) is folded into one per transaction; the run events'
        # notifications (one per row, JSON naming the run) have their own channel (migration 019).
        assert [(n.channel, n.payload) for n in listener.notifies] == [("pilot_runs", "")]
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


def reference_claim(queued: list[tuple[int, str]], running: dict[str, int], limit: int, cap: int) -> list[int]:
    """What a claim must take, written plainly: the oldest queued runs whose user is under the cap."""
    taken: list[int] = []
    counts = dict(running)
    for run_id, user in sorted(queued):
        if len(taken) == limit:
            break
        if counts.get(user, 0) < cap:
            counts[user] = counts.get(user, 0) + 1
            taken.append(run_id)
    return taken


def test_claims_match_a_plain_reference_whoever_holds_the_head_of_the_queue(
    fresh_db: str, tmp_path: Path, fernet_key: str
) -> None:
    """The claim ranks only the oldest rows unless capped users fill them; both ways take what the reference takes."""
    app = make_app(fresh_db, tmp_path, (fernet_key,))
    try:
        plans = {user: logic_plan(app, user)["id"] for user in ("alice", "bob", "carol")}
        # alice holds the head of the queue with 150 runs (more than a claim of 1..8 ranks on its fast path),
        # then bob and carol interleave; alice and carol already have runs executing.
        order = ["alice"] * 150 + ["bob", "carol"] * 20 + ["alice"] * 5
        for user in order:
            admin(
                fresh_db,
                "INSERT INTO plan_runs (plan_id, user_id, trigger, status) VALUES (%s, %s, 'api', 'queued')",
                (plans[user], user),
            )
        admin(
            fresh_db,
            "UPDATE plan_runs SET status = 'running' WHERE id IN (SELECT min(id) FROM plan_runs GROUP BY user_id)"
            " AND user_id IN ('alice', 'carol')",
        )
        for claim, (limit, cap) in enumerate([(1, 1), (3, 2), (8, 3), (5, 40), (8, 1), (4, 1000)]):
            table = rows(fresh_db, "SELECT id, user_id, status FROM plan_runs ORDER BY id")
            queued = [(r[0], r[1]) for r in table if r[2] == "queued"]
            running: dict[str, int] = {}
            for r in table:
                if r[2] == "running":
                    running[r[1]] = running.get(r[1], 0) + 1
            expected = reference_claim(queued, running, limit, cap)
            with app.db.system_transaction() as cur:
                got = store.claim_runs(cur, f"p{claim}", limit, cap, 30)
            assert [r["id"] for r in got] == expected, (limit, cap)
            assert all(r["status"] == "running" and not r["late"] and r["plan_exists"] for r in got)
    finally:
        app.db.close()


def test_a_claim_hands_over_the_steps_of_the_runs_plan_version(fresh_db: str, tmp_path: Path, fernet_key: str) -> None:
    app = make_app(fresh_db, tmp_path, (fernet_key,))
    try:
        plan = logic_plan(app, "alice", steps=2)
        with app.db.transaction("alice") as cur:
            first = store.enqueue_run(cur, "alice", plan["id"], trigger="api")
        changed = app.test_client().patch(
            f"/api/plans/{plan['id']}", json={"user_id": "alice", "steps": plan["steps"][:1]}
        )
        assert changed.status_code == 200, changed.json
        with app.db.transaction("alice") as cur:
            second = store.enqueue_run(cur, "alice", plan["id"], trigger="api")
        assert first is not None and second is not None
        with app.db.system_transaction() as cur:
            got = {r["id"]: r for r in store.claim_runs(cur, "p1", 10, None, 30)}
        assert len(got[first["id"]]["steps"]) == 2 and len(got[second["id"]]["steps"]) == 1
        assert got[first["id"]]["plan_version_id"] != got[second["id"]]["plan_version_id"]
    finally:
        app.db.close()


def test_a_scheduled_run_queued_past_the_lateness_limit_is_skipped_late_not_started(
    fresh_db: str, tmp_path: Path, fernet_key: str
) -> None:
    """Issue 9 item 6 at claim time: a slot that waited in the queue too long is recorded, never started late."""
    app = make_app(fresh_db, tmp_path, (fernet_key,), max_lateness_seconds=30)
    try:
        plan = logic_plan(app, "alice")
        made = []
        for trigger, slot_age, age in (("schedule", 40, 40), ("api", None, 40), ("schedule", 0, 5)):
            made.append(
                rows(
                    fresh_db,
                    "INSERT INTO plan_runs (plan_id, user_id, trigger, scheduled_for, status, input, created_at)"
                    " VALUES (%s, 'alice', %s, now() - make_interval(secs => %s), 'queued', '{\"x\": 1}',"
                    " now() - make_interval(secs => %s)) RETURNING id",
                    (plan["id"], trigger, slot_age, age),
                )[0][0]
            )
        stale, old_api, fresh = made
        before = value(scrape(app.test_client()), "pilot_scheduler_firings_total", outcome="skipped_late")
        assert app.engine.claim_now() == 2  # the api run and the fresh slot start; the stale slot does not
        with app.db.transaction("alice") as cur:
            runs = {run_id: store.get_run(cur, "alice", run_id) for run_id in made}
        skipped = runs[stale]
        assert skipped is not None and skipped["status"] == "skipped" and skipped["reason"] == "late"
        assert skipped["started_at"] is None and skipped["finished_at"] is not None
        assert "SCHEDULER_MAX_LATENESS_SECONDS (30 s)" in skipped["error"]
        assert value(scrape(app.test_client()), "pilot_scheduler_firings_total", outcome="skipped_late") == before + 1
        started = (old_api, fresh)
        assert wait_for(lambda: all(app_run(app, i)["status"] not in ("queued", "running") for i in started), 20)
        assert [app_run(app, i)["status"] for i in started] == ["success"] * 2
        with app.db.transaction("alice") as cur:
            assert store.run_logs(cur, "alice", stale) == []  # nothing of it ran
    finally:
        app.engine.shutdown()
        app.db.close()


def app_run(app: Any, run_id: int) -> dict[str, Any]:
    with app.db.transaction("alice") as cur:
        run = store.get_run(cur, "alice", run_id)
    assert run is not None
    return run


def test_a_run_claimed_where_it_was_queued_wakes_no_claimer_and_one_left_queued_wakes_them(
    fresh_db: str, tmp_path: Path, fernet_key: str
) -> None:
    """``?wait=true`` queues quietly and claims at once; only a run it could not take wakes the other processes."""
    app = make_app(fresh_db, tmp_path, (fernet_key,), max_running_per_user=1, run_wait_seconds=0.5)
    listener = psycopg2.connect(fresh_db)
    listener.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    try:
        with listener.cursor() as cur:
            cur.execute("LISTEN pilot_runs")
        plan = logic_plan(app, "alice")
        client = app.test_client()
        done = client.post(f"/api/plans/{plan['id']}/run?wait=true", json={"user_id": "alice", "input": {"x": 1}})
        assert done.status_code == 200 and resp_json(done)["status"] == "success", done.json
        assert not select.select([listener], [], [], 0.5)[0], "a run claimed where it was queued woke the claimers"
        # alice's one place is taken by a run another process holds: the next run stays queued, and says so.
        admin(
            fresh_db,
            "INSERT INTO plan_runs (plan_id, user_id, trigger, status, owner_id)"
            " VALUES (%s, 'alice', 'api', 'running', 'x')",
            (plan["id"],),
        )
        waited = client.post(f"/api/plans/{plan['id']}/run?wait=true", json={"user_id": "alice", "input": {"x": 1}})
        assert waited.status_code == 202 and resp_json(waited)["status"] == "queued", waited.json
        assert select.select([listener], [], [], 5.0)[0], "a run left queued woke no claimer"
        listener.poll()
        assert [(n.channel, n.payload) for n in listener.notifies] == [("pilot_runs", "")]
    finally:
        listener.close()
        app.engine.shutdown()
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


def test_a_dead_run_that_did_only_pure_work_is_requeued_and_any_other_interrupted(
    fresh_db: str, tmp_path: Path, fernet_key: str
) -> None:
    app = make_app(fresh_db, tmp_path, (fernet_key,), run_lease_seconds=2)
    try:
        plan = logic_plan(app, "alice")
        with app.db.transaction("alice") as cur:
            ids = [store.enqueue_run(cur, "alice", plan["id"], trigger="api")["id"] for _ in range(4)]  # type: ignore[index]
        with app.db.system_transaction() as cur:
            assert len(store.claim_runs(cur, "dead-host:1:x", 4, None, 2)) == 4
        pure_done = {"index": 0, "provider": "logic", "action": "transform", "pure": True, "status": "success"}
        pure_running = {**pure_done, "index": 1, "status": "running"}
        webhook_running = {"index": 1, "id": "hook", "provider": "webhook", "action": "request", "status": "running"}
        with app.db.transaction("alice") as cur:
            # ids[0]: claimed, nothing begun; ids[1]: only logic in flight; ids[2]: a webhook in flight;
            # ids[3]: only logic, but claimed for the third time already
            store.progress_run(cur, "alice", ids[1], [pure_done, pure_running])
            store.progress_run(cur, "alice", ids[2], [pure_done, {**webhook_running, "pure": False}])
            store.progress_run(cur, "alice", ids[3], [pure_done, pure_running])
            store.insert_log(
                cur, "alice", {"run_id": ids[1], "provider": "logic", "action": "transform", "status": "success"}
            )
        admin(fresh_db, "UPDATE plan_runs SET attempts = 3 WHERE id = %s", (ids[3],))
        admin(
            fresh_db,
            "UPDATE plan_runs SET heartbeat_at = now() - interval '10 seconds', "
            "lease_expires_at = now() - interval '5 seconds'",
        )
        assert app.engine.reap() == 2
        with app.db.transaction("alice") as cur:
            runs = {run_id: store.get_run(cur, "alice", run_id) for run_id in ids}
            logs = store.run_logs(cur, "alice", ids[1])
        assert [runs[i]["status"] for i in ids] == ["queued", "queued", "interrupted", "interrupted"]  # type: ignore[index]
        assert runs[ids[0]]["owner_id"] is None and runs[ids[1]]["step_results"] == []  # type: ignore[index]
        assert logs == []  # it runs again from its first step: the log rows of the first attempt are gone
        assert "hook (webhook.request) was in flight" in runs[ids[2]]["error"]  # type: ignore[index]
        with app.db.system_transaction() as cur:
            again = store.claim_runs(cur, "p2", 10, None, 30)
        assert [(r["id"], r["attempts"]) for r in again] == [(ids[0], 2), (ids[1], 2)]
        with app.db.transaction("alice") as cur:  # the dead process, were it only paused, can no longer end it
            assert store.finish_run(cur, "alice", ids[0], "success", [], None, "dead-host:1:x") is None
            assert store.finish_run(cur, "alice", ids[0], "success", [], None, "p2") is not None
    finally:
        app.db.close()


def test_queue_full_answers_429_with_retry_after(fresh_db: str, tmp_path: Path, fernet_key: str) -> None:
    app = make_app(fresh_db, tmp_path, (fernet_key,), run_queue_max_per_user=2)
    try:
        plan = logic_plan(app, "alice")
        other = logic_plan(app, "bob")
        app.engine.pause_claiming()  # nothing is claimed: the runs stay queued
        client = app.test_client()
        for _ in range(2):
            assert client.post(f"/api/plans/{plan['id']}/run", json={"user_id": "alice"}).status_code == 202
        refused = client.post(f"/api/plans/{plan['id']}/run", json={"user_id": "alice"})
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        error = refused.json["error"]  # type: ignore[index]
        assert error["code"] == "run_queue_full" and "RUN_QUEUE_MAX_PER_USER" in error["message"]
        assert client.post(f"/api/plans/{other['id']}/run", json={"user_id": "bob"}).status_code == 202  # per user
        with app.db.transaction("alice") as cur:
            assert store.queued_count(cur, "alice") == 2  # the refused run was not recorded
    finally:
        app.db.close()


def test_wait_gives_up_after_run_wait_seconds_with_202_and_the_run_to_poll(
    fresh_db: str, tmp_path: Path, fernet_key: str
) -> None:
    app = make_app(fresh_db, tmp_path, (fernet_key,), run_wait_seconds=0.5)
    try:
        with SlowReceiver() as receiver:
            plan = webhook_plan(app, "alice", receiver.url + "/hook?delay=3")
            client = app.test_client()
            started = time.monotonic()
            response = client.post(f"/api/plans/{plan['id']}/run?wait=true", json={"user_id": "alice"})
            assert response.status_code == 202, response.json
            assert time.monotonic() - started < 2.5  # it did not wait for the 3 s step
            run = response.json
            assert run is not None and run["status"] in ("queued", "running")

            def status() -> str:
                return str(client.get(f"/api/runs/{run['id']}?user_id=alice").json["status"])  # type: ignore[index]

            assert wait_for(lambda: status() == "success", 20.0)
            fast = webhook_plan(app, "alice", receiver.url + "/hook")
            done = client.post(f"/api/plans/{fast['id']}/run?wait=true", json={"user_id": "alice"})
            assert done.status_code == 200 and done.json["status"] == "success"  # type: ignore[index]
    finally:
        app.engine.shutdown(wait=True)
        app.db.close()


def test_input_reaches_the_steps_of_an_accepted_run(fresh_db: str, tmp_path: Path, fernet_key: str) -> None:
    app = make_app(fresh_db, tmp_path, (fernet_key,))
    try:
        plan = logic_plan(app, "alice")
        client = app.test_client()
        response = client.post(f"/api/plans/{plan['id']}/run", json={"user_id": "alice", "input": {"x": "hello"}})
        assert response.status_code == 202
        run_id = response.json["id"]  # type: ignore[index]

        def finished() -> Any:
            run = client.get(f"/api/runs/{run_id}?user_id=alice").json
            return run if run["status"] not in ("queued", "running") else None  # type: ignore[index]

        run = wait_for(finished, 15.0)
        assert run and run["status"] == "success", run
        assert run["step_results"][0]["result"]["data"] == "hello"
    finally:
        app.engine.shutdown(wait=True)
        app.db.close()


def test_one_users_burst_does_not_hold_back_another_users_run(fresh_db: str, tmp_path: Path, fernet_key: str) -> None:
    app = make_app(fresh_db, tmp_path, (fernet_key,), run_workers=4, max_running_per_user=2)
    app.engine.start_claiming()  # this test asks for the serving claimer thread
    try:
        with SlowReceiver() as receiver:
            burst = webhook_plan(app, "alice", receiver.url + "/hook?delay=4")
            quick = logic_plan(app, "bob")
            client = app.test_client()
            alice = [client.post(f"/api/plans/{burst['id']}/run", json={"user_id": "alice"}).json for _ in range(6)]
            bob = client.post(f"/api/plans/{quick['id']}/run?wait=true", json={"user_id": "bob", "input": {"x": 1}})
            assert bob.status_code == 200 and bob.json["status"] == "success"  # type: ignore[index]
            with app.db.transaction("alice") as cur:
                states = [store.get_run(cur, "alice", run["id"])["status"] for run in alice]  # type: ignore[index]
            # bob did not wait for a worker: none of alice's 4 s runs had ended, and most still wait their turn
            assert "success" not in states and states.count("running") <= 2 and states.count("queued") >= 4
            assert wait_for(lambda: len(receiver.requests) == 6, 40.0)
    finally:
        app.engine.shutdown(wait=True)
        app.db.close()


# --- a ?wait=true run started by its own insert (migration 021) -------------------------


@contextmanager
def serving(dsn: str, tmp_path: Path, fernet_key: str, **overrides: Any) -> Iterator[PilotApp]:
    """An app for one test, its runs drained and its pool closed at the end."""
    app = make_app(dsn, tmp_path, (fernet_key,), **overrides)
    try:
        yield app
    finally:
        app.engine.shutdown(wait=True)
        app.db.close()


def insert_started(app: PilotApp, plan_id: int, owner: str, cap: int) -> dict[str, Any] | None:
    """alice's run of ``plan_id``, inserted started for ``owner`` if pilot_may_start_now agrees (else queued)."""
    with app.db.transaction("alice") as cur:
        return store.enqueue_run(
            cur, "alice", plan_id, trigger="api", start_owner=owner, lease_seconds=30, max_per_user=cap
        )


def test_a_waited_run_starts_in_its_insert_like_a_claim_when_nothing_is_queued(
    fresh_db: str, tmp_path: Path, fernet_key: str
) -> None:
    """Nothing queued, alice under the cap: the insert starts the run for this process, as a claim would."""
    from execution_engine import process_owner_id

    with serving(fresh_db, tmp_path, fernet_key) as app:
        plan = logic_plan(app, "alice")
        run = app.engine.enqueue("alice", plan["id"], "api", {"x": 5}, claim_here=True)
        assert run["status"] == "running" and run["attempts"] == 1 and run["owner_id"] == process_owner_id()
        assert run["claimed_at"] == run["started_at"] == run["heartbeat_at"]
        assert run["lease_expires_at"] - run["started_at"] == timedelta(seconds=app.settings.run_lease_seconds)
        assert "steps" not in run and "plan_exists" not in run  # what the claim hands over stays in the engine
        done = app_run(app, run["id"])  # pure steps: executed in the caller's thread before enqueue returned
        assert done["status"] == "success" and done["attempts"] == 1
        assert done["step_results"][0]["result"]["data"] == 5


def test_a_waited_run_queues_behind_any_queued_run_and_behind_the_cap(
    fresh_db: str, tmp_path: Path, fernet_key: str
) -> None:
    """Oldest first still holds: bob's older queued run starts before alice's waited one, which queues."""
    with serving(fresh_db, tmp_path, fernet_key, run_workers=1, max_running_per_user=1) as app:
        mine, theirs = logic_plan(app, "alice"), logic_plan(app, "bob")
        with app.db.transaction("bob") as cur:
            older = store.enqueue_run(cur, "bob", theirs["id"], trigger="api", input_={"x": 0})
        assert older is not None and older["status"] == "queued"
        run = app.engine.enqueue("alice", mine["id"], "api", {"x": 1}, claim_here=True)
        assert run["status"] == "queued" and run["attempts"] == 0

        def ended() -> list[tuple[Any, ...]]:
            found = rows(
                fresh_db,
                "SELECT id, status, attempts, started_at FROM plan_runs WHERE id IN (%s, %s) ORDER BY started_at",
                (older["id"], run["id"]),
            )
            return found if all(status == "success" for _, status, _, _ in found) else []

        order = wait_for(ended, 15.0)
        assert [(run_id, attempts) for run_id, _, attempts, _ in order] == [(older["id"], 1), (run["id"], 1)], order

        # alice's one place is held by a run another process executes: her next waited run queues.
        admin(
            fresh_db,
            "INSERT INTO plan_runs (plan_id, user_id, trigger, status, owner_id)"
            " VALUES (%s, 'alice', 'api', 'running', 'x')",
            (mine["id"],),
        )
        capped = app.engine.enqueue("alice", mine["id"], "api", {"x": 2}, claim_here=True)
        assert capped["status"] == "queued" and app_run(app, capped["id"])["status"] == "queued"


def test_a_starting_insert_waits_for_another_start_to_commit_before_it_counts_the_cap(
    fresh_db: str, tmp_path: Path, fernet_key: str
) -> None:
    """The decision is taken under the claimers' lock: a start not yet committed holds back the next one."""
    with serving(fresh_db, tmp_path, fernet_key) as app:
        plan = logic_plan(app, "alice")
        second: dict[str, Any] = {}
        with app.db.transaction("alice") as cur:
            first = store.enqueue_run(
                cur, "alice", plan["id"], trigger="api", start_owner="first", lease_seconds=30, max_per_user=1
            )
            assert first is not None and first["status"] == "running" and first["steps"]
            racer = threading.Thread(
                target=lambda: second.update(row=insert_started(app, plan["id"], "second", 1)), daemon=True
            )
            racer.start()
            racer.join(0.5)
            assert racer.is_alive(), "a second start did not wait for the first to commit"
        racer.join(10.0)
        assert not racer.is_alive() and second["row"]["status"] == "queued" and second["row"]["owner_id"] is None
        assert "steps" not in second["row"]


def test_a_start_refused_for_a_queue_takes_no_lock_while_it_commits_queued(
    fresh_db: str, tmp_path: Path, fernet_key: str
) -> None:
    """A refused start's row commits with its WAL flush: it must not hold the claimers' lock meanwhile, so the
    refusals a queue or the cap already explain are decided before the lock (and here, despite a holder)."""
    holder = psycopg2.connect(fresh_db)
    try:
        with serving(fresh_db, tmp_path, fernet_key) as app:
            plan = logic_plan(app, "alice")
            with app.db.transaction("alice") as cur:
                assert store.enqueue_run(cur, "alice", plan["id"], trigger="api") is not None  # something queued
            with holder.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(5049544, 13)")  # a claim in progress, say
            answer: dict[str, Any] = {}
            racer = threading.Thread(
                target=lambda: answer.update(row=insert_started(app, plan["id"], "me", 5)), daemon=True
            )
            racer.start()
            racer.join(10.0)
            assert not racer.is_alive(), "a start refused for the queue waited for the claimers' lock"
            assert answer["row"]["status"] == "queued"
            holder.rollback()
    finally:
        holder.close()


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of [start, end) intervals that overlap at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in events:  # an end sorts before a start at the same instant (-1 < 1)
        current += step
        most = max(most, current)
    return most


def test_waited_runs_started_by_their_inserts_keep_the_per_user_cap_exact(
    fresh_db: str, tmp_path: Path, fernet_key: str
) -> None:
    """Eight waited runs posted at once, cap 2, eight free workers: never more than 2 running, all done once.
    No claimer thread: the runs the cap holds back are claimed as each finish frees a place (user_queued)."""
    settings = {"run_workers": 8, "max_running_per_user": 2, "db_pool_size": 12}
    with serving(fresh_db, tmp_path, fernet_key, **settings) as app, SlowReceiver() as receiver:
        plan = webhook_plan(app, "alice", receiver.url + "/hook?delay=0.3")
        gate = threading.Barrier(8)

        def post(_: int) -> tuple[int, str]:
            client = app.test_client()
            gate.wait(timeout=10)
            response = client.post(f"/api/plans/{plan['id']}/run?wait=true", json={"user_id": "alice"})
            return response.status_code, str((response.json or {}).get("status"))

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(post, range(8)))
        assert answers == [(200, "success")] * 8, answers
        ran = rows(
            fresh_db, "SELECT started_at, finished_at, attempts FROM plan_runs WHERE plan_id = %s", (plan["id"],)
        )
        assert len(ran) == 8 and {attempts for _, _, attempts in ran} == {1}
        assert most_at_once([(start, end) for start, end, _ in ran]) == 2
        assert len(receiver.requests) == 8


def test_a_wait_that_gives_up_on_a_run_started_here_renews_its_lease_before_the_202(
    fresh_db: str, tmp_path: Path, fernet_key: str
) -> None:
    """The starting insert does not wait for its WAL flush; the lease renewal's synchronous commit does."""
    with serving(fresh_db, tmp_path, fernet_key, run_wait_seconds=0.3) as app, SlowReceiver() as receiver:
        plan = webhook_plan(app, "alice", receiver.url + "/hook?delay=2")
        response = app.test_client().post(f"/api/plans/{plan['id']}/run?wait=true", json={"user_id": "alice"})
        assert response.status_code == 202 and resp_json(response)["status"] == "running", response.json
        run = app_run(app, resp_json(response)["id"])
        lease = timedelta(seconds=app.settings.run_lease_seconds)
        assert run["lease_expires_at"] - run["started_at"] > lease  # renewed after the insert set it
        assert wait_for(lambda: app_run(app, run["id"])["status"] == "success", 15.0)
