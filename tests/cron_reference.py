"""A plain crontab(5) reference for the tests, written from the man page (not from cron.py, not APScheduler).

It answers one question per local wall-clock minute, "does this expression match
it?", field by field, and walks a window minute by minute:

- minute 0-59, hour 0-23, day of month 1-31, month 1-12 or jan-dec, day of week
  0-7 or sun-sat, where 0 and 7 are both Sunday;
- an entry is ``*``, a number or name, or a range ``a-b``, optionally followed by
  ``/step``; entries are separated by commas (``n/step`` runs from n to the field's end);
- when both day of month and day of week are restricted (neither starts with
  ``*``), a day matches if either matches; otherwise both must.

Across DST (Pilot's rule, unchanged by the crontab fix): a local time that
happens twice fires at both instants; one skipped by a spring-forward fires at
the instant PEP 495 gives it with ``fold=0`` (later by the gap: 02:30 -> 03:30).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MAX_WINDOW = timedelta(days=40)


def _value(text: str, names: list[str], base: int) -> int:
    if text.lower() in names:
        return names.index(text.lower()) + base
    return int(text)


def entry_matches(entry: str, value: int, low: int, high: int, names: list[str], base: int) -> bool:
    """Whether one comma-separated entry of a field admits ``value``."""
    body, _, step = entry.partition("/")
    if body == "*":
        first, last = low, high
    elif "-" in body:
        start, end = body.split("-")
        first, last = _value(start, names, base), _value(end, names, base)
    else:
        first = _value(body, names, base)
        last = high if step else first
    stride = int(step) if step else 1
    return first <= value <= last and (value - first) % stride == 0


def field_matches(text: str, value: int, low: int, high: int, names: list[str] | None = None, base: int = 0) -> bool:
    return any(entry_matches(entry, value, low, high, names or [], base) for entry in text.split(","))


def matches(expression: str, local: datetime) -> bool:
    """Whether crontab(5) runs ``expression`` at the wall-clock minute ``local``."""
    minute, hour, dom, month, dow = MACROS.get(expression.lower(), expression).split()
    if not (
        field_matches(minute, local.minute, 0, 59)
        and field_matches(hour, local.hour, 0, 23)
        and field_matches(month, local.month, 1, 12, MONTHS, 1)
    ):
        return False
    sunday_is_zero = local.isoweekday() % 7
    day_ok = field_matches(dom, local.day, 1, 31)
    weekday_ok = field_matches(dow, sunday_is_zero, 0, 7, DAYS) or (
        sunday_is_zero == 0 and field_matches(dow, 7, 0, 7, DAYS)
    )
    either = not dom.startswith("*") and not dow.startswith("*")  # both restricted
    return (day_ok or weekday_ok) if either else (day_ok and weekday_ok)


def instants(local: datetime, zone: ZoneInfo) -> set[datetime]:
    """The real instants of a naive local time: one, two (repeated hour) or the fold=0 reading (skipped)."""
    found = set()
    for fold in (0, 1):
        instant = local.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == local:
            found.add(instant)
    return found or {local.replace(tzinfo=zone, fold=0).astimezone(UTC)}


def reference_times(expression: str, zone: ZoneInfo, after: datetime, until: datetime) -> list[datetime]:
    """Every instant t with after < t <= until at which crontab(5) runs ``expression`` in ``zone``, in order."""
    assert until - after <= MAX_WINDOW  # bounded walk
    local = (after.astimezone(zone) - timedelta(days=1)).replace(second=0, microsecond=0, tzinfo=None)
    end = (until.astimezone(zone) + timedelta(days=1)).replace(tzinfo=None)
    times: set[datetime] = set()
    while local <= end:
        if matches(expression, local):
            times |= {t for t in instants(local, zone) if after < t <= until}
        local += timedelta(minutes=1)
    return sorted(times)
