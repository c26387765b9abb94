"""MetadataIndex contract, storing and deleting: every adapter in conftest.INDEXES behaves the same.

The store pipeline (shared/core/store.py) calls begin_instance -> writes blobs -> commit_instance,
and abort_instance when anything fails; these tests hold the index to what that pipeline needs.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shared.core.attributes import Level
from shared.core.errors import Conflict
from shared.core.model import InstanceRecord, InstanceUids, PendingInstance, SearchHit
from shared.core.ports import MetadataIndex
from tests.contract.conftest import ConnectIndex
from tests.contract.records import make_record, new_version, query, stored, uid

STUDY, SERIES, OTHER_SERIES, OTHER_STUDY = uid(1), uid(1, 1), uid(1, 2), uid(2)


def record(
    instance: str | None = None,
    *,
    study: str = STUDY,
    series: str = SERIES,
    number: int | None = 1,
    **kw: Any,
) -> InstanceRecord:
    return make_record(
        InstanceUids(study, series, instance or uid()),
        PatientName=kw.pop("PatientName", "Doe^Jane"),
        PatientID=kw.pop("PatientID", "PID-1"),
        StudyDate=kw.pop("StudyDate", "20240102"),
        Modality=kw.pop("Modality", "CT"),
        SeriesNumber=kw.pop("SeriesNumber", 1),
        InstanceNumber=number,
        **kw,
    )


def store(index: MetadataIndex, rec: InstanceRecord, *, replace: bool = False) -> PendingInstance:
    pending = index.begin_instance(rec, replace=replace)
    index.commit_instance(rec, pending)
    return pending


def keys(hits: list[SearchHit]) -> list[tuple[str, str | None, str | None]]:
    return [(h.study, h.series, h.instance) for h in hits]


def visible(index: MetadataIndex, rec: InstanceRecord) -> dict[str, bool]:
    """Whether the record's study, series and instance are found by search, and by find_instances."""
    u = rec.uids
    return {
        "study": bool(index.search(query(Level.STUDY, f"StudyInstanceUID={u.study}"))),
        "series": bool(index.search(query(Level.SERIES, f"SeriesInstanceUID={u.series}"))),
        "instance": bool(index.search(query(Level.INSTANCE, f"SOPInstanceUID={u.instance}"))),
        "find": bool(index.find_instances(u.study, u.series, u.instance)),
    }


def counts(index: MetadataIndex, study: str) -> tuple[int, int]:
    [hit] = index.search(query(Level.STUDY, f"StudyInstanceUID={study}"))
    return hit.attrs["00201206"]["Value"][0], hit.attrs["00201208"]["Value"][0]


NOWHERE = dict.fromkeys(("study", "series", "instance", "find"), False)
EVERYWHERE = dict.fromkeys(("study", "series", "instance", "find"), True)


# --- begin / commit / abort ---------------------------------------------------------------------


def test_a_committed_instance_is_found_at_every_scope(index: MetadataIndex) -> None:
    rec = record()
    pending = index.begin_instance(rec, replace=False)
    assert pending == PendingInstance(rec.uids, rec.version, None)
    index.commit_instance(rec, pending)
    expected = [stored(rec)]
    assert index.find_instances(STUDY) == expected
    assert index.find_instances(STUDY, SERIES) == expected
    assert index.find_instances(STUDY, SERIES, rec.uids.instance) == expected
    assert index.find_instances(STUDY, OTHER_SERIES) == []
    assert index.find_instances(OTHER_STUDY) == []
    assert visible(index, rec) == EVERYWHERE


def test_a_pending_instance_is_invisible(index: MetadataIndex) -> None:
    rec = record()
    index.begin_instance(rec, replace=False)
    assert index.find_instances(STUDY) == []
    assert index.find_instances(STUDY, SERIES, rec.uids.instance) == []
    assert visible(index, rec) == NOWHERE
    for level in Level:
        assert index.search(query(level)) == []


def test_a_pending_instance_in_a_committed_series_is_not_counted(index: MetadataIndex) -> None:
    first = record(number=1)
    store(index, first)
    second, third = record(number=2), record(series=OTHER_SERIES, number=1, Modality="MR")
    index.begin_instance(second, replace=False)
    index.begin_instance(third, replace=False)
    assert index.find_instances(STUDY) == [stored(first)]
    assert counts(index, STUDY) == (1, 1)
    [study_hit] = index.search(query(Level.STUDY))
    assert study_hit.attrs["00080061"]["Value"] == ["CT"]
    [series_hit] = index.search(query(Level.SERIES))
    assert series_hit.attrs["00201209"]["Value"] == [1]
    assert keys(index.search(query(Level.INSTANCE))) == [(STUDY, SERIES, first.uids.instance)]


def test_abort_forgets_the_pending_instance_and_a_retry_succeeds(index: MetadataIndex) -> None:
    rec = record()
    index.abort_instance(index.begin_instance(rec, replace=False))
    assert index.find_instances(STUDY) == []
    assert visible(index, rec) == NOWHERE
    retry = dataclasses.replace(rec, version=new_version())
    store(index, retry)
    assert index.find_instances(STUDY) == [stored(retry)]


def test_a_committed_instance_cannot_be_stored_again_without_replace(index: MetadataIndex) -> None:
    rec = record()
    store(index, rec)
    with pytest.raises(Conflict):
        index.begin_instance(dataclasses.replace(rec, version=new_version(), size=5), replace=False)
    assert index.find_instances(STUDY) == [stored(rec)]


def test_replace_swaps_the_version_only_at_commit(index: MetadataIndex) -> None:
    old = record(PatientName="Old^Name")
    store(index, old)
    new = dataclasses.replace(
        record(old.uids.instance, PatientName="New^Name"), size=2222, number_of_frames=3
    )
    pending = index.begin_instance(new, replace=True)
    assert pending == PendingInstance(new.uids, new.version, old.version)
    assert index.find_instances(STUDY) == [stored(old)]
    assert len(index.search(query(Level.STUDY, "PatientName=Old^Name"))) == 1
    assert index.search(query(Level.STUDY, "PatientName=New^Name")) == []
    index.commit_instance(new, pending)
    assert index.find_instances(STUDY) == [stored(new)]
    assert index.search(query(Level.STUDY, "PatientName=Old^Name")) == []
    assert len(index.search(query(Level.STUDY, "PatientName=New^Name"))) == 1
    assert counts(index, STUDY) == (1, 1)


def test_an_aborted_replacement_keeps_the_old_version(index: MetadataIndex) -> None:
    old = record()
    store(index, old)
    new = dataclasses.replace(old, version=new_version())
    index.abort_instance(index.begin_instance(new, replace=True))
    assert index.find_instances(STUDY) == [stored(old)]
    assert visible(index, old) == EVERYWHERE
    newer = dataclasses.replace(old, version=new_version())
    assert store(index, newer, replace=True).replaces == old.version
    assert index.find_instances(STUDY) == [stored(newer)]


def test_replace_of_a_missing_instance_is_a_plain_store(index: MetadataIndex) -> None:
    rec = record()
    pending = index.begin_instance(rec, replace=True)
    assert pending.replaces is None
    index.commit_instance(rec, pending)
    assert index.find_instances(STUDY) == [stored(rec)]


@pytest.mark.parametrize("replace", [False, True], ids=["create", "replace"])
@pytest.mark.parametrize(
    ("study", "series"),
    [(OTHER_STUDY, uid(2, 1)), (STUDY, OTHER_SERIES)],
    ids=["other-study", "other-series"],
)
def test_the_same_sop_instance_uid_elsewhere_is_a_conflict(
    index: MetadataIndex, replace: bool, study: str, series: str
) -> None:
    rec = record()
    store(index, rec)
    moved = record(rec.uids.instance, study=study, series=series)
    with pytest.raises(Conflict):
        index.begin_instance(moved, replace=replace)
    assert index.find_instances(STUDY) == [stored(rec)]
    assert index.find_instances(study, series) == (
        [stored(rec)] if study == STUDY and series == SERIES else []
    )
    assert len(index.search(query(Level.INSTANCE))) == 1


def test_a_pending_row_left_by_a_crash_is_taken_over(connect_index: ConnectIndex) -> None:
    crashed, index = connect_index(), connect_index()
    first = record()
    stale = crashed.begin_instance(first, replace=False)  # ... and the process died
    retry = dataclasses.replace(first, version=new_version())
    pending = index.begin_instance(retry, replace=False)
    assert pending == PendingInstance(retry.uids, retry.version, None)
    index.commit_instance(retry, pending)
    assert index.find_instances(STUDY) == [stored(retry)]
    with pytest.raises(Conflict):
        crashed.commit_instance(first, stale)  # the stale writer woke up: it lost
    crashed.abort_instance(stale)  # ... and its undo must not remove the winner
    assert index.find_instances(STUDY) == [stored(retry)]


def test_a_stale_pending_cannot_commit_over_a_takeover(index: MetadataIndex) -> None:
    first = record()
    stale = index.begin_instance(first, replace=False)
    retry = dataclasses.replace(first, version=new_version())
    pending = index.begin_instance(retry, replace=False)
    with pytest.raises(Conflict):
        index.commit_instance(first, stale)
    index.commit_instance(retry, pending)
    assert index.find_instances(STUDY) == [stored(retry)]


@pytest.mark.parametrize("round_", range(4))
def test_concurrent_stores_of_one_new_instance_have_exactly_one_winner(
    connect_index: ConnectIndex, round_: int
) -> None:
    writers = 6
    clients = [connect_index() for _ in range(writers)]
    instance = uid(9, round_)
    records = [record(instance, size=100 + n) for n in range(writers)]
    start = threading.Barrier(writers)

    def store_like_the_pipeline(n: int) -> str:
        start.wait(timeout=30)
        try:
            pending = clients[n].begin_instance(records[n], replace=False)
        except Conflict:
            return "conflict at begin"
        try:
            clients[n].commit_instance(records[n], pending)
        except Conflict:
            clients[n].abort_instance(pending)
            return "conflict at commit"
        return "stored"

    with ThreadPoolExecutor(writers) as pool:
        outcomes = list(pool.map(store_like_the_pipeline, range(writers)))
    assert outcomes.count("stored") == 1, outcomes
    winner = records[outcomes.index("stored")]
    for client in clients:
        assert client.find_instances(STUDY) == [stored(winner)]
    assert counts(clients[0], STUDY) == (1, 1)


# --- delete -------------------------------------------------------------------------------------


@pytest.fixture
def two_studies(index: MetadataIndex) -> dict[str, InstanceRecord]:
    """STUDY: SERIES (a1, a2) and OTHER_SERIES (b1, b2); OTHER_STUDY: one instance (c1)."""
    recs = {
        "a1": record(number=1),
        "a2": record(number=2),
        "b1": record(series=OTHER_SERIES, number=1, Modality="MR", SeriesNumber=2),
        "b2": record(series=OTHER_SERIES, number=2, Modality="MR", SeriesNumber=2),
        "c1": record(study=OTHER_STUDY, series=uid(2, 1), PatientName="Other^Pat"),
    }
    for rec in recs.values():
        store(index, rec)
    return recs


def test_delete_an_instance_returns_it_and_keeps_its_siblings(
    index: MetadataIndex, two_studies: dict[str, InstanceRecord]
) -> None:
    a1 = two_studies["a1"]
    assert index.delete(STUDY, SERIES, a1.uids.instance) == [stored(a1)]
    assert [s.uids.instance for s in index.find_instances(STUDY)] == [
        two_studies[k].uids.instance for k in ("a2", "b1", "b2")
    ]
    assert visible(index, a1) == {"study": True, "series": True, "instance": False, "find": False}
    assert counts(index, STUDY) == (2, 3)
    assert index.delete(STUDY, SERIES, a1.uids.instance) == []


def test_delete_a_series_returns_its_instances_and_updates_the_study(
    index: MetadataIndex, two_studies: dict[str, InstanceRecord]
) -> None:
    removed = index.delete(STUDY, OTHER_SERIES)
    assert sorted(s.uids.instance for s in removed) == sorted(
        two_studies[k].uids.instance for k in ("b1", "b2")
    )
    assert set(removed) == {stored(two_studies["b1"]), stored(two_studies["b2"])}
    assert index.search(query(Level.SERIES, f"SeriesInstanceUID={OTHER_SERIES}")) == []
    assert index.search(query(Level.STUDY, "ModalitiesInStudy=MR")) == []
    [hit] = index.search(query(Level.STUDY, f"StudyInstanceUID={STUDY}"))
    assert hit.attrs["00080061"]["Value"] == ["CT"]
    assert counts(index, STUDY) == (1, 2)


def test_delete_a_study_removes_it_from_every_search(
    index: MetadataIndex, two_studies: dict[str, InstanceRecord]
) -> None:
    removed = index.delete(STUDY)
    assert set(removed) == {stored(two_studies[k]) for k in ("a1", "a2", "b1", "b2")}
    assert len(removed) == 4
    assert index.find_instances(STUDY) == []
    for level in Level:
        assert {h.study for h in index.search(query(level))} == {OTHER_STUDY}
    assert index.search(query(Level.STUDY, "PatientName=Doe^Jane")) == []
    assert index.find_instances(OTHER_STUDY) == [stored(two_studies["c1"])]
    assert index.delete(STUDY) == []


def test_deleting_every_instance_one_by_one_empties_series_and_study(
    index: MetadataIndex, two_studies: dict[str, InstanceRecord]
) -> None:
    for name in ("a1", "a2"):
        index.delete(STUDY, SERIES, two_studies[name].uids.instance)
    assert index.search(query(Level.SERIES, f"SeriesInstanceUID={SERIES}")) == []
    assert [h.series for h in index.search(query(Level.SERIES, "Modality=CT"))] == [uid(2, 1)]
    for name in ("b1", "b2"):
        index.delete(STUDY, OTHER_SERIES, two_studies[name].uids.instance)
    assert index.search(query(Level.STUDY, f"StudyInstanceUID={STUDY}")) == []
    assert [h.study for h in index.search(query(Level.STUDY))] == [OTHER_STUDY]


@pytest.mark.parametrize(
    "scope",
    [(uid(3),), (STUDY, uid(1, 77)), (STUDY, SERIES, uid(1, 1, 77)), (STUDY, OTHER_SERIES, "a1")],
    ids=["unknown-study", "unknown-series", "unknown-instance", "instance-in-the-wrong-series"],
)
def test_delete_of_nothing_returns_nothing_and_changes_nothing(
    index: MetadataIndex, two_studies: dict[str, InstanceRecord], scope: tuple[str, ...]
) -> None:
    scope = tuple(two_studies[s].uids.instance if s in two_studies else s for s in scope)
    before = index.find_instances(STUDY)
    assert index.delete(*scope) == []
    assert index.find_instances(STUDY) == before


def test_a_deleted_instance_can_be_stored_again(
    index: MetadataIndex, two_studies: dict[str, InstanceRecord]
) -> None:
    c1 = two_studies["c1"]
    index.delete(OTHER_STUDY)
    again = dataclasses.replace(c1, version=new_version())
    assert store(index, again).replaces is None
    assert index.find_instances(OTHER_STUDY) == [stored(again)]
    assert visible(index, again) == EVERYWHERE


def test_a_replacement_in_flight_loses_to_a_delete(index: MetadataIndex) -> None:
    old = record()
    store(index, old)
    new = dataclasses.replace(old, version=new_version())
    pending = index.begin_instance(new, replace=True)
    assert index.delete(STUDY) == [stored(old)]
    with pytest.raises(Conflict):
        index.commit_instance(new, pending)
    index.abort_instance(pending)
    assert index.find_instances(STUDY) == []
    assert visible(index, old) == NOWHERE


# --- order ----------------------------------------------------------------------------------------


def test_find_instances_order_is_stable(index: MetadataIndex) -> None:
    recs = [
        record(series=series, number=number, SeriesNumber=sn)
        for series, sn in ((uid(1, 5), 5), (uid(1, 3), 3), (uid(1, 4), None))
        for number in (3, 1, None, 2, 2)
    ]
    for rec in recs:
        store(index, rec)
    first = index.find_instances(STUDY)
    assert sorted(first, key=lambda s: s.uids.instance) == sorted(
        map(stored, recs), key=lambda s: s.uids.instance
    )
    store(index, record(study=OTHER_STUDY, series=uid(2, 1)))
    store(index, record(series=uid(1, 9), number=1))
    again = index.find_instances(STUDY)
    assert [s for s in again if s in first] == first
    assert index.find_instances(STUDY) == again
    for series in (uid(1, 5), uid(1, 3)):
        assert index.find_instances(STUDY, series) == [s for s in again if s.uids.series == series]
