"""Fire-time arithmetic with a controlled clock: cron in timezones across DST, intervals, slots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger

from scheduler import build_trigger, fire_times, next_fire_time, slot
from tests.cron_reference import reference_times

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_daily_cron_keeps_local_wall_time_across_spring_forward() -> None:
    # Europe/Berlin leaves CET (UTC+1) for CEST (UTC+2) on 2026-03-29 at 02:00 local.
    trigger = build_trigger({"cron": "0 9 * * *", "timezone": "Europe/Berlin"})
    times = fire_times(trigger, utc(2026, 3, 27, 12), utc(2026, 3, 31, 12))
    assert times == [utc(2026, 3, 28, 8), utc(2026, 3, 29, 7), utc(2026, 3, 30, 7), utc(2026, 3, 31, 7)]
    assert all(t.astimezone(BERLIN).hour == 9 for t in times)


def test_daily_cron_across_fall_back_in_new_york() -> None:
    # America/New_York leaves EDT (UTC-4) for EST (UTC-5) on 2026-11-01 at 02:00 local.
    trigger = build_trigger({"cron": "30 8 * * *", "timezone": "America/New_York"})
    times = fire_times(trigger, utc(2026, 10, 30, 0), utc(2026, 11, 3, 0))
    assert times == [
        utc(2026, 10, 30, 12, 30),
        utc(2026, 10, 31, 12, 30),
        utc(2026, 11, 1, 13, 30),
        utc(2026, 11, 2, 13, 30),
    ]


@pytest.mark.parametrize("cron", ["30 2 * * *", "*/20 1-3 * * *", "0 * * * *", "15 3 * * 0", "0 0 1 * *"])
@pytest.mark.parametrize("start", [utc(2026, 3, 26), utc(2026, 10, 22), utc(2026, 10, 31)])
def test_cron_fire_times_match_crontab_across_dst(cron: str, start: datetime) -> None:
    zone = NEW_YORK if start.day == 31 else BERLIN
    until = start + timedelta(days=6)
    ours = fire_times(build_trigger({"cron": cron, "timezone": zone.key}), start, until)
    assert ours == reference_times(cron, zone, start, until)
    assert ours == sorted(set(ours))  # strictly increasing: no slot twice, never backwards


def test_repeated_hour_fires_each_real_instant_once() -> None:
    # On 2026-10-25 Berlin's 02:00-02:59 happens twice (CEST, then CET): 02:30 is two instants.
    trigger = build_trigger({"cron": "30 2 * * *", "timezone": "Europe/Berlin"})
    assert fire_times(trigger, utc(2026, 10, 24, 12), utc(2026, 10, 25, 12)) == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 1, 30),
    ]
    # APScheduler 3.11 alone, stepped with local times, never gets past the repeated instant.
    plain = CronTrigger.from_crontab("30 2 * * *", timezone=BERLIN)
    stuck = plain.get_next_fire_time(None, utc(2026, 10, 25, 1))
    assert plain.get_next_fire_time(stuck, stuck + timedelta(microseconds=1)) <= stuck
    ours = trigger.get_next_fire_time(stuck, stuck + timedelta(microseconds=1))
    assert ours > stuck and ours.astimezone(UTC) == utc(2026, 10, 26, 1, 30)


def test_skipped_local_time_fires_at_apschedulers_next_valid_instant() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29 (02:00 CET jumps to 03:00 CEST).
    trigger = build_trigger({"cron": "30 2 * * *", "timezone": "Europe/Berlin"})
    times = fire_times(trigger, utc(2026, 3, 28, 12), utc(2026, 3, 30, 12))
    assert times == [utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)]


def test_hourly_cron_over_the_dst_day_has_23_and_25_hour_days() -> None:
    trigger = build_trigger({"cron": "0 * * * *", "timezone": "Europe/Berlin"})
    spring = fire_times(trigger, utc(2026, 3, 28, 22, 59), utc(2026, 3, 29, 21, 59))  # local day 2026-03-29
    autumn = fire_times(trigger, utc(2026, 10, 24, 21, 59), utc(2026, 10, 25, 22, 59))  # local day 2026-10-25
    assert len(spring) == 23 and len(autumn) == 25


def test_plan_timezone_is_the_default_for_cron() -> None:
    trigger = build_trigger({"cron": "0 9 * * *"}, "America/New_York")
    assert fire_times(trigger, utc(2026, 6, 1), utc(2026, 6, 2)) == [utc(2026, 6, 1, 13)]


def test_interval_slots_are_the_same_for_every_process() -> None:
    a = build_trigger({"interval_seconds": 7})
    b = build_trigger({"interval_seconds": 7})
    now = utc(2026, 11, 26, 10, 0, 0) + timedelta(microseconds=123456)
    assert fire_times(a, now - timedelta(minutes=1), now) == fire_times(b, now - timedelta(minutes=1), now)
    assert all(t.microsecond == 0 for t in fire_times(a, now - timedelta(minutes=1), now))
    assert next_fire_time({"interval_seconds": 7}, "UTC", now) == fire_times(a, now, now + timedelta(seconds=7))[0]


def test_fire_times_are_bounded() -> None:
    trigger = build_trigger({"interval_seconds": 1})
    end = utc(2026, 11, 26)
    times = fire_times(trigger, end - timedelta(days=30), end, limit=50)
    assert len(times) == 50 and times[-1] == end and times[0] == end - timedelta(seconds=49)


@pytest.mark.parametrize("micro", [0, 1, 499_999, 999_999])
def test_slot_rounds_float_artifacts_to_the_nearest_second(micro: int) -> None:
    base = utc(2026, 1, 1, 0, 0, 10)
    moment = (
        base + timedelta(microseconds=micro) if micro < 500_000 else base - timedelta(microseconds=1_000_000 - micro)
    )
    assert slot(moment) == base
