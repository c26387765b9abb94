"""NCRONTAB schedules of timer triggers: parsing and next occurrences (reference tables)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from devhost.ncrontab import CronSchedule

# 2024-01-01 is a Monday; 2024 is a leap year.
NEXT_CASES = [
    ("0 */1 * * * *", "2024-01-01T10:00:00", "2024-01-01T10:01:00", "every-minute-on-the-minute"),
    ("0 */5 * * * *", "2024-01-01T10:03:27", "2024-01-01T10:05:00", "every-5-minutes"),
    ("*/15 * * * * *", "2024-01-01T10:00:14", "2024-01-01T10:00:15", "every-15-seconds"),
    ("*/15 * * * * *", "2024-01-01T10:00:59", "2024-01-01T10:01:00", "seconds-carry-into-minutes"),
    ("* * * * * *", "2024-01-01T10:00:00.500000", "2024-01-01T10:00:01", "microseconds-dropped"),
    ("0 0 0 1 1 *", "2024-01-01T00:00:00", "2025-01-01T00:00:00", "strictly-after-an-occurrence"),
    ("0 30 9 * * 1-5", "2024-03-01T10:00:00", "2024-03-04T09:30:00", "weekdays-skip-the-weekend"),
    ("0 0 0 * * 0", "2024-01-01T00:00:00", "2024-01-07T00:00:00", "day-of-week-0-is-sunday"),
    ("0 0 0 * * 6", "2024-01-01T00:00:00", "2024-01-06T00:00:00", "day-of-week-6-is-saturday"),
    ("0 0 0 29 2 *", "2023-03-01T00:00:00", "2024-02-29T00:00:00", "leap-day"),
    ("0 0 0 31 * *", "2024-04-01T00:00:00", "2024-05-31T00:00:00", "skips-months-without-a-31st"),
    ("0 0 12 13 * 5", "2024-01-01T00:00:00", "2024-09-13T12:00:00", "day-and-weekday-both-match"),
    ("5/20 * * * * *", "2024-01-01T10:00:26", "2024-01-01T10:00:45", "start-with-step-runs-to-max"),
    ("10-20/5 0 0 * * *", "2024-01-01T00:00:12", "2024-01-01T00:00:15", "range-with-step"),
    ("0 0 9,17 * * *", "2024-01-01T09:00:00", "2024-01-01T17:00:00", "list-of-hours"),
    ("0 0 0 * JUL Sun", "2024-01-01T00:00:00", "2024-07-07T00:00:00", "month-and-day-names"),
    ("0 0 0 1 feb-mar *", "2024-02-02T00:00:00", "2024-03-01T00:00:00", "range-of-month-names"),
    ("59 59 23 31 12 *", "2024-12-31T23:59:59", "2025-12-31T23:59:59", "year-rollover"),
    ("30 8 * * *", "2024-01-01T09:00:00", "2024-01-02T08:30:00", "five-fields-mean-second-0"),
    ("0 0 */6 * * *", "2024-01-31T23:00:00", "2024-02-01T00:00:00", "month-rollover"),
]


@pytest.mark.parametrize(
    ("expression", "after", "expected"), [c[:3] for c in NEXT_CASES], ids=[c[3] for c in NEXT_CASES]
)
def test_next_occurrence(expression: str, after: str, expected: str) -> None:
    schedule = CronSchedule.parse(expression)
    found = schedule.next_after(datetime.fromisoformat(after))
    assert found == datetime.fromisoformat(expected)
    assert found is not None and schedule.matches(found)


def test_impossible_date_never_occurs() -> None:
    assert CronSchedule.parse("0 0 0 30 2 *").next_after(datetime(2024, 1, 1)) is None


def test_next_occurrence_keeps_the_time_zone() -> None:
    paris = ZoneInfo("Europe/Paris")
    found = CronSchedule.parse("0 0 9 * * *").next_after(datetime(2024, 6, 1, 10, 0, tzinfo=paris))
    assert found == datetime(2024, 6, 2, 9, 0, tzinfo=paris)
    assert found is not None and found.tzinfo is paris


BRUTE_FORCE_SCHEDULES = ["*/7 3-5 * * * 1,4", "0 0 */3 * * *", "30 15 10 * * *", "0-10/4 59 23 * * *"]


@pytest.mark.parametrize("expression", BRUTE_FORCE_SCHEDULES)
def test_next_occurrence_is_the_first_matching_second(expression: str) -> None:
    """Against a second-by-second walk over three days from a few starting points."""
    schedule = CronSchedule.parse(expression)
    for start in (datetime(2024, 2, 28, 23, 58, 30), datetime(2024, 1, 2, 3, 4, 59), datetime(2023, 12, 31)):
        expected = None
        moment = start + timedelta(seconds=1)
        while moment < start + timedelta(days=3):
            if schedule.matches(moment):
                expected = moment
                break
            moment += timedelta(seconds=1)
        assert expected is not None
        assert schedule.next_after(start) == expected, (expression, start)


def test_aware_utc_datetimes_work() -> None:
    found = CronSchedule.parse("0 */1 * * * *").next_after(datetime(2024, 1, 1, 10, 0, 30, tzinfo=UTC))
    assert found == datetime(2024, 1, 1, 10, 1, tzinfo=UTC)


FIELD_CASES = [
    ("1,2,3 * * * * *", "seconds", (1, 2, 3), "list"),
    ("3,1,2,1 * * * * *", "seconds", (1, 2, 3), "unordered-list-with-repeats"),
    ("0 0-4,50-59/5 * * * *", "minutes", (0, 1, 2, 3, 4, 50, 55), "range-and-stepped-range"),
    ("0 0 */8 * * *", "hours", (0, 8, 16), "step-over-all-hours"),
    ("0 0 0 */10 * *", "days", (1, 11, 21, 31), "days-start-at-1"),
    ("0 0 0 * */4 *", "months", (1, 5, 9), "months-start-at-1"),
    ("0 0 0 * * mon-fri", "weekdays", (1, 2, 3, 4, 5), "weekday-names"),
    ("0 0 0 * * *", "weekdays", (0, 1, 2, 3, 4, 5, 6), "every-weekday"),
]


@pytest.mark.parametrize(
    ("expression", "field", "values"), [c[:3] for c in FIELD_CASES], ids=[c[3] for c in FIELD_CASES]
)
def test_field_values(expression: str, field: str, values: tuple[int, ...]) -> None:
    assert getattr(CronSchedule.parse(expression), field) == values


INVALID_CASES = [
    ("", "needs 6 fields", "empty"),
    ("* * * *", "needs 6 fields", "four-fields"),
    ("* * * * * * *", "needs 6 fields", "seven-fields"),
    ("60 * * * * *", "second field", "second-out-of-range"),
    ("0 0 24 * * *", "hour field", "hour-out-of-range"),
    ("0 0 0 0 * *", "day field", "day-0"),
    ("0 0 0 * 13 *", "month field", "month-13"),
    ("0 0 0 * * 7", "day-of-week field", "day-of-week-7"),
    ("*/0 * * * * *", "bad step", "step-0"),
    ("5-1 * * * * *", "runs backwards", "backwards-range"),
    ("a * * * * *", "not a number", "letters"),
    ("1,,2 * * * * *", "empty item", "empty-list-item"),
    ("0 0 0 * * funday", "not a number", "unknown-day-name"),
    ("-1 * * * * *", "not a number", "negative"),
]


@pytest.mark.parametrize(
    ("expression", "message"), [c[:2] for c in INVALID_CASES], ids=[c[2] for c in INVALID_CASES]
)
def test_invalid_expressions_are_refused(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CronSchedule.parse(expression)
