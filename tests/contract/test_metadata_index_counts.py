"""Computed study attributes on every index: NumberOfStudyRelatedSeries/Instances and
ModalitiesInStudy over several series, several studies on one page, and after a delete."""

from __future__ import annotations

from shared.core.attributes import Level
from shared.core.model import InstanceUids
from shared.core.ports import MetadataIndex
from tests.contract.records import make_record, query, uid

STUDY_A, STUDY_B = uid(31), uid(32)


def _store(index: MetadataIndex, study: str, series: str, modality: str, number: int) -> InstanceUids:
    uids = InstanceUids(study, series, uid())
    rec = make_record(uids, PatientID="PID-C", Modality=modality, SeriesNumber=1, InstanceNumber=number)
    index.commit_instance(rec, index.begin_instance(rec, replace=False))
    return uids


def _computed(index: MetadataIndex) -> dict[str, tuple[int, int, list[str]]]:
    return {
        hit.study: (
            hit.attrs["00201206"]["Value"][0],
            hit.attrs["00201208"]["Value"][0],
            hit.attrs.get("00080061", {}).get("Value", []),
        )
        for hit in index.search(query(Level.STUDY, "PatientID=PID-C"))
    }


def test_each_study_of_a_page_gets_its_own_series_instance_counts_and_sorted_modalities(
    index: MetadataIndex,
) -> None:
    for n in range(3):
        _store(index, STUDY_A, uid(31, 1), "MR", n + 1)
    _store(index, STUDY_A, uid(31, 2), "CT", 1)
    _store(index, STUDY_A, uid(31, 3), "SEG", 1)
    _store(index, STUDY_B, uid(32, 1), "US", 1)
    assert _computed(index) == {STUDY_A: (3, 5, ["CT", "MR", "SEG"]), STUDY_B: (1, 1, ["US"])}


def test_deleting_a_series_takes_it_out_of_the_counts_and_the_modalities(index: MetadataIndex) -> None:
    _store(index, STUDY_A, uid(31, 1), "MR", 1)
    _store(index, STUDY_A, uid(31, 1), "MR", 2)
    _store(index, STUDY_A, uid(31, 2), "CT", 1)
    index.delete(STUDY_A, uid(31, 2))
    assert _computed(index) == {STUDY_A: (1, 2, ["MR"])}
