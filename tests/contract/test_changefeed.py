"""The change feed contract: every index adapter records each create, replace and delete in order,
in the same commit as the change, and pages it without gaps or empty pages."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta

import pytest

from shared.core.changefeed import ChangeAction, ChangeFeedQuery, ChangeState
from shared.core.model import InstanceRecord, InstanceUids
from shared.core.ports import MetadataIndex
from tests.contract.records import make_record, new_version, uid


def _record(sop: str | None = None, study: str | None = None) -> InstanceRecord:
    study = study or uid()
    return make_record(InstanceUids(study, study + ".1", sop or uid()), PatientName="Feed^Test")


def _store(index: MetadataIndex, record: InstanceRecord, replace: bool = False) -> None:
    index.commit_instance(record, index.begin_instance(record, replace=replace))


def _all(index: MetadataIndex, **kw: object) -> list:  # type: ignore[type-arg]
    return index.read_changes(ChangeFeedQuery(limit=200, **kw))  # type: ignore[arg-type]


def test_create_replace_delete_recreate_in_order_with_states(index: MetadataIndex) -> None:
    first = _record()
    _store(index, first)
    replaced = dataclasses.replace(first, version=new_version())
    _store(index, replaced, replace=True)
    index.delete(first.uids.study)
    again = dataclasses.replace(first, version=new_version())
    _store(index, again)
    feed = _all(index)
    assert [e.action for e in feed] == [
        ChangeAction.CREATE,
        ChangeAction.REPLACE,
        ChangeAction.DELETE,
        ChangeAction.CREATE,
    ]
    assert [e.version for e in feed] == [first.version, replaced.version, replaced.version, again.version]
    # a version is current while it is the live one, replaced once another is, deleted when none is
    assert [e.state for e in feed] == [
        ChangeState.REPLACED,
        ChangeState.REPLACED,
        ChangeState.REPLACED,
        ChangeState.CURRENT,
    ]
    assert all(e.uids == first.uids for e in feed)
    sequences = [e.sequence for e in feed]
    assert sequences == sorted(sequences) and len(set(sequences)) == 4
    assert index.latest_change() == feed[-1]


def test_a_deleted_instance_is_deleted_in_every_entry(index: MetadataIndex) -> None:
    rec = _record()
    _store(index, rec)
    index.delete(rec.uids.study, rec.uids.series, rec.uids.instance)
    assert [e.state for e in _all(index)] == [ChangeState.DELETED, ChangeState.DELETED]


def test_a_failed_or_aborted_store_appends_nothing(index: MetadataIndex) -> None:
    rec = _record()
    index.abort_instance(index.begin_instance(rec, replace=False))
    assert _all(index) == []
    assert index.latest_change() is None


def test_paging_by_offset_has_no_gaps_and_no_empty_page_before_the_end(index: MetadataIndex) -> None:
    for _ in range(7):
        _store(index, _record())
    pages, offset = [], 0
    while True:
        page = index.read_changes(ChangeFeedQuery(offset=offset, limit=3))
        if not page:
            break
        pages.append(page)
        offset = page[-1].sequence
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [e.sequence for p in pages for e in p] == [e.sequence for e in _all(index)]


def test_deleting_a_study_appends_one_entry_per_instance(index: MetadataIndex) -> None:
    study = uid()
    records = [_record(study=study) for _ in range(3)]
    for rec in records:
        _store(index, rec)
    index.delete(study)
    deletes = [e for e in _all(index) if e.action is ChangeAction.DELETE]
    assert {e.uids.instance for e in deletes} == {r.uids.instance for r in records}


def test_time_window(index: MetadataIndex) -> None:
    early = _record()
    _store(index, early)
    time.sleep(0.05)
    middle = datetime.now(UTC)
    time.sleep(0.05)
    late = _record()
    _store(index, late)
    after = _all(index, start=middle)
    before = _all(index, end=middle)
    assert [e.uids for e in after] == [late.uids]
    assert [e.uids for e in before] == [early.uids]
    assert _all(index, start=middle + timedelta(days=1)) == []
    for entry in _all(index):
        assert entry.timestamp.tzinfo is not None


def test_unpublished_until_marked(index: MetadataIndex) -> None:
    a, b = _record(), _record()
    _store(index, a)
    _store(index, b)
    pending = index.unpublished_changes(10)
    assert [e.uids for e in pending] == [a.uids, b.uids]
    index.mark_published([pending[0].sequence])
    assert [e.uids for e in index.unpublished_changes(10)] == [b.uids]
    index.mark_published([pending[1].sequence])
    assert index.unpublished_changes(10) == []


@pytest.mark.parametrize("limit", [1, 2])
def test_unpublished_respects_the_limit_oldest_first(index: MetadataIndex, limit: int) -> None:
    records = [_record() for _ in range(3)]
    for rec in records:
        _store(index, rec)
    assert [e.uids for e in index.unpublished_changes(limit)] == [r.uids for r in records[:limit]]
