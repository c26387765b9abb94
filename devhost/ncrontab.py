"""NCRONTAB schedules of timer triggers: `second minute hour day month day-of-week`.

The Functions host parses `schedule` with NCrontab: six fields (a five-field expression, without
seconds, is accepted too, its second being 0). Each field is a comma list of `*`, `n`, `a-b`,
with an optional step `/n` (`*/15`, `10-30/5`, `5/20` = from 5 to the maximum by 20). Months
accept `jan`..`dec` and days of week `sun`..`sat` (0 = Sunday .. 6 = Saturday), any case.
As in NCrontab (and unlike Vixie cron), a day must match both the day-of-month and the
day-of-week fields: `0 0 12 13 * 5` is noon on Friday the 13th only.
"""

from __future__ import annotations

import bisect
import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["CronSchedule"]

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, lowest, highest, names of the values from `lowest` on)
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 6, _DAYS),
)
_SEARCH_YEARS = 10  # Feb 29 on a given weekday can be years away; further means never


def _value(text: str, field: str, low: int, high: int, names: tuple[str, ...]) -> int:
    lowered = text.lower()
    if lowered in names:
        return low + names.index(lowered)
    if not text.isdigit():
        raise ValueError(f"{field} field: {text!r} is not a number")
    number = int(text)
    if not low <= number <= high:
        raise ValueError(f"{field} field: {number} is outside {low}-{high}")
    return number


def _parse_field(text: str, field: str, low: int, high: int, names: tuple[str, ...]) -> tuple[int, ...]:
    values: set[int] = set()
    for item in text.split(","):
        body, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{field} field: bad step in {item!r}")
            step = int(step_text)
        if body == "*":
            first, last = low, high
        elif "-" in body:
            start, _, end = body.partition("-")
            first = _value(start, field, low, high, names)
            last = _value(end, field, low, high, names)
            if first > last:
                raise ValueError(f"{field} field: range {body!r} runs backwards")
        elif body:
            first = _value(body, field, low, high, names)
            last = high if slash else first
        else:
            raise ValueError(f"{field} field: empty item in {text!r}")
        values.update(range(first, last + 1, step))
    return tuple(sorted(values))


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A parsed NCRONTAB expression; `next_after` gives its occurrences."""

    text: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]  # 0 = Sunday

    @classmethod
    def parse(cls, text: str) -> CronSchedule:
        """Parse six (or five, without seconds) fields; ValueError names the bad field."""
        fields = text.split()
        if len(fields) == 5:
            fields = ["0", *fields]
        if len(fields) != 6:
            raise ValueError(f"NCRONTAB expression {text!r} needs 6 fields, has {len(text.split())}")
        parsed = [_parse_field(value, *spec) for value, spec in zip(fields, _FIELDS, strict=True)]
        return cls(text, *parsed)

    def matches(self, moment: datetime) -> bool:
        """True when `moment` (to the second) is an occurrence."""
        return (
            moment.second in self.seconds
            and moment.minute in self.minutes
            and moment.hour in self.hours
            and self._day_matches(moment)
        )

    def _day_matches(self, moment: datetime) -> bool:
        weekday = (moment.weekday() + 1) % 7  # Python: Monday = 0; cron: Sunday = 0
        return moment.month in self.months and moment.day in self.days and weekday in self.weekdays

    def next_after(self, moment: datetime) -> datetime | None:
        """The first occurrence strictly after `moment`, in its wall-clock time and tzinfo.

        None when there is none within ten years (say, `0 0 0 30 2 *`: February 30th).
        """
        current = moment.replace(microsecond=0) + timedelta(seconds=1)
        limit = moment.year + _SEARCH_YEARS
        while current.year <= limit:
            if not self._day_matches(current):
                current = self._next_day(current)
                continue
            found = self._time_on_day(current)
            if found is not None:
                return found
            current = current.replace(hour=0, minute=0, second=0) + timedelta(days=1)
        return None

    def _next_day(self, current: datetime) -> datetime:
        """Midnight of the next day that may match (skipping months that cannot)."""
        index = bisect.bisect_left(self.months, current.month)
        if index == len(self.months):
            return current.replace(
                year=current.year + 1, month=self.months[0], day=1, hour=0, minute=0, second=0
            )
        month = self.months[index]
        if month != current.month:
            return current.replace(month=month, day=1, hour=0, minute=0, second=0)
        last_day = calendar.monthrange(current.year, current.month)[1]
        if current.day >= last_day:
            if month == 12:
                return current.replace(year=current.year + 1, month=1, day=1, hour=0, minute=0, second=0)
            return current.replace(month=month + 1, day=1, hour=0, minute=0, second=0)
        return current.replace(day=current.day + 1, hour=0, minute=0, second=0)

    def _time_on_day(self, current: datetime) -> datetime | None:
        """The first matching time at or after `current` on the same day, or None."""
        start = (current.hour, current.minute, current.second)
        for hour in self.hours[bisect.bisect_left(self.hours, start[0]) :]:
            minutes = self.minutes
            if hour == start[0]:
                minutes = minutes[bisect.bisect_left(minutes, start[1]) :]
            for minute in minutes:
                seconds = self.seconds
                if (hour, minute) == start[:2]:
                    seconds = seconds[bisect.bisect_left(seconds, start[2]) :]
                if seconds:
                    return current.replace(hour=hour, minute=minute, second=seconds[0])
        return None
