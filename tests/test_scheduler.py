"""The scheduler against a real PostgreSQL: exactly-once claims, overlap, misfires, sync, leases, shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import pytest

import database
from pilot.application import PilotApp
from pilot.data import store
from pilot.errors import PilotError
from scheduler import PilotScheduler, TickResult, build_trigger, fire_times, slot
from tests.conftest import make_app, resp_json
from tests.fake_upstreams import Reply, WebhookReceiver
from tests.test_metrics_endpoint import scrape, value

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


def rows(dsn: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The rows of ``statement`` run by the database owner (no RLS), as tuples."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def minute() -> datetime:
    """The current whole minute: a slot of every 60 s interval schedule."""
    return datetime.now(UTC).replace(second=0, microsecond=0)


class Clock:
    """An injected clock: the scheduler's ``now``, set by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def set_due(dsn: str, plan_id: int, moment: datetime) -> None:
    """Store ``moment`` as the plan's next due time, as a tick before it would have."""
    admin(dsn, "UPDATE plan_schedules SET next_due_at = %s WHERE plan_id = %s", (moment, plan_id))


def stored_due(dsn: str, plan_id: int) -> Any:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT next_due_at::text FROM plan_schedules WHERE plan_id = %s", (plan_id,))
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        conn.close()


def tick_together(schedulers: list[PilotScheduler], now: datetime) -> list[TickResult]:
    """Every scheduler ticks at the same moment, in its own thread (a barrier lines them up)."""
    barrier = threading.Barrier(len(schedulers))
    results: list[TickResult] = []

    def tick(scheduler: PilotScheduler) -> None:
        barrier.wait(timeout=10)
        results.append(scheduler.tick(now))

    threads = [threading.Thread(target=tick, args=(s,)) for s in schedulers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == len(schedulers)
    return results


def test_concurrent_ticks_run_each_slot_exactly_once(apps: Callable[..., PilotApp], user: str, fresh_db: str) -> None:
    instances = [apps() for _ in range(4)]
    schedulers = [PilotScheduler(app) for app in instances]
    plan = create_plan(instances[0], user, {"interval_seconds": 60})
    now = datetime.now(UTC)
    slots = fire_times(build_trigger({"interval_seconds": 60}), now - timedelta(minutes=3), now)[-3:]
    won: list[Any] = []
    for moment in slots:  # every process ticks at the same moment, just after the slot
        set_due(fresh_db, plan["id"], moment)
        for result in tick_together(schedulers, moment + timedelta(milliseconds=5)):
            won.extend(result.handed_over)
        for app in instances:  # the run finishes before the next slot, as a 60 s interval allows
            app.engine.drain(10)
    assert len(won) == len(slots)
    runs = runs_of(instances[0], user, plan["id"])
    assert sorted(r["scheduled_for"] for r in runs) == slots
    assert {r["status"] for r in runs} == {"success"} and {r["trigger"] for r in runs} == {"schedule"}


def test_a_plan_still_running_is_not_started_twice(apps: Callable[..., PilotApp], user: str, fresh_db: str) -> None:
    app = apps()
    scheduler = PilotScheduler(app)
    plan = create_plan(app, user, {"interval_seconds": 1})
    with app.db.transaction(user) as cur:
        running = store.insert_run(cur, user, plan["id"], trigger="manual", owner_id="someone")
    assert running is not None
    now = slot(datetime.now(UTC))
    set_due(fresh_db, plan["id"], now)
    result = scheduler.tick(now)
    assert result.handed_over == [] and result.outcomes == {"skipped_overlap": 1}
    runs = {r["id"]: r for r in runs_of(app, user, plan["id"])}
    skipped = [r for r in runs.values() if r["status"] == "skipped"]
    assert len(skipped) == 1 and skipped[0]["scheduled_for"] == now
    assert f"run {running['id']}" in skipped[0]["error"] and skipped[0]["reason"] == "overlap"


def test_downtime_gives_one_catch_up_run_and_records_the_rest_skipped(
    apps: Callable[..., PilotApp], user: str, fresh_db: str
) -> None:
    a, b = apps(), apps()
    plan = create_plan(a, user, {"interval_seconds": 60})
    now = datetime.now(UTC)
    # The next slot was stored 5 minutes ago and no scheduler ran since: 4-5 slots were missed.
    missed = fire_times(build_trigger({"interval_seconds": 60}), now - timedelta(minutes=5), now)
    assert len(missed) >= 4
    set_due(fresh_db, plan["id"], missed[0])
    results = tick_together([PilotScheduler(a), PilotScheduler(b)], now)  # two processes start at once
    assert sum(len(r.handed_over) for r in results) == 1  # one process won the catch-up
    # (counted catch_up when older than SCHEDULER_MAX_LATENESS_SECONDS, else claimed)
    assert sum(r.outcomes.get("catch_up", 0) + r.outcomes.get("claimed", 0) for r in results) == 1
    assert sum(r.outcomes.get("skipped_misfire", 0) for r in results) == len(missed) - 1
    a.engine.drain(10)
    b.engine.drain(10)
    runs = runs_of(a, user, plan["id"])
    assert [r["scheduled_for"] for r in runs if r["status"] == "success"] == [missed[-1]]
    assert sorted(r["scheduled_for"] for r in runs if r["status"] == "skipped") == missed[:-1]
    assert all("missed" in r["error"] and r["reason"] == "missed" for r in runs if r["status"] == "skipped")
    upcoming = fire_times(build_trigger({"interval_seconds": 60}), now, now + timedelta(minutes=1))[0]
    assert datetime.fromisoformat(stored_due(fresh_db, plan["id"])) == upcoming


def test_missed_slots_older_than_the_grace_window_are_only_recorded(
    apps: Callable[..., PilotApp], user: str, fresh_db: str
) -> None:
    app = apps(misfire_grace_seconds=30)
    scheduler = PilotScheduler(app)
    plan = create_plan(app, user, {"interval_seconds": 60})
    now = minute() + timedelta(seconds=45)
    due = fire_times(build_trigger({"interval_seconds": 60}), now - timedelta(minutes=3), now)
    set_due(fresh_db, plan["id"], due[0])
    assert scheduler.tick(now).handed_over == []
    runs = runs_of(app, user, plan["id"])
    assert [r["status"] for r in runs] == ["skipped"] * len(due)
    assert all(r["error"].startswith("missed") for r in runs)


def test_a_slot_that_cannot_start_in_time_is_skipped_late(
    apps: Callable[..., PilotApp], user: str, fresh_db: str
) -> None:
    """Issue 9 item 6: while the scheduler runs, a slot claimed later than the limit is recorded, not started."""
    app = apps(max_lateness_seconds=5)
    clock = Clock(slot(datetime.now(UTC)))
    scheduler = PilotScheduler(app, clock=clock)
    plan = create_plan(app, user, {"interval_seconds": 60})
    assert scheduler.tick().batches == 1  # the first tick: nothing missed, catching up ends
    late = {"outcome": "skipped_late"}
    before = value(scrape(app.test_client()), "pilot_scheduler_firings_total", **late)
    moment = fire_times(build_trigger({"interval_seconds": 60}), clock.now, clock.now + timedelta(minutes=1))[0]
    set_due(fresh_db, plan["id"], moment)
    clock.now = moment + timedelta(seconds=6)  # e.g. the machine was overloaded: 6 s > 5 s
    result = scheduler.tick()
    assert result.handed_over == [] and result.outcomes == {"skipped_late": 1}
    [run] = runs_of(app, user, plan["id"])
    assert run["status"] == "skipped" and run["scheduled_for"] == moment and run["reason"] == "late"
    assert run["error"].startswith("skipped: late:") and "SCHEDULER_MAX_LATENESS_SECONDS" in run["error"]
    assert value(scrape(app.test_client()), "pilot_scheduler_firings_total", **late) == before + 1
    # Within the limit the slot runs.
    following = moment + timedelta(minutes=1)
    clock.now = following + timedelta(seconds=4)
    assert [r["scheduled_for"] for r in scheduler.tick().handed_over] == [following]


def test_a_full_firing_queue_leaves_slots_for_others_then_records_them_late(
    apps: Callable[..., PilotApp], user: str, fresh_db: str
) -> None:
    """A bounded firing queue: a tick locks no more due slots than it can start; once too late, they are recorded."""
    app = apps(max_lateness_seconds=5)
    clock = Clock(minute())
    one = Sink(capacity=1)
    scheduler = PilotScheduler(app, clock=clock, sink=one)
    plans = [create_plan(app, user, {"interval_seconds": 60}) for _ in range(2)]
    scheduler.tick()
    moment = clock.now + timedelta(minutes=1)
    for plan in plans:
        set_due(fresh_db, plan["id"], moment)
    clock.now = moment + timedelta(seconds=1)
    result = scheduler.tick()
    assert result.outcomes == {"claimed": 1} and len(one.runs) == 1  # room for one: one claimed
    [waiting] = [plan for plan in plans if plan["id"] != one.runs[0]["plan_id"]]
    # the other was not even locked: still due, for any process with room
    assert datetime.fromisoformat(stored_due(fresh_db, waiting["id"])) == moment
    assert runs_of(app, user, waiting["id"]) == []
    clock.now = moment + timedelta(seconds=3)
    assert scheduler.tick().outcomes == {}  # still no room, not late yet: left alone
    clock.now = moment + timedelta(seconds=6)
    assert scheduler.tick().outcomes == {"skipped_late": 1}  # too late now: recorded, never started
    [late] = runs_of(app, user, waiting["id"])
    assert (late["status"], late["reason"]) == ("skipped", "late") and len(one.runs) == 1


class Sink:
    """A hand-over that records the runs it gets (the tick's claims measured apart from run execution)."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.limit = capacity
        self.runs: list[dict[str, Any]] = []

    def owner(self) -> str | None:
        return "test-sink"

    def capacity(self) -> int:
        return self.limit - len(self.runs)

    def hand_off(self, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.runs.extend(runs)
        return runs


def insert_plans(dsn: str, user: str, count: int, schedule: str) -> list[int]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO execution_plans (user_id, name, steps, schedule) "
                "SELECT %s, 'burst ' || n, '[]', %s FROM generate_series(1, %s) n RETURNING id",
                (user, schedule, count),
            )
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


class StatementCounter:
    """Counts the statements (each one round trip) that the current thread sends through psycopg2 cursors."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.thread = threading.get_ident()
        real = database.Cursor._round_trip

        def round_trip(cursor: Any, query: bytes) -> None:
            if threading.get_ident() == self.thread:
                self.count += 1
            real(cursor, query)

        monkeypatch.setattr(database.Cursor, "_round_trip", round_trip)


@pytest.mark.parametrize(("plans", "batch_size", "batches", "statements"), [(300, 500, 1, 3), (300, 100, 4, 11)])
def test_a_burst_of_due_plans_costs_a_constant_number_of_statements_per_batch(
    apps: Callable[..., PilotApp],
    user: str,
    fresh_db: str,
    monkeypatch: pytest.MonkeyPatch,
    plans: int,
    batch_size: int,
    batches: int,
    statements: int,
) -> None:
    """Issue 9 item 4: N plans due in the same second cost O(1) statements per process, not O(N)."""
    app = apps()
    moment = minute()
    sink = Sink()
    scheduler = PilotScheduler(app, clock=Clock(moment), sink=sink)
    scheduler.batch_size = batch_size
    ids = insert_plans(fresh_db, user, plans, '{"interval_seconds": 60}')
    admin(fresh_db, "UPDATE plan_schedules SET next_due_at = %s WHERE plan_id = ANY(%s)", (moment, ids))
    counter = StatementCounter(monkeypatch)
    result = scheduler.tick()
    # Per batch: the role setup, the claim of the due rows, the runs and next due times (3 round
    # trips and the commit); a batch that comes back short (here: empty, 2) ends the tick.
    assert result.batches == batches
    assert counter.count == statements, counter.count
    assert sorted(run["plan_id"] for run in sink.runs) == sorted(ids)
    assert result.outcomes == {"claimed": plans}
    with app.db.transaction(user) as cur:
        cur.execute("SELECT count(*) AS n, count(DISTINCT plan_id) AS plans FROM plan_runs WHERE status = 'queued'")
        row = cur.fetchone()
    assert row is not None and (row["n"], row["plans"]) == (plans, plans)


def test_two_ticking_schedulers_share_a_burst_exactly_once(
    apps: Callable[..., PilotApp], user: str, fresh_db: str
) -> None:
    a, b = apps(), apps()
    moment = minute()
    sinks = [Sink(), Sink()]
    schedulers = [PilotScheduler(app, sink=sink) for app, sink in zip((a, b), sinks, strict=True)]
    for scheduler in schedulers:
        scheduler.batch_size = 50
    ids = insert_plans(fresh_db, user, 300, '{"interval_seconds": 60}')
    admin(fresh_db, "UPDATE plan_schedules SET next_due_at = %s WHERE plan_id = ANY(%s)", (moment, ids))
    results = tick_together(schedulers, moment + timedelta(milliseconds=10))
    claimed = [run["plan_id"] for sink in sinks for run in sink.runs]
    assert sorted(claimed) == sorted(ids)  # every plan once, whichever process took it
    assert sum(r.outcomes.get("claimed", 0) for r in results) == 300
    assert sum(r.outcomes.get("lost", 0) for r in results) == 0  # SKIP LOCKED: no process wasted a claim
    assert results[0].batches + results[1].batches <= 300 // 50 + 2


def test_queue_depth_and_oldest_queued_age_are_gauges(apps: Callable[..., PilotApp], user: str, fresh_db: str) -> None:
    app = apps()
    plan = create_plan(app, user, {"interval_seconds": 3600})
    with app.db.transaction(user) as cur:
        for _ in range(3):  # accepted, not started (nothing executes them here)
            assert store.insert_run(cur, user, plan["id"], trigger="api", owner_id="elsewhere") is not None
    admin(fresh_db, "UPDATE plan_runs SET created_at = now() - interval '90 seconds' WHERE plan_id = %s", (plan["id"],))
    stats = PilotScheduler(app).sample()
    assert (stats["schedules"], stats["queued"]) == (1, 3) and 90 <= stats["oldest_queued_seconds"] < 150
    samples = scrape(app.test_client())
    assert value(samples, "pilot_run_queue_depth") == 3
    assert 90 <= value(samples, "pilot_run_queue_oldest_seconds") < 150
    assert value(samples, "pilot_scheduler_jobs") == 1


def test_plan_changes_racing_ticks_never_deadlock(apps: Callable[..., PilotApp], user: str, fresh_db: str) -> None:
    """A request locks a plan then (by trigger) its schedule; a tick must never hold one while waiting on the other."""
    app = apps()
    moment = minute()
    ids = insert_plans(fresh_db, user, 40, '{"interval_seconds": 60}')
    scheduler = PilotScheduler(app, sink=Sink())
    failures: list[BaseException] = []
    statuses: list[int] = []
    stop = threading.Event()

    def tick() -> None:
        for step in range(200):  # every tick finds all 40 plans due again
            if stop.is_set():
                return
            admin(fresh_db, "UPDATE plan_schedules SET next_due_at = %s", (moment + timedelta(minutes=step),))
            try:
                scheduler.tick(moment + timedelta(minutes=step, seconds=1))
            except Exception as exc:  # asserted below: a deadlock surfaces here or in a request
                failures.append(exc)

    ticker = threading.Thread(target=tick)
    ticker.start()
    client = app.test_client()
    try:
        for round_ in range(3):
            for plan_id in ids:
                action = ("pause", "resume")[round_ % 2]
                statuses.append(client.post(f"/api/plans/{plan_id}/{action}", json={"user_id": user}).status_code)
    finally:
        stop.set()
        ticker.join(timeout=120)
    assert failures == [] and set(statuses) == {200}, (failures, sorted(set(statuses)))


def test_two_started_schedulers_run_every_slot_once(apps: Callable[..., PilotApp], user: str) -> None:
    a, b = apps(max_lateness_seconds=1), apps(max_lateness_seconds=1)
    plans = [create_plan(a, user, {"interval_seconds": 1}) for _ in range(3)]
    started = datetime.now(UTC)
    for app in (a, b):
        scheduler = PilotScheduler(app)
        scheduler.start()
        app.scheduler = scheduler

    def slots_recorded() -> bool:
        return all(len(runs_of(a, user, plan["id"])) >= 4 for plan in plans)

    assert wait_for(slots_recorded, 20.0), "the schedules did not fire"
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
        assert set(expected) <= set(times), "a slot was neither run nor recorded"
        assert all(r["status"] in ("success", "skipped") for r in runs)
        assert any(r["status"] == "success" for r in runs)
        # A slot is handed to a worker within SCHEDULER_MAX_LATENESS_SECONDS of its time, or recorded skipped.
        claims = [(r["created_at"] - r["scheduled_for"]).total_seconds() for r in runs if r["started_at"]]
        # (created_at is the claim transaction's start, a little after the tick read its clock)
        assert claims and max(claims) <= 1.0 + 0.5, claims


def test_schedule_changes_take_effect_in_another_process_at_once(
    apps: Callable[..., PilotApp], user: str, fresh_db: str
) -> None:
    """Another process's tick uses the plan as it is now: new, changed, paused, resumed, deleted."""
    a, b = apps(), apps()
    other = PilotScheduler(b)
    plan = create_plan(a, user, {"interval_seconds": 3600})
    created = datetime.now(UTC)
    other.tick(created)
    hourly = fire_times(build_trigger({"interval_seconds": 3600}), created, created + timedelta(hours=1))[0]
    assert datetime.fromisoformat(stored_due(fresh_db, plan["id"])) == hourly
    client = a.test_client()
    patched = client.patch(f"/api/plans/{plan['id']}", json={"user_id": user, "schedule": {"interval_seconds": 1}})
    assert patched.status_code == 200, patched.json
    changed = datetime.now(UTC)
    first = fire_times(build_trigger({"interval_seconds": 1}), changed, changed + timedelta(seconds=2))[0]
    assert [r["scheduled_for"] for r in other.tick(first).handed_over] == [first]  # at once, not in an hour
    assert b.engine.drain(10)
    assert client.post(f"/api/plans/{plan['id']}/pause", json={"user_id": user}).status_code == 200
    assert stored_due(fresh_db, plan["id"]) is None
    assert other.tick(first + timedelta(seconds=5)).batches == 1 and len(runs_of(a, user, plan["id"])) == 1
    assert client.post(f"/api/plans/{plan['id']}/resume", json={"user_id": user}).status_code == 200
    resumed = datetime.now(UTC)
    since = max(resumed, first)  # (a slot that already ran is never run again)
    after = fire_times(build_trigger({"interval_seconds": 1}), since, since + timedelta(seconds=2))[0]
    resumed_tick = other.tick(after)
    assert [r["scheduled_for"] for r in resumed_tick.handed_over] == [after]  # no catch-up of the pause
    assert client.delete(f"/api/plans/{plan['id']}?user_id={user}").status_code == 204
    assert stored_due(fresh_db, plan["id"]) is None
    assert other.tick(after + timedelta(seconds=5)).outcomes == {}


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


def test_pause_on_failure_disables_the_plan(apps: Callable[..., PilotApp], user: str, fresh_db: str) -> None:
    app = apps()
    scheduler = PilotScheduler(app)
    failing = {"provider": "logic", "action": "transform", "params": {"template": "{{ steps.nothing.data }}"}}
    plan = create_plan(app, user, {"interval_seconds": 60, "pause_on_failure": 2}, steps=[failing])
    now = minute()
    for moment in (now - timedelta(minutes=1), now):
        set_due(fresh_db, plan["id"], moment)
        assert len(scheduler.tick(moment).handed_over) == 1
        app.engine.drain(10)
    fetched = resp_json(app.test_client().get(f"/api/plans/{plan['id']}?user_id={user}"))
    assert fetched["enabled"] is False
    assert stored_due(fresh_db, plan["id"]) is None
    assert scheduler.tick(now + timedelta(minutes=1)).handed_over == []


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
    # a plan without a schedule: 409 no_schedule since issue 8 item 3 (was 400)
    assert client.post(f"/api/plans/{unscheduled['id']}/pause", json={"user_id": user}).status_code == 409
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
    later = datetime.now(UTC) + timedelta(seconds=10)
    assert scheduler.tick(later) == TickResult()  # a paused scheduler claims nothing, whatever is due
    assert len(runs_of(app, user, plan["id"])) == fired
    assert resp_json(app.test_client().get("/api/health"))["scheduler"]["status"] == "stopped"
    assert all(thread.is_alive() for thread in scheduler._threads)  # the lease keeper goes on


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
        assert all(thread.is_alive() for thread in scheduler._threads)  # the reaper keeps trying
        with pytest.raises(PilotError):
            scheduler.tick()  # a tick fails (and logs, from its job) until the database answers
    finally:
        scheduler.stop(timeout=1)
        down.db.close()


def test_a_firing_that_races_shutdown_never_leaves_its_run_queued(
    apps: Callable[..., PilotApp], user: str, monkeypatch: pytest.MonkeyPatch, fresh_db: str
) -> None:
    """Issue 7 item 14: shutdown starts after a tick claimed its slot and before it hands the run over."""
    app = apps()
    scheduler = PilotScheduler(app)
    plan = create_plan(app, user, {"interval_seconds": 3600})
    real_claim = store.fire_schedules
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

    monkeypatch.setattr(store, "fire_schedules", claim_then_shut_down)
    moment = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    admin(fresh_db, "UPDATE plan_schedules SET next_due_at = %s WHERE plan_id = %s", (moment, plan["id"]))
    failures: list[BaseException] = []
    try:
        scheduler.tick(moment)
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
