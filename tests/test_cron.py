"""Cron schedules mean what crontab(5) means, checked against the plain reference in ``tests/cron_reference``.

Every weekday number 0-7, names, ranges, lists, steps, month names, macros and
the day-of-month/day-of-week OR rule, in non-UTC timezones across DST changes,
through both paths that compute fire times: the scheduler's trigger chain
(``fire_times``) and ``next_fire_time`` (what ``/api/scheduler/jobs`` shows).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg2
import pytest
from flask.testing import FlaskClient

from pilot.application import PilotApp
from pilot.data import store
from scheduler import PilotScheduler, build_trigger, fire_times, next_fire_time
from tests.conftest import make_app, resp_json
from tests.cron_reference import reference_times

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
TICK = {"provider": "logic", "action": "transform", "params": {"template": "tick"}}

# Seven-day windows (the scheduler looks back at most seven days) around each DST change
# of 2026, and one in a leap February: (zone, after, until).
WINDOWS = {
    "berlin-spring": (BERLIN, datetime(2026, 3, 25, 12, tzinfo=UTC), datetime(2026, 4, 1, 12, tzinfo=UTC)),
    "berlin-autumn": (BERLIN, datetime(2026, 10, 21, 12, tzinfo=UTC), datetime(2026, 10, 28, 12, tzinfo=UTC)),
    "newyork-spring": (NEW_YORK, datetime(2026, 3, 4, 12, tzinfo=UTC), datetime(2026, 3, 11, 12, tzinfo=UTC)),
    "newyork-autumn": (NEW_YORK, datetime(2026, 10, 29, 12, tzinfo=UTC), datetime(2026, 11, 5, 12, tzinfo=UTC)),
    "leap-february": (NEW_YORK, datetime(2028, 2, 25, 12, tzinfo=UTC), datetime(2028, 3, 3, 12, tzinfo=UTC)),
}
SUNDAY_FIRST = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

EXPRESSIONS = [
    "0 9 * * 1-5",  # the README's example: Monday to Friday
    "0 9 * * mon-fri",
    "0 9 * * MON-Fri",
    "0 9 * * sat,sun",
    "0 9 * * 0,6",
    "0 9 * * 5-7",
    "0 9 * * 1,3,5",
    "0 9 * * mon,wed,FRI",
    "0 9 * * */2",
    "0 9 * * 1-7/2",
    "0 9 * * 1/3",
    "0 9 * * sun-sat",
    "*/15 9-17 * * mon-fri",
    "10-50/20 2 * * *",  # inside the skipped and the repeated hour
    "30 2 * * 0",  # Sunday 02:30: both 2026 Berlin changes fall on a Sunday at 02:00-03:00
    "0 */6 * * *",
    "5 4 * * sun",
    "0 12 * jan-mar,oct *",
    "0 12 * JAN,Feb,nov-dec *",
    "0 12 * */2 *",
    "0 0 1,15 * mon",  # OR: the 1st, the 15th and every Monday
    "0 0 1-7 * 1",  # OR (the classic trap): not "the first Monday"
    "30 2 29 3 0",  # OR, with Berlin's spring-forward day (Sunday 29 March 2026)
    "0 0 29 2 4",  # OR: 29 February 2028 and Thursdays
    "0 0 */10 * 1-5",  # AND: day-of-month starts with '*'
    "0 0 1,11,21,31 * *",
    "0 0 29,30,31 * *",
    "0 6 * * 7",
    "59 23 31 12 *",
    "@hourly",
    "@daily",
    "@midnight",
    "@weekly",
    "@monthly",
    "@yearly",
    "@annually",
]


def schedule_times(cron: str, zone: ZoneInfo, after: datetime, until: datetime) -> list[datetime]:
    """The scheduler's own fire times: its trigger stepped from firing to firing, as stored (UTC slots)."""
    return fire_times(build_trigger({"cron": cron, "timezone": zone.key}), after, until)


def shown_times(cron: str, zone: ZoneInfo, after: datetime, until: datetime) -> list[datetime]:
    """What /api/scheduler/jobs would show at each moment: next_fire_time asked afresh after every slot."""
    times: list[datetime] = []
    moment = next_fire_time({"cron": cron, "timezone": zone.key}, "UTC", after)
    while moment is not None and moment <= until and len(times) < 2000:
        times.append(moment)
        moment = next_fire_time({"cron": cron, "timezone": zone.key}, "UTC", moment)
    return times


@pytest.mark.parametrize("number", range(8))
@pytest.mark.parametrize("window", ["berlin-spring", "berlin-autumn", "newyork-spring"])
def test_every_weekday_number_means_its_crontab_day(number: int, window: str) -> None:
    zone, after, until = WINDOWS[window]
    cron = f"30 9 * * {number}"
    times = schedule_times(cron, zone, after, until)
    assert times == reference_times(cron, zone, after, until)
    assert len(times) == 1  # once in any seven days
    local = times[0].astimezone(zone)
    assert (local.strftime("%A"), local.hour, local.minute) == (SUNDAY_FIRST[number], 9, 30)
    assert shown_times(cron, zone, after, until) == times


@pytest.mark.parametrize("cron", EXPRESSIONS)
@pytest.mark.parametrize("window", list(WINDOWS))
def test_fire_times_match_crontab_across_dst(cron: str, window: str) -> None:
    zone, after, until = WINDOWS[window]
    expected = reference_times(cron, zone, after, until)
    times = schedule_times(cron, zone, after, until)
    assert times == expected
    assert times == sorted(set(times))  # strictly increasing: no slot twice, never backwards


@pytest.mark.parametrize("cron", [*EXPRESSIONS[:12], "0 0 1,15 * mon", "30 2 29 3 0", "10-50/20 2 * * *", "@weekly"])
@pytest.mark.parametrize("window", ["berlin-spring", "berlin-autumn", "newyork-autumn"])
def test_the_shown_next_time_matches_crontab_across_dst(cron: str, window: str) -> None:
    zone, after, until = WINDOWS[window]
    assert shown_times(cron, zone, after, until) == reference_times(cron, zone, after, until)


def test_the_readme_example_fires_monday_to_friday() -> None:
    zone, after, until = WINDOWS["berlin-spring"]
    days = [t.astimezone(zone).strftime("%a %d %H:%M") for t in schedule_times("0 9 * * 1-5", zone, after, until)]
    # 25 March 2026 is a Wednesday; Berlin moves to summer time on Sunday the 29th.
    assert days == ["Thu 26 09:00", "Fri 27 09:00", "Mon 30 09:00", "Tue 31 09:00", "Wed 01 09:00"]


# --- refusals --------------------------------------------------------------------


def create(client: FlaskClient, user: str, schedule: dict[str, Any]) -> Any:
    return client.post("/api/plans", json={"user_id": user, "name": "cron", "steps": [TICK], "schedule": schedule})


@pytest.mark.parametrize(
    ("cron", "field"),
    [
        ("0 9 * * 8", "day-of-week"),
        ("0 9 * * 1-8", "day-of-week"),
        ("0 9 * * 5-1", "day-of-week"),
        ("0 9 * * sat-sun", "day-of-week"),
        ("0 9 * * monday", "day-of-week"),
        ("0 9 * * mon-", "day-of-week"),
        ("0 9 * * 1-5/0", "day-of-week"),
        ("*/0 * * * *", "minute"),
        ("60 * * * *", "minute"),
        ("-1 * * * *", "minute"),
        ("1,,2 * * * *", "minute"),
        ("\u0663 * * * *", "minute"),  # an Arabic-Indic three is a digit to Python, not to cron
        ("*/61 * * * *", "minute"),
        ("0 24 * * *", "hour"),
        ("0 9\u0000 * * *", "NUL"),  # refused by the request guard before the cron parser sees it
        ("0 0 0 * *", "day-of-month"),
        ("0 0 32 * *", "day-of-month"),
        ("0 0 L * *", "day-of-month"),
        ("0 0 last * *", "day-of-month"),
        ("0 0 30 2 *", "day-of-month"),  # never happens
        ("0 0 31 4,6,9,11 *", "day-of-month"),
        ("0 0 * 13 *", "month"),
        ("0 0 * 0 *", "month"),
        ("0 0 * mon *", "month"),
        ("0 0 * jan-dec/0 *", "month"),
        ("* * * *", "5 fields"),
        ("* * * * * *", "5 fields"),
        ("garbage", "5 fields"),
        ("@reboot", "@reboot"),
        ("@fortnightly", "@fortnightly"),
        ("? * * * *", "minute"),
        ("0\u00a09 * * * *", "minute"),  # fields are separated by spaces and tabs only
        ("0\x1c9 * * *", "5 fields"),
    ],
)
def test_invalid_cron_is_a_400_naming_the_field(client: FlaskClient, user: str, cron: str, field: str) -> None:
    response = create(client, user, {"cron": cron, "timezone": "Europe/Berlin"})
    assert response.status_code == 400, response.json
    message = resp_json(response)["error"]["message"]
    assert message.startswith("schedule.cron: ") and field in message
    assert resp_json(response)["error"]["details"][0]["field"] == "schedule.cron"


@pytest.mark.parametrize(
    "cron", ["0 9 * * 7", "0 9 * * 0-7", "0 9 * * sun,7", "@daily", "5/20 * * * *", " 0 9 * * 1 ", "0\t9  * * 1"]
)
def test_crontab_forms_are_accepted_and_kept_as_written(client: FlaskClient, user: str, cron: str) -> None:
    response = create(client, user, {"cron": cron, "timezone": "Europe/Berlin"})
    assert response.status_code == 201, response.json
    assert resp_json(response)["schedule"]["cron"] == cron


# --- what /api/scheduler/jobs shows ------------------------------------------------


def test_jobs_shows_the_next_weekday_9_berlin(client: FlaskClient, user: str) -> None:
    plan = resp_json(create(client, user, {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"}))
    before = datetime.now(UTC)
    jobs = resp_json(client.get(f"/api/scheduler/jobs?user_id={user}"))["jobs"]
    after = datetime.now(UTC)
    (job,) = jobs
    assert job["plan_id"] == plan["id"]
    shown = datetime.fromisoformat(job["next_run_time"])
    # Either answer is right if a 09:00 Berlin slot passed during the request.
    candidates = {reference_times("0 9 * * 1-5", BERLIN, t, t + timedelta(days=4))[0] for t in (before, after)}
    assert shown in candidates
    local = shown.astimezone(BERLIN)
    assert local.isoweekday() <= 5 and (local.hour, local.minute) == (9, 0)


@pytest.fixture
def scheduler_app(fresh_db: str, tmp_path: Path, fernet_key: str) -> Iterator[PilotApp]:
    app = make_app(fresh_db, tmp_path, (fernet_key,))
    yield app
    app.engine.shutdown(wait=True)
    app.db.close()


def stored_due(app: PilotApp, user: str, plan_id: int) -> Any:
    """The next due time the scheduler stored for ``plan_id`` (None: never)."""
    with app.db.transaction(user) as cur:
        [row] = [row for row in store.list_scheduled_plans(cur, user) if row["id"] == plan_id]
    assert not row["due_pending"]
    return row["next_due_at"]


@pytest.mark.parametrize("cron", ["0 9 * * 1-5", "0 0 1 * 0", "@weekly", "0 9 * * 7"])
def test_the_scheduler_uses_the_time_jobs_shows(scheduler_app: PilotApp, user: str, cron: str) -> None:
    client = scheduler_app.test_client()
    before = datetime.now(UTC)
    plan = resp_json(create(client, user, {"cron": cron, "timezone": "Europe/Berlin"}))
    pending = resp_json(client.get(f"/api/scheduler/jobs?user_id={user}"))["jobs"][0]["next_run_time"]
    scheduler = PilotScheduler(scheduler_app)
    scheduler.tick()  # stores the next due time it will use
    shown = resp_json(client.get(f"/api/scheduler/jobs?user_id={user}"))["jobs"][0]["next_run_time"]
    after = datetime.now(UTC)
    assert pending == shown  # the same before and after a tick stored it
    assert stored_due(scheduler_app, user, plan["id"]) == datetime.fromisoformat(shown)
    candidates = {reference_times(cron, BERLIN, t, t + timedelta(days=8))[0] for t in (before, after)}
    assert datetime.fromisoformat(shown) in candidates


@pytest.mark.parametrize("cron", ["0 3 * * *", "0,30 1-3 * * sun", "*/20 * * * *", "30 2 * * *"])
@pytest.mark.parametrize("day", [datetime(2026, 3, 28, 23, tzinfo=UTC), datetime(2026, 10, 24, 23, tzinfo=UTC)])
def test_ticks_across_a_dst_night_fire_the_reference_slots(
    scheduler_app: PilotApp, fresh_db: str, user: str, cron: str, day: datetime
) -> None:
    """Ticking on an injected clock through a DST night fires exactly crontab(5)'s instants (cron_reference)."""
    client = scheduler_app.test_client()
    plan = resp_json(create(client, user, {"cron": cron, "timezone": "Europe/Berlin"}))
    conn = psycopg2.connect(fresh_db)
    try:
        with conn, conn.cursor() as cur:  # as if the schedule had been set just before that night
            cur.execute("UPDATE plan_schedules SET base_at = %s WHERE plan_id = %s", (day, plan["id"]))
    finally:
        conn.close()
    expected = reference_times(cron, BERLIN, day, day + timedelta(days=2))
    clock = {"now": day}
    scheduler = PilotScheduler(scheduler_app, clock=lambda: clock["now"])
    fired: list[datetime] = []
    scheduler.tick()
    for moment in expected:  # the clock jumps to each reference instant and ticks there
        clock["now"] = moment + timedelta(milliseconds=20)
        fired.extend(run["scheduled_for"] for run in scheduler.tick().handed_over)
        assert scheduler_app.engine.drain(10)
        assert stored_due(scheduler_app, user, plan["id"]) > moment
    assert fired == expected


def test_a_stored_schedule_crontab_refuses_never_fires_and_stops_nothing_else(
    scheduler_app: PilotApp, fresh_db: str, user: str
) -> None:
    # "last" was accepted by APScheduler's from_crontab before this fix; crontab(5) has no such day.
    conn = psycopg2.connect(fresh_db)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO execution_plans (user_id, name, schedule) VALUES (%s, 'old', %s) RETURNING id",
                (user, '{"cron": "0 0 last * *"}'),
            )
            (stale,) = cur.fetchone()
    finally:
        conn.close()
    client = scheduler_app.test_client()
    fine = resp_json(create(client, user, {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"}))
    scheduler = PilotScheduler(scheduler_app)
    scheduler.tick()  # the stale cron stores "never"; the other schedule its next time
    assert scheduler.sample()["schedules"] == 2
    assert stored_due(scheduler_app, user, fine["id"]) is not None
    assert stored_due(scheduler_app, user, stale) is None
    jobs = {job["plan_id"]: job for job in resp_json(client.get(f"/api/scheduler/jobs?user_id={user}"))["jobs"]}
    assert jobs[stale]["next_run_time"] is None and jobs[fine["id"]]["next_run_time"] is not None


@pytest.mark.parametrize("cron", ["*/20 * * * *", "10-50/20 2 * * *", "0 3 * * *", "0,30 1-3 * * sun"])
@pytest.mark.parametrize(
    ("zone", "day"),
    [(BERLIN, datetime(2026, 3, 28, 23, tzinfo=UTC)), (BERLIN, datetime(2026, 10, 24, 23, tzinfo=UTC))],
)
def test_the_next_time_asked_at_any_minute_of_a_dst_night(cron: str, zone: ZoneInfo, day: datetime) -> None:
    # Asked at every minute (and half minute) of the night the clocks change, not only right after a slot.
    expected = reference_times(cron, zone, day - timedelta(minutes=1), day + timedelta(days=8))
    for step in range(5 * 120):
        now = day + timedelta(seconds=30 * step)
        upcoming = next((t for t in expected if t > now), None)
        assert upcoming is not None
        assert next_fire_time({"cron": cron, "timezone": zone.key}, "UTC", now) == upcoming, now
