"""crontab(5) schedules: parse the five fields, and find when they next match in a timezone.

The meaning is crontab(5)'s: minute 0-59, hour 0-23, day of month 1-31, month
1-12 or ``jan``-``dec``, day of week 0-7 or ``sun``-``sat`` (0 and 7 are both
Sunday, 1 is Monday); each field is a comma list of ``*``, a number or name, or
a range ``a-b``, each optionally followed by ``/step``; names are
case-insensitive. When both day of month and day of week are restricted
(neither starts with ``*``) a day matches if either matches, otherwise both must.
Also accepted: the macros ``@yearly``/``@annually``, ``@monthly``, ``@weekly``,
``@daily``/``@midnight``, ``@hourly``, and ``n/step`` meaning ``n-<max>/step``
(which Pilot accepted before through APScheduler). Refused with a ``CronError``
naming the field: values out of range (8 in day of week), reversed ranges,
step 0, full names, anything else, and dates that never happen (``30 2``).

``CrontabTrigger`` is the APScheduler trigger built on it.

Times are matched on the wall clock of the schedule's timezone. Across DST, a
wall-clock time that happens twice fires at both instants, and one that a
spring-forward skips fires at its reading with the offset from before the
change (PEP 495's ``fold=0``), i.e. later by the gap: 02:30 becomes 03:30.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger

MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February 29 exists in some year
MAX_YEARS = 60  # a valid schedule fires within this (29 February on a given weekday: at most 40 years)
# Offsets are sampled this far either side of a moment: every real zone's changes are further apart.
NEAR = timedelta(hours=26)
_SEPARATOR = re.compile(r"[ \t]+")
_NUMBER = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes other scripts' digits


class Field(NamedTuple):
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low + i
    note: str = ""


FIELDS = (
    Field("minute", 0, 59),
    Field("hour", 0, 23),
    Field("day-of-month", 1, 31),
    Field("month", 1, 12, MONTH_NAMES),
    Field("day-of-week", 0, 7, DAY_NAMES, " (0 and 7 are Sunday)"),
)


class CronError(ValueError):
    """An expression crontab(5) would not run; ``field`` names the part at fault (None: the whole)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


@dataclass(frozen=True)
class CronSpec:
    """A parsed expression: the values each field allows, and how the two day fields combine."""

    minutes: tuple[int, ...]  # ascending
    hours: tuple[int, ...]  # ascending
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday ... 6 = Saturday (a 7 is stored as 0)
    either_day: bool  # both day fields restricted: a day matches when either does

    def matches_date(self, day: date) -> bool:
        """Whether the schedule runs at some time of ``day``."""
        if day.month not in self.months:
            return False
        in_days = day.day in self.days
        in_weekdays = day.isoweekday() % 7 in self.weekdays
        return (in_days or in_weekdays) if self.either_day else (in_days and in_weekdays)


def _value(text: str, field: Field) -> int:
    lowered = text.lower()
    if lowered in field.names:
        return field.low + field.names.index(lowered)
    if not _NUMBER.fullmatch(text):
        kind = f"a number or a name ({field.names[0]}-{field.names[-1]})" if field.names else "a number"
        raise CronError(f"{text!r} is not {kind}", field.name)
    value = int(text)
    if not field.low <= value <= field.high:
        raise CronError(f"{value} is out of range {field.low}-{field.high}{field.note}", field.name)
    return value


def _entry(entry: str, field: Field) -> range:
    body, slash, step_text = entry.partition("/")
    if not body:
        raise CronError(f"empty entry in {entry!r}" if entry else "empty list entry", field.name)
    span = field.high - field.low + 1
    step = 1
    if slash:
        if not _NUMBER.fullmatch(step_text) or not 1 <= int(step_text) <= span:
            raise CronError(f"step {step_text!r} must be a whole number from 1 to {span}", field.name)
        step = int(step_text)
    if body == "*":
        return range(field.low, field.high + 1, step)
    first_text, dash, last_text = body.partition("-")
    first = _value(first_text, field)
    if dash:
        last = _value(last_text, field)
        if last < first:
            raise CronError(f"range {body!r} is reversed (ranges do not wrap around)", field.name)
    else:
        last = field.high if slash else first
    return range(first, last + 1, step)


def _field(text: str, field: Field) -> frozenset[int]:
    return frozenset(value for entry in text.split(",") for value in _entry(entry, field))


def parse(expression: str) -> CronSpec:
    """The schedule ``expression`` means under crontab(5), or a ``CronError`` saying which field is wrong."""
    stripped = expression.strip()
    if stripped.startswith("@"):
        if stripped.lower() == "@reboot":
            raise CronError("@reboot is not supported: a plan's schedule names times, not start-ups")
        if stripped.lower() not in MACROS:
            raise CronError(f"unknown macro {stripped!r}: use one of {', '.join(MACROS)}")
        stripped = MACROS[stripped.lower()]
    texts = _SEPARATOR.split(stripped)  # str.split() would also split on control characters
    if len(texts) != len(FIELDS):
        raise CronError(
            f"a cron schedule has 5 fields (minute hour day-of-month month day-of-week) or is a macro such as "
            f"@daily; got {len(texts)} field(s)"
        )
    minutes, hours, days, months, weekdays = (_field(text, field) for text, field in zip(texts, FIELDS, strict=True))
    spec = CronSpec(
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=days,
        months=months,
        weekdays=frozenset(day % 7 for day in weekdays),
        either_day=not texts[2].startswith("*") and not texts[4].startswith("*"),
    )
    if not spec.either_day and not any(day <= DAYS_IN_MONTH[month - 1] for month in months for day in days):
        raise CronError("never happens: none of these days exists in the months named", "day-of-month")
    return spec


def _walls(spec: CronSpec, start: datetime) -> Iterator[datetime]:
    """The wall-clock minutes (naive) at or after ``start`` that ``spec`` matches, in order, for MAX_YEARS."""
    start = start.replace(second=0, microsecond=0)
    day = start.date()
    limit = date(min(day.year + MAX_YEARS, 9999), 1, 1)
    while day < limit:
        if day.month not in spec.months:  # skip to the next month
            day = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
            continue
        if spec.matches_date(day):
            first_day = day == start.date()
            hours = spec.hours[bisect_left(spec.hours, start.hour) :] if first_day else spec.hours
            for hour in hours:
                first_hour = first_day and hour == start.hour
                minutes = spec.minutes[bisect_left(spec.minutes, start.minute) :] if first_hour else spec.minutes
                for minute in minutes:
                    yield datetime.combine(day, time(hour, minute))
        day += timedelta(days=1)


def instants(wall: datetime, zone: ZoneInfo) -> list[datetime]:
    """The UTC instants a naive wall-clock time names in ``zone``, in order.

    Usually one; two in a repeated hour; for a time skipped by a spring-forward,
    its reading with the offset from before the change (later by the gap).
    PEP 495 gives both readings: in a repeated hour ``fold=0`` has the larger
    offset (the earlier instant), in a skipped one the smaller.
    """
    first = wall.replace(tzinfo=zone).utcoffset() or timedelta(0)
    second = wall.replace(tzinfo=zone, fold=1).utcoffset() or timedelta(0)
    naive = [wall - first] if first <= second else [wall - first, wall - second]
    return [moment.replace(tzinfo=UTC) for moment in naive]


def _offsets(zone: ZoneInfo, moment: datetime) -> tuple[timedelta, timedelta]:
    """The smallest and largest UTC offset ``zone`` uses around ``moment``.

    First within NEAR either side; when that finds a change, within one change's
    size either side, so that only moments that close to a change look further.
    """
    reach = NEAR
    for _ in range(2):
        offsets = [
            (moment + shift).astimezone(zone).utcoffset() or timedelta(0) for shift in (-reach, timedelta(0), reach)
        ]
        low, high = min(offsets), max(offsets)
        if low == high:
            break
        reach = high - low
    return low, high


def next_time(spec: CronSpec, zone: ZoneInfo, after: datetime) -> datetime | None:
    """The first instant strictly after ``after`` at which ``spec`` fires in ``zone`` (UTC), or None.

    Wall-clock times and instants are not in the same order around a DST change
    (right after a spring-forward, at 03:15, a skipped 02:30 is still to come:
    it fires at 03:30), so the walk starts at the earliest wall time that can
    name a later instant and stops once no later wall time can name an earlier
    instant than the best found.
    """
    after = after.astimezone(UTC)
    best: datetime | None = None
    horizon: datetime | None = None
    for wall in _walls(spec, after.replace(tzinfo=None) + _offsets(zone, after)[0]):
        if horizon is not None and wall > horizon:
            break
        for instant in instants(wall, zone):
            if instant > after and (best is None or instant < best):
                best = instant
                horizon = best.replace(tzinfo=None) + _offsets(zone, best)[1]
    return best


class CrontabTrigger(BaseTrigger):
    """Fires when a crontab(5) expression matches the wall clock of its timezone (``next_time``).

    Pilot's own rather than APScheduler 3's CronTrigger, which numbers weekdays
    from Monday = 0, ANDs day of month with day of week, drops all but the first
    slot of an hour skipped by DST, and (3.11) loops forever inside a repeated
    hour. Every answer is strictly after the previous fire time, so the
    scheduler always moves forward.
    """

    def __init__(self, expression: str, zone: ZoneInfo) -> None:
        self.expression = expression
        self.zone = zone
        self.spec = parse(expression)

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        """The first time after ``previous_fire_time`` if given (the scheduler collects every due time), else at or
        after ``now``."""
        after = previous_fire_time if previous_fire_time is not None else now - timedelta(microseconds=1)
        return next_time(self.spec, self.zone, after)

    def __str__(self) -> str:
        return f"cron[{self.expression} {self.zone.key}]"


class NeverTrigger(BaseTrigger):
    """A stored schedule that no longer parses (accepted by an older version): its job stays, but never fires."""

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        return None

    def __str__(self) -> str:
        return "cron[invalid: never fires]"
