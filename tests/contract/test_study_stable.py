"""The study-stable contract: every index adapter says which studies have had no change since a
cutoff and were not announced stable since their last change, and records announcements.

Cutoffs are taken from the change feed's own timestamps, so no test sleeps."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.core.changefeed import ChangeFeedEntry, ChangeFeedQuery
from shared.core.model import InstanceRecord, InstanceUids
from shared.core.ports import MetadataIndex
from tests.contract.records import make_record, new_version, uid

TICK = timedelta(microseconds=1)


def _record(study: str, series: str | None = None) -> InstanceRecord:
    return make_record(InstanceUids(study, series or study + ".1", uid()), PatientName="Stable^Test")


def _store(index: MetadataIndex, record: InstanceRecord, replace: bool = False) -> ChangeFeedEntry:
    index.commit_instance(record, index.begin_instance(record, replace=replace))
    latest = index.latest_change()
    assert latest is not None
    return latest


def _after(entry: ChangeFeedEntry) -> datetime:
    """A cutoff just after the entry: its change counts as quiet."""
    return entry.timestamp + TICK


def _feed(index: MetadataIndex) -> list[ChangeFeedEntry]:
    return index.read_changes(ChangeFeedQuery(limit=200))


def test_a_quiet_study_is_due_once_with_its_last_change(index: MetadataIndex) -> None:
    study = uid()
    entries = [_store(index, _record(study)) for _ in range(5)]
    last = entries[-1]
    due = index.quiet_studies(_after(last), 10)
    assert due == [(study, last.sequence, last.timestamp)]
    index.mark_study_stable(study, last.sequence)
    assert index.quiet_studies(_after(last), 10) == []
    assert index.quiet_studies(_after(last) + timedelta(days=1), 10) == []


def test_the_time_is_timezone_aware_utc(index: MetadataIndex) -> None:
    entry = _store(index, _record(uid()))
    ((_study, _sequence, time),) = index.quiet_studies(_after(entry), 10)
    assert time.tzinfo is not None and time.utcoffset() == timedelta(0)


def test_a_cutoff_in_another_time_zone_means_the_same_instant(index: MetadataIndex) -> None:
    entry = _store(index, _record(uid()))
    plus_two = _after(entry).astimezone(timezone(timedelta(hours=2)))
    assert [s for s, _, _ in index.quiet_studies(plus_two, 10)] == [entry.uids.study]
    minus_five = entry.timestamp.astimezone(timezone(timedelta(hours=-5)))
    assert index.quiet_studies(minus_five, 10) == []


def test_a_study_with_a_change_at_or_after_the_cutoff_is_not_quiet(index: MetadataIndex) -> None:
    study = uid()
    _store(index, _record(study))
    second = _store(index, _record(study))
    assert index.quiet_studies(second.timestamp, 10) == []  # the cutoff is exclusive
    assert [s for s, _, _ in index.quiet_studies(_after(second), 10)] == [study]


def test_a_later_change_makes_an_announced_study_due_again(index: MetadataIndex) -> None:
    study = uid()
    rec = _record(study)
    first = _store(index, rec)
    index.mark_study_stable(study, first.sequence)
    replaced = _store(index, dataclasses.replace(rec, version=new_version()), replace=True)
    assert index.quiet_studies(replaced.timestamp, 10) == []  # not quiet yet
    assert index.quiet_studies(_after(replaced), 10) == [(study, replaced.sequence, replaced.timestamp)]


def test_a_deleted_study_is_due_again_after_its_delete(index: MetadataIndex) -> None:
    study = uid()
    created = _store(index, _record(study))
    index.mark_study_stable(study, created.sequence)
    index.delete(study)
    deleted = _feed(index)[-1]
    assert index.quiet_studies(_after(deleted), 10) == [(study, deleted.sequence, deleted.timestamp)]


def test_announcements_never_go_back(index: MetadataIndex) -> None:
    study = uid()
    first = _store(index, _record(study))
    second = _store(index, _record(study))
    index.mark_study_stable(study, second.sequence)
    index.mark_study_stable(study, first.sequence)  # a late, older announcement
    assert index.quiet_studies(_after(second), 10) == []


def test_an_announcement_before_the_last_change_leaves_the_study_due(index: MetadataIndex) -> None:
    study = uid()
    first = _store(index, _record(study))
    second = _store(index, _record(study))
    index.mark_study_stable(study, first.sequence)
    assert index.quiet_studies(_after(second), 10) == [(study, second.sequence, second.timestamp)]


@pytest.mark.parametrize("limit", [1, 2, 3, 10], ids=lambda n: f"limit={n}")
def test_oldest_last_change_first_within_the_limit(index: MetadataIndex, limit: int) -> None:
    studies = [uid() for _ in range(3)]
    for study in studies:
        _store(index, _record(study))
    # the first study changes again last: its last change is now the newest
    last = _store(index, _record(studies[0]))
    due = index.quiet_studies(_after(last), limit)
    assert [s for s, _, _ in due] == [studies[1], studies[2], studies[0]][:limit]


def test_studies_are_announced_independently(index: MetadataIndex) -> None:
    a, b = uid(), uid()
    ea = _store(index, _record(a))
    eb = _store(index, _record(b))
    index.mark_study_stable(a, ea.sequence)
    assert index.quiet_studies(_after(eb), 10) == [(b, eb.sequence, eb.timestamp)]


def test_a_study_active_during_an_empty_search_is_still_found_later(index: MetadataIndex) -> None:
    """After a search that finds nothing due (the SQL index then settles what it can), a study that
    was still active at that cutoff, or that changes afterwards, is found once it is quiet."""
    old, active = uid(), uid()
    e_old = _store(index, _record(old))
    e_active = _store(index, _record(active))
    between = _after(e_old)
    if between > e_active.timestamp:
        pytest.skip("the two changes share a timestamp on this clock")
    assert index.quiet_studies(between, 10) == [(old, e_old.sequence, e_old.timestamp)]
    index.mark_study_stable(old, e_old.sequence)
    assert index.quiet_studies(between, 10) == []  # nothing due at that cutoff
    assert index.quiet_studies(between, 10) == []  # and again (the settled mark holds)
    assert index.quiet_studies(_after(e_active), 10) == [(active, e_active.sequence, e_active.timestamp)]
    index.mark_study_stable(active, e_active.sequence)
    assert index.quiet_studies(_after(e_active) + timedelta(hours=1), 10) == []
    again = _store(index, _record(old))
    assert index.quiet_studies(_after(again), 10) == [(old, again.sequence, again.timestamp)]


def test_an_empty_index_has_no_quiet_studies(index: MetadataIndex) -> None:
    assert index.quiet_studies(datetime.now(UTC) + timedelta(days=1), 10) == []
