"""MetadataIndex contract, the edges of begin/commit the store pipeline relies on: a pending row met
by another store (taken over, or refused when it is elsewhere), and a study whose names change from
one stored instance to the next (name searches follow the latest names, and only them)."""

from __future__ import annotations

import dataclasses

import pytest

from shared.core.attributes import Level
from shared.core.errors import Conflict
from shared.core.model import InstanceRecord, InstanceUids, PendingInstance
from shared.core.ports import MetadataIndex
from tests.contract.records import MR_IMAGE, make_record, new_version, query, stored, uid

STUDY, SERIES = uid(7), uid(7, 1)


def record(
    instance: str | None = None, *, study: str = STUDY, series: str = SERIES, **kw: object
) -> InstanceRecord:
    keywords = {"PatientName": "Doe^Jane", "ReferringPhysicianName": "Who^Doctor", **kw}
    return make_record(InstanceUids(study, series, instance or uid()), Modality="CT", **keywords)


def store(index: MetadataIndex, rec: InstanceRecord) -> None:
    index.commit_instance(rec, index.begin_instance(rec, replace=False))


def fuzzy(index: MetadataIndex, keyword: str, value: str) -> list[str]:
    return [h.study for h in index.search(query(Level.STUDY, f"{keyword}={value}&fuzzymatching=true"))]


# --- a pending row met by another store -------------------------------------------------------


def test_a_replace_while_the_first_store_is_pending_takes_it_over(index: MetadataIndex) -> None:
    first = record()
    stale = index.begin_instance(first, replace=False)
    retry = dataclasses.replace(first, version=new_version(), sop_class_uid=MR_IMAGE, size=4321)
    pending = index.begin_instance(retry, replace=True)
    assert pending == PendingInstance(retry.uids, retry.version, None)  # nothing committed to replace
    index.commit_instance(retry, pending)
    assert index.find_instances(STUDY) == [stored(retry)]
    with pytest.raises(Conflict):
        index.commit_instance(first, stale)
    index.abort_instance(stale)
    assert index.find_instances(STUDY) == [stored(retry)]
    assert [e.version for e in index.unpublished_changes(10)] == [retry.version]


@pytest.mark.parametrize("replace", [False, True], ids=["create", "replace"])
def test_a_pending_row_in_another_series_is_a_conflict_and_stays(index: MetadataIndex, replace: bool) -> None:
    first = record()
    pending = index.begin_instance(first, replace=False)
    moved = dataclasses.replace(record(first.uids.instance, series=uid(7, 2)), version=new_version())
    with pytest.raises(Conflict):
        index.begin_instance(moved, replace=replace)
    index.commit_instance(first, pending)  # the first store was not disturbed
    assert index.find_instances(STUDY) == [stored(first)]


def test_a_takeover_of_a_takeover_leaves_only_the_last_one_able_to_commit(index: MetadataIndex) -> None:
    rec = record()
    versions = [dataclasses.replace(rec, version=new_version()) for _ in range(3)]
    pendings = [index.begin_instance(v, replace=False) for v in versions]
    for v, p in zip(versions[:2], pendings[:2], strict=True):
        with pytest.raises(Conflict):
            index.commit_instance(v, p)
    index.commit_instance(versions[2], pendings[2])
    assert index.find_instances(STUDY) == [stored(versions[2])]


# --- a study's names change ---------------------------------------------------------------------


def test_name_searches_follow_the_latest_names_of_a_study(index: MetadataIndex) -> None:
    other = uid(8)
    store(index, record(study=other, series=uid(8, 1), PatientName="Roe^Other", ReferringPhysicianName=None))
    store(index, record())
    store(index, record())  # the same names again: still found, once
    assert fuzzy(index, "PatientName", "jan") == [STUDY]
    assert fuzzy(index, "ReferringPhysicianName", "doc") == [STUDY]
    store(index, record(PatientName="Roe^Richard"))  # renamed by a later instance
    assert fuzzy(index, "PatientName", "jan") == []
    assert sorted(fuzzy(index, "PatientName", "roe")) == sorted([STUDY, other])
    assert fuzzy(index, "PatientName", "rich") == [STUDY]
    assert fuzzy(index, "ReferringPhysicianName", "doc") == [STUDY]  # unchanged, still there
    store(index, record(PatientName="Roe^Richard", ReferringPhysicianName="Kildare^James"))
    assert fuzzy(index, "ReferringPhysicianName", "doc") == []
    assert fuzzy(index, "ReferringPhysicianName", "kil") == [STUDY]
    assert fuzzy(index, "PatientName", "rich") == [STUDY]
    store(index, record(PatientName="Doe^Jane"))  # back to the first name
    assert fuzzy(index, "PatientName", "jan") == [STUDY]
    assert fuzzy(index, "PatientName", "rich") == []
    assert fuzzy(index, "PatientName", "roe") == [other]


def test_a_name_left_out_by_a_later_instance_is_no_longer_found(index: MetadataIndex) -> None:
    store(index, record())
    store(index, record(PatientName=None))
    assert fuzzy(index, "PatientName", "jan") == []
    assert fuzzy(index, "ReferringPhysicianName", "doc") == [STUDY]
    store(index, record(PatientName="Doe^Jane"))
    assert fuzzy(index, "PatientName", "jan") == [STUDY]


def test_a_renaming_instance_that_does_not_commit_leaves_the_names(index: MetadataIndex) -> None:
    store(index, record())
    renamed = record(PatientName="Roe^Richard")
    index.abort_instance(index.begin_instance(renamed, replace=False))
    assert fuzzy(index, "PatientName", "jan") == [STUDY]
    assert fuzzy(index, "PatientName", "rich") == []


# --- a study's other attributes change ----------------------------------------------------------


def _studies(index: MetadataIndex, query_string: str) -> list[str]:
    return [h.study for h in index.search(query(Level.STUDY, query_string))]


@pytest.mark.parametrize(
    ("keyword", "first", "later"),
    [
        ("PatientID", "PID-A", "PID-B"),
        ("AccessionNumber", "ACC-A", "ACC-B"),
        ("StudyDate", "20240102", "20240315"),
        ("StudyDescription", "Head", "Chest"),
        ("PatientSex", "F", "O"),
    ],
)
def test_a_later_instance_that_changes_a_study_attribute_moves_the_study(
    index: MetadataIndex, keyword: str, first: str, later: str
) -> None:
    store(index, record(**{keyword: first}))
    store(index, record(**{keyword: first}))  # the same attributes again: found, once
    assert _studies(index, f"{keyword}={first}") == [STUDY]
    store(index, record(**{keyword: later}))
    assert _studies(index, f"{keyword}={first}") == []
    assert _studies(index, f"{keyword}={later}") == [STUDY]
    [hit] = index.search(query(Level.STUDY, f"StudyInstanceUID={STUDY}&includefield={keyword}"))
    assert later in str(hit.attrs)
    store(index, record(**{keyword: first}))  # and back
    assert _studies(index, f"{keyword}={later}") == []
    assert _studies(index, f"{keyword}={first}") == [STUDY]
