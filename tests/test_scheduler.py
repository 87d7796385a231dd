"""The scheduler against a real PostgreSQL: exactly-once claims, overlap, misfires, sync, leases, shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from pilot.application import PilotApp
from pilot.data import store
from scheduler import PilotScheduler, build_trigger, fire_times, slot
from tests.conftest import make_app, resp_json
from tests.fake_upstreams import Reply, WebhookReceiver

TICK = {"provider": "logic", "action": "transform", "params": {"template": "tick"}}


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy or ``timeout`` s pass; return its last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


@pytest.fixture
def apps(fresh_db: str, tmp_path: Path, fernet_key: str) -> Iterator[Callable[..., PilotApp]]:
    """Build apps on one fresh database (so whole-table checks see only this test); closes them after."""
    built: list[PilotApp] = []

    def build(**overrides: Any) -> PilotApp:
        config = {"scheduler_enabled": True, "run_lease_seconds": 3, **overrides}
        app = make_app(fresh_db, tmp_path, (fernet_key,), **config)
        built.append(app)
        return app

    yield build
    for app in built:
        if app.scheduler is not None:
            app.scheduler.stop(timeout=5)
        app.engine.shutdown(wait=True)
        app.db.close()


def create_plan(app: PilotApp, user: str, schedule: dict[str, Any], steps: list | None = None) -> dict[str, Any]:
    response = app.test_client().post(
        "/api/plans", json={"user_id": user, "name": "sched", "steps": steps or [TICK], "schedule": schedule}
    )
    assert response.status_code == 201, response.json
    return resp_json(response)


def runs_of(app: PilotApp, user: str, plan_id: int) -> list[dict[str, Any]]:
    with app.db.transaction(user) as cur:
        return list(reversed(store.list_runs(cur, user, plan_id, limit=10_000, offset=0)))


def admin(dsn: str, statement: str, params: tuple = ()) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
    finally:
        conn.close()


def test_concurrent_firings_of_one_slot_run_exactly_once(apps: Callable[..., PilotApp], user: str) -> None:
    instances = [apps() for _ in range(4)]
    schedulers = [PilotScheduler(app) for app in instances]
    plan = create_plan(instances[0], user, {"interval_seconds": 60})
    now = datetime.now(UTC)
    slots = fire_times(build_trigger({"interval_seconds": 60}), now - timedelta(minutes=3), now)[-3:]
    won: list[Any] = []
    for moment in slots:  # every process fires the same slot at the same moment
        barrier = threading.Barrier(len(schedulers))

        def fire(scheduler: PilotScheduler, moment: datetime = moment, barrier: threading.Barrier = barrier) -> None:
            barrier.wait(timeout=10)
            won.append(scheduler.fire(plan["id"], user, [moment], now=moment + timedelta(milliseconds=5)))

        threads = [threading.Thread(target=fire, args=(s,)) for s in schedulers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        for app in instances:  # the run finishes before the next slot, as a 60 s interval allows
            app.engine.drain(10)
    assert len([w for w in won if w is not None]) == len(slots)
    runs = runs_of(instances[0], user, plan["id"])
    assert sorted(r["scheduled_for"] for r in runs) == slots
    assert {r["status"] for r in runs} == {"success"} and {r["trigger"] for r in runs} == {"schedule"}


def test_a_plan_still_running_is_not_started_twice(apps: Callable[..., PilotApp], user: str) -> None:
    app = apps()
    scheduler = PilotScheduler(app)
    plan = create_plan(app, user, {"interval_seconds": 1})
    with app.db.transaction(user) as cur:
        running = store.insert_run(cur, user, plan["id"], trigger="manual", owner_id="someone")
    assert running is not None
    now = slot(datetime.now(UTC))
    assert scheduler.fire(plan["id"], user, [now], now=now) is None
    runs = {r["id"]: r for r in runs_of(app, user, plan["id"])}
    skipped = [r for r in runs.values() if r["status"] == "skipped"]
    assert len(skipped) == 1 and skipped[0]["scheduled_for"] == now
    assert f"run {running['id']}" in skipped[0]["error"]


def test_downtime_gives_one_catch_up_run_and_records_the_rest_skipped(
    apps: Callable[..., PilotApp], user: str, fresh_db: str
) -> None:
    a, b = apps(), apps()
    plan = create_plan(a, user, {"interval_seconds": 60})
    now = datetime.now(UTC)
    # The schedule was set 5 minutes ago and nothing ran since: 4-5 slots were missed.
    admin(
        fresh_db, "UPDATE execution_plans SET updated_at = %s WHERE id = %s", (now - timedelta(minutes=5), plan["id"])
    )
    rows = [r for r in PilotScheduler(a)._list_schedules(plan["id"])]
    missed = fire_times(build_trigger({"interval_seconds": 60}), now - timedelta(minutes=5), now)
    assert len(missed) >= 4
    results = []
    threads = [
        threading.Thread(target=lambda s=s: results.append(s.catch_up(rows[0], now)))
        for s in (PilotScheduler(a), PilotScheduler(b))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len([r for r in results if r is not None]) == 1  # one process won the catch-up
    a.engine.drain(10)
    b.engine.drain(10)
    runs = runs_of(a, user, plan["id"])
    assert [r["scheduled_for"] for r in runs if r["status"] == "success"] == [missed[-1]]
    assert sorted(r["scheduled_for"] for r in runs if r["status"] == "skipped") == missed[:-1]
    assert all("missed" in r["error"] for r in runs if r["status"] == "skipped")


def test_missed_slots_older_than_the_grace_window_are_only_recorded(apps: Callable[..., PilotApp], user: str) -> None:
    app = apps(misfire_grace_seconds=30)
    scheduler = PilotScheduler(app)
    plan = create_plan(app, user, {"interval_seconds": 60})
    now = slot(datetime.now(UTC))
    due = [now - timedelta(minutes=3), now - timedelta(minutes=2)]
    assert scheduler.fire(plan["id"], user, due, now=now) is None
    assert [r["status"] for r in runs_of(app, user, plan["id"])] == ["skipped", "skipped"]


def test_two_started_schedulers_run_every_slot_once(apps: Callable[..., PilotApp], user: str) -> None:
    a, b = apps(), apps()
    plans = [create_plan(a, user, {"interval_seconds": 1}) for _ in range(3)]
    started = datetime.now(UTC)
    for app in (a, b):
        scheduler = PilotScheduler(app)
        scheduler.start()
        app.scheduler = scheduler
    time.sleep(3.2)
    for app in (a, b):
        assert app.scheduler is not None
        app.scheduler.stop(timeout=5)
    stopped = datetime.now(UTC)
    for plan in plans:
        runs = runs_of(a, user, plan["id"])
        times = [r["scheduled_for"] for r in runs]
        assert len(times) == len(set(times)), "a slot ran twice"
        expected = fire_times(
            build_trigger({"interval_seconds": 1}), started + timedelta(seconds=1), stopped - timedelta(seconds=1)
        )
        assert set(expected) <= set(times), "a slot was missed"
        assert all(r["status"] in ("success", "skipped") for r in runs)
        lags = [(r["started_at"] - r["scheduled_for"]).total_seconds() for r in runs if r["started_at"]]
        assert lags and max(lags) < 1.0


def test_schedule_changes_reach_another_process_within_two_seconds(apps: Callable[..., PilotApp], user: str) -> None:
    a, b = apps(), apps()
    watcher = PilotScheduler(b)
    watcher.start()
    b.scheduler = watcher
    plan = create_plan(a, user, {"interval_seconds": 3600})
    job_id = f"plan-{plan['id']}"

    def job() -> Any:
        return watcher._aps.get_job(job_id)

    assert wait_for(job, 2.0), "new schedule did not reach the other process"
    client = a.test_client()
    client.patch(f"/api/plans/{plan['id']}", json={"user_id": user, "schedule": {"cron": "*/5 * * * *"}})
    assert wait_for(lambda: job() is not None and "cron" in str(job().trigger), 2.0)
    assert client.post(f"/api/plans/{plan['id']}/pause", json={"user_id": user}).status_code == 200
    assert wait_for(lambda: job() is None, 2.0), "pause did not reach the other process"
    assert client.post(f"/api/plans/{plan['id']}/resume", json={"user_id": user}).status_code == 200
    assert wait_for(job, 2.0)
    assert client.delete(f"/api/plans/{plan['id']}?user_id={user}").status_code == 204
    assert wait_for(lambda: job() is None, 2.0)


def test_runs_of_a_dead_owner_are_interrupted_with_the_step_in_flight_named(
    apps: Callable[..., PilotApp], user: str, fresh_db: str
) -> None:
    app = apps()
    plan = create_plan(app, user, {"interval_seconds": 3600})
    in_flight = [{"index": 0, "id": "notify", "provider": "webhook", "action": "request", "status": "running"}]
    with app.db.transaction(user) as cur:
        run = store.insert_run(
            cur, user, plan["id"], trigger="schedule", owner_id="dead-host:1:x", scheduled_for=slot(datetime.now(UTC))
        )
        assert run is not None
        store.start_run(cur, user, run["id"], "dead-host:1:x")
        store.progress_run(cur, user, run["id"], in_flight)
        fresh = store.insert_run(cur, user, plan["id"], trigger="manual", owner_id="alive-host:2:y")
        assert fresh is not None
    admin(
        fresh_db,
        "UPDATE plan_runs SET heartbeat_at = now() - interval '10 seconds', "
        "lease_expires_at = now() - interval '7 seconds' WHERE id = %s",
        (run["id"],),
    )
    reaped = PilotScheduler(app).reap()
    assert [r["run_id"] for r in reaped] == [run["id"]]
    with app.db.transaction(user) as cur:
        dead = store.get_run(cur, user, run["id"])
        alive = store.get_run(cur, user, fresh["id"])
    assert dead is not None and alive is not None
    assert dead["status"] == "interrupted" and dead["finished_at"] is not None
    assert "lease expired" in dead["error"] and "notify (webhook.request) was in flight" in dead["error"]
    assert "outcome is unknown" in dead["error"]
    assert alive["status"] == "queued"


def test_shutdown_waits_then_marks_unfinished_runs_interrupted(apps: Callable[..., PilotApp], user: str) -> None:
    app = apps()
    with WebhookReceiver() as receiver:
        receiver.script(Reply(json={"ok": True}, delay=2.0))
        slow = {"id": "slow", "provider": "webhook", "action": "request", "params": {"url": receiver.url + "/slow"}}
        plan = create_plan(app, user, {"interval_seconds": 3600}, steps=[slow])
        client = app.test_client()
        run = resp_json(client.post(f"/api/plans/{plan['id']}/run", json={"user_id": user}))
        assert wait_for(lambda: receiver.requests, 5.0)
        scheduler = PilotScheduler(app)
        scheduler.stop(timeout=0.2)
        finished = resp_json(client.get(f"/api/runs/{run['id']}?user_id={user}"))
    assert finished["status"] == "interrupted"
    assert "shut down" in finished["error"] and "slow (webhook.request) was in flight" in finished["error"]


def test_pause_on_failure_disables_the_plan(apps: Callable[..., PilotApp], user: str) -> None:
    app = apps()
    scheduler = PilotScheduler(app)
    failing = {"provider": "logic", "action": "transform", "params": {"template": "{{ steps.nothing.data }}"}}
    plan = create_plan(app, user, {"interval_seconds": 60, "pause_on_failure": 2}, steps=[failing])
    now = slot(datetime.now(UTC))
    for moment in (now - timedelta(minutes=1), now):
        assert scheduler.fire(plan["id"], user, [moment], now=moment) is not None
        app.engine.drain(10)
    fetched = resp_json(app.test_client().get(f"/api/plans/{plan['id']}?user_id={user}"))
    assert fetched["enabled"] is False
    assert scheduler.fire(plan["id"], user, [now + timedelta(minutes=1)], now=now + timedelta(minutes=1)) is None


def test_jobs_endpoint_and_pause_resume(apps: Callable[..., PilotApp], user: str, other_user: str) -> None:
    app = apps()
    client = app.test_client()
    cron = create_plan(app, user, {"cron": "0 9 * * *", "timezone": "Europe/Berlin"})
    create_plan(app, other_user, {"interval_seconds": 10})
    unscheduled = resp_json(client.post("/api/plans", json={"user_id": user, "name": "x", "steps": []}))
    jobs = resp_json(client.get(f"/api/scheduler/jobs?user_id={user}"))["jobs"]
    assert [j["plan_id"] for j in jobs] == [cron["id"]]
    upcoming = datetime.fromisoformat(jobs[0]["next_run_time"])
    assert upcoming.astimezone(fire_times.__globals__["ZoneInfo"]("Europe/Berlin")).hour == 9
    assert set(jobs[0]) >= {"id", "plan_id", "next_run_time", "trigger"}
    assert client.post(f"/api/plans/{cron['id']}/pause", json={"user_id": other_user}).status_code == 404
    assert client.post(f"/api/plans/{unscheduled['id']}/pause", json={"user_id": user}).status_code == 400
    assert resp_json(client.post(f"/api/plans/{cron['id']}/pause", json={"user_id": user}))["enabled"] is False
    assert resp_json(client.get(f"/api/scheduler/jobs?user_id={user}"))["jobs"][0]["next_run_time"] is None
    assert resp_json(client.post(f"/api/plans/{cron['id']}/resume", json={"user_id": user}))["enabled"] is True


def test_health_reports_the_scheduler(apps: Callable[..., PilotApp]) -> None:
    app = apps()
    from scheduler import start_for_serving, stop_for_serving

    assert start_for_serving(app) is not None
    assert resp_json(app.test_client().get("/api/health"))["scheduler"]["status"] == "running"
    stop_for_serving(app, timeout=2)
    assert resp_json(app.test_client().get("/api/health"))["scheduler"]["status"] == "stopped"


def test_pause_for_shutdown_stops_firing_but_keeps_leases(apps: Callable[..., PilotApp], user: str) -> None:
    from scheduler import pause_for_shutdown, start_for_serving

    app = apps()
    scheduler = start_for_serving(app)
    assert scheduler is not None
    plan = create_plan(app, user, {"interval_seconds": 1})
    assert wait_for(lambda: runs_of(app, user, plan["id"]), 5.0), "the schedule never fired"
    pause_for_shutdown(app)
    app.engine.drain(5)
    fired = len(runs_of(app, user, plan["id"]))
    time.sleep(2.2)
    assert len(runs_of(app, user, plan["id"])) == fired
    assert resp_json(app.test_client().get("/api/health"))["scheduler"]["status"] == "stopped"
    assert all(thread.is_alive() for thread in scheduler._threads)  # listener and lease keeper go on


def test_scheduler_start_survives_a_database_that_is_down(
    apps: Callable[..., PilotApp], tmp_path: Path, fernet_key: str
) -> None:
    down = make_app(
        "postgresql://postgres@127.0.0.1:1/none?connect_timeout=1", tmp_path, (fernet_key,), scheduler_enabled=True
    )
    scheduler = PilotScheduler(down)
    scheduler.start()  # must not raise: the serving process stays up, reports the database down, retries
    try:
        assert scheduler.state() | {"started_at": None} == {
            "status": "running",
            "jobs": 0,
            "owner": scheduler.state()["owner"],
            "started_at": None,
        }
        assert down.test_client().get("/api/health").status_code == 503
        assert all(thread.is_alive() for thread in scheduler._threads)  # the listener keeps reconnecting
    finally:
        scheduler.stop(timeout=1)
        down.db.close()


def test_a_firing_that_races_shutdown_never_leaves_its_run_queued(
    apps: Callable[..., PilotApp], user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 7 item 14: shutdown starts after a firing claimed its slot and before it hands the run over."""
    app = apps()
    scheduler = PilotScheduler(app)
    plan = create_plan(app, user, {"interval_seconds": 3600})
    real_claim = store.claim_slot
    stoppers: list[threading.Thread] = []

    def claim_then_shut_down(*args: Any, **kwargs: Any) -> Any:
        row = real_claim(*args, **kwargs)
        stopper = threading.Thread(target=scheduler.stop, kwargs={"timeout": 10})
        stoppers.append(stopper)
        stopper.start()
        # An unfixed stop() returns at once and shuts the engine down before this firing
        # submits its run; a fixed one waits for the firing, so this wait runs out.
        stopper.join(timeout=1.0)
        return row

    monkeypatch.setattr(store, "claim_slot", claim_then_shut_down)
    moment = slot(datetime.now(UTC))
    failures: list[BaseException] = []
    try:
        scheduler.fire(plan["id"], user, [moment], now=moment)
    except Exception as exc:  # asserted below: a firing must not fail this way
        failures.append(exc)
    assert len(stoppers) == 1
    stoppers[0].join(timeout=30)
    assert not stoppers[0].is_alive()
    assert failures == []
    runs = runs_of(app, user, plan["id"])
    assert len(runs) == 1 and runs[0]["scheduled_for"] == moment
    assert runs[0]["status"] in ("success", "interrupted"), runs[0]  # run, or ended: never left queued


def test_a_run_accepted_after_the_engine_stopped_stays_queued_for_another_process(
    apps: Callable[..., PilotApp], user: str
) -> None:
    app = apps()
    plan = create_plan(app, user, {"interval_seconds": 3600})
    app.engine.shutdown(wait=True)
    client = app.test_client()
    response = client.post(f"/api/plans/{plan['id']}/run", json={"user_id": user})
    assert response.status_code == 202, response.json
    assert [r["status"] for r in runs_of(app, user, plan["id"])] == ["queued"]  # nothing accepted is lost
    other = apps()
    assert other.engine.claim_now() == 1
    assert wait_for(lambda: runs_of(app, user, plan["id"])[0]["status"] == "success", 15.0)


def test_a_run_its_live_process_no_longer_executes_is_reaped(apps: Callable[..., PilotApp], user: str) -> None:
    """Issue 7 item 3: never a run left running by a live process; its lease is renewed only while executed."""
    from execution_engine import process_owner_id

    app = apps(run_lease_seconds=2)
    scheduler = PilotScheduler(app)
    plan = create_plan(app, user, {"interval_seconds": 3600})
    with app.db.transaction(user) as cur:
        orphan = store.insert_run(cur, user, plan["id"], trigger="manual", owner_id=process_owner_id(), lease_seconds=2)
        assert orphan is not None
        store.start_run(cur, user, orphan["id"], process_owner_id(), lease_seconds=2)
        in_flight = [{"index": 0, "provider": "webhook", "action": "request", "pure": False, "status": "running"}]
        store.progress_run(cur, user, orphan["id"], in_flight)  # a step with side effects: never run again
    scheduler.start()  # this process is alive and keeps leases, but nothing executes the orphan
    app.scheduler = scheduler
    assert wait_for(lambda: runs_of(app, user, plan["id"])[0]["status"] == "interrupted", 15.0)
    assert "lease expired" in runs_of(app, user, plan["id"])[0]["error"]


def test_checklist_scheduler_jobs_verbatim_without_a_user(
    apps: Callable[..., PilotApp], user: str, tmp_path: Path, fernet_key: str, fresh_db: str
) -> None:
    """Issue 7 item 11: Phase 6's `curl http://localhost:5000/api/scheduler/jobs`, exactly as written."""
    disabled = apps(scheduler_enabled=False)
    response = disabled.test_client().get("/api/scheduler/jobs")
    assert response.status_code == 200, response.json
    assert response.json == {"jobs": [], "scheduler": {"status": "disabled", "jobs": 0}}

    serving = apps()
    plan = create_plan(serving, user, {"interval_seconds": 3600})
    from scheduler import start_for_serving

    scheduler = start_for_serving(serving)
    assert scheduler is not None
    assert wait_for(lambda: scheduler.state()["jobs"] == 1, 5.0)
    client = serving.test_client()
    anonymous = client.get("/api/scheduler/jobs")
    assert anonymous.status_code == 200, anonymous.json
    assert anonymous.json == {"jobs": [], "scheduler": {"status": "running", "jobs": 1}}
    named = client.get(f"/api/scheduler/jobs?user_id={user}")
    assert named.status_code == 200
    assert [job["plan_id"] for job in resp_json(named)["jobs"]] == [plan["id"]]
    assert resp_json(named)["scheduler"] == {"status": "running", "jobs": 1}

    token_mode = make_app(fresh_db, tmp_path, (fernet_key,), auth_mode="token", jwt_secret="s" * 32)
    try:
        refused = token_mode.test_client().get("/api/scheduler/jobs")
        assert refused.status_code == 401 and resp_json(refused)["error"]["code"] == "unauthorized"
    finally:
        token_mode.db.close()
