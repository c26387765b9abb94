"""STOW-RS and QIDO-RS through `dicomweb-client`, checked against what pydicom reads from the files.

A study or series row shows attributes of the instances stored in it; where the files of one
entity disagree, which value the row shows is the server's choice. Searches are therefore checked
as: every entity whose files all match is found, and nothing is found that no file of it matches
(for this corpus, whose studies are consistent, that is plain equality).
"""

from __future__ import annotations

import fnmatch
import re
from collections import defaultdict
from collections.abc import Callable, Iterable

import pytest
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from requests import HTTPError

from tests.e2e import samples
from tests.e2e.conftest import Corpus, DevHost

pytestmark = pytest.mark.e2e

Predicate = Callable[[Dataset], bool]


# --- STOW-RS -------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", list(samples.BATCHES), ids=list(samples.BATCHES))
def test_store_instances_lists_every_instance_of_the_batch(
    corpus: Corpus, dev_host: DevHost, batch: str
) -> None:
    response = corpus.responses[batch]
    assert "FailedSOPSequence" not in response
    referenced = {item.ReferencedSOPInstanceUID: item for item in response.ReferencedSOPSequence}
    members = samples.BATCHES[batch]
    assert len(referenced) == len(members)
    for sample in members:
        ds = samples.sent(sample)
        item = referenced[ds.SOPInstanceUID]
        assert item.ReferencedSOPClassUID == ds.SOPClassUID
        assert item.RetrieveURL == (
            f"{dev_host.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )


def _refused(client: DICOMwebClient, datasets: list[Dataset]) -> tuple[int, Dataset, str]:
    with pytest.raises(HTTPError) as caught:
        client.store_instances(datasets)
    response = caught.value.response
    return response.status_code, Dataset.from_json(response.json()), response.headers.get("warning", "")


@pytest.mark.parametrize("name", list(samples.DUPLICATES), ids=list(samples.DUPLICATES))
def test_store_refuses_another_copy_of_a_stored_instance_as_a_duplicate(
    client: DICOMwebClient, corpus: Corpus, name: str
) -> None:
    ds = samples.read(name)
    assert ds.SOPInstanceUID == corpus.dataset(samples.DUPLICATES[name]).SOPInstanceUID
    status, body, warning = _refused(client, [ds])
    assert status == 409
    assert "ReferencedSOPSequence" not in body
    (failed,) = body.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert failed.FailureReason == samples.DUPLICATE_SOP_INSTANCE
    assert warning.startswith("299 ")
    kept = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    stored = corpus.dataset(samples.DUPLICATES[name])
    assert kept.file_meta.TransferSyntaxUID == stored.file_meta.TransferSyntaxUID


@pytest.mark.parametrize(("name", "reason"), samples.REFUSED, ids=[n for n, _ in samples.REFUSED])
def test_store_refuses_a_file_that_breaks_part_10_with_its_reason(
    client: DICOMwebClient, name: str, reason: int
) -> None:
    status, body, warning = _refused(client, [samples.read(name)])
    assert status == 409
    (failed,) = body.FailedSOPSequence
    assert failed.FailureReason == reason
    assert warning.startswith("299 ")


def test_store_instances_with_new_and_duplicate_parts_stores_the_new_ones(
    client: DICOMwebClient, corpus: Corpus, dev_host: DevHost
) -> None:
    fresh = samples.read("ct/CT_small.dcm")
    fresh.StudyInstanceUID, fresh.SeriesInstanceUID = generate_uid(), generate_uid()
    fresh.SOPInstanceUID = fresh.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    duplicate = samples.read("mr/MR_small_RLE.dcm")
    response = client.store_instances([duplicate, fresh])  # 202: the client returns the dataset
    (stored,) = response.ReferencedSOPSequence
    assert stored.ReferencedSOPInstanceUID == fresh.SOPInstanceUID
    assert stored.RetrieveURL.startswith(f"{dev_host.url}/studies/{fresh.StudyInstanceUID}/")
    (failed,) = response.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == duplicate.SOPInstanceUID
    assert failed.FailureReason == samples.DUPLICATE_SOP_INSTANCE
    client.delete_study(fresh.StudyInstanceUID)


def test_store_instances_to_a_study_refuses_instances_of_another_study(
    client: DICOMwebClient, dev_host: DevHost
) -> None:
    study = generate_uid()
    mine, other = samples.read("ct/ct2_series/CT2_17106.dcm"), samples.read("ct/ct2_series/CT2_17136.dcm")
    for ds, study_uid in ((mine, study), (other, generate_uid())):
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    response = client.store_instances([mine, other], study_instance_uid=study)
    assert response.RetrieveURL == f"{dev_host.url}/studies/{study}"
    (stored,) = response.ReferencedSOPSequence
    assert stored.ReferencedSOPInstanceUID == mine.SOPInstanceUID
    (failed,) = response.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == other.SOPInstanceUID
    assert failed.FailureReason == samples.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert client.search_for_studies(search_filters={"StudyInstanceUID": other.StudyInstanceUID}) == []
    client.delete_study(study)


# --- QIDO-RS -------------------------------------------------------------------------------------
def _grouped(corpus: Corpus, keyword: str) -> dict[str, list[Dataset]]:
    groups: dict[str, list[Dataset]] = defaultdict(list)
    for name in corpus.samples:
        ds = corpus.dataset(name)
        groups[str(ds[keyword].value)].append(ds)
    return groups


def _check_found(found: Iterable[str], groups: dict[str, list[Dataset]], predicate: Predicate) -> None:
    """Entities whose files all match are found; none is found that no file of it matches."""
    every = {uid for uid, members in groups.items() if all(predicate(ds) for ds in members)}
    some = {uid for uid, members in groups.items() if any(predicate(ds) for ds in members)}
    assert every, "the filter must select something in the corpus"
    found = set(found)
    assert every <= found, f"missing: {sorted(every - found)}"
    assert found <= some, f"unexpected: {sorted(found - some)}"


def _uids(results: list[dict[str, dict]], tag: str) -> list[str]:
    return [str(result[tag]["Value"][0]) for result in results]


def _date(ds: Dataset) -> str:
    """StudyDate as YYYYMMDD; ACR-NEMA 'YYYY.MM.DD' (allowed before DICOM 3.0) read the same way."""
    text = str(ds.get("StudyDate", "") or "")
    return text.replace(".", "") if re.fullmatch(r"\d{4}\.\d\d\.\d\d", text) else text


def _name(ds: Dataset) -> str:
    return str(ds.get("PatientName", "") or "")


def _words(text: str) -> list[str]:
    return re.split(r"[\s^=]+", text.upper().strip("^= "))


STUDY_SEARCHES: list[tuple[str, dict[str, str], bool, Predicate]] = [
    (
        "PatientName=CompressedSamples^CT*",
        {"PatientName": "CompressedSamples^CT*"},
        False,
        lambda ds: fnmatch.fnmatchcase(_name(ds), "CompressedSamples^CT*"),
    ),
    ("PatientName=Doe^*", {"PatientName": "Doe^*"}, False, lambda ds: _name(ds).startswith("Doe^")),
    ("PatientName=*^G", {"PatientName": "*^G"}, False, lambda ds: _name(ds).endswith("^G")),
    (
        "PatientName=Test^Phant?m*",
        {"PatientName": "Test^Phant?m*"},
        False,
        lambda ds: fnmatch.fnmatchcase(_name(ds), "Test^Phant?m*"),
    ),
    ("PatientID=77654033", {"PatientID": "77654033"}, False, lambda ds: ds.get("PatientID") == "77654033"),
    ("PatientID=ID1", {"PatientID": "ID1"}, False, lambda ds: ds.get("PatientID") == "ID1"),
    (
        "StudyDate=20040101-20041231",
        {"StudyDate": "20040101-20041231"},
        False,
        lambda ds: "20040101" <= _date(ds) <= "20041231",
    ),
    ("StudyDate=-19991231", {"StudyDate": "-19991231"}, False, lambda ds: "" < _date(ds) <= "19991231"),
    ("StudyDate=20170101-", {"StudyDate": "20170101-"}, False, lambda ds: _date(ds) >= "20170101"),
    ("StudyDate=20160503", {"StudyDate": "20160503"}, False, lambda ds: _date(ds) == "20160503"),
    (
        "fuzzy PatientName=arch",
        {"PatientName": "arch"},
        True,
        lambda ds: any(w.startswith("ARCH") for w in _words(_name(ds))),
    ),
    (
        "fuzzy PatientName=compressed ct",
        {"PatientName": "compressed ct"},
        True,
        lambda ds: all(any(w.startswith(q) for w in _words(_name(ds))) for q in ("COMPRESSED", "CT")),
    ),
]


@pytest.mark.parametrize(
    ("filters", "fuzzy", "predicate"), [s[1:] for s in STUDY_SEARCHES], ids=[s[0] for s in STUDY_SEARCHES]
)
def test_search_for_studies_finds_the_studies_whose_files_match(
    client: DICOMwebClient, corpus: Corpus, filters: dict[str, str], fuzzy: bool, predicate: Predicate
) -> None:
    results = client.search_for_studies(search_filters=filters, fuzzymatching=fuzzy or None)
    _check_found(_uids(results, "0020000D"), _grouped(corpus, "StudyInstanceUID"), predicate)


def test_search_without_fuzzymatching_does_not_match_a_name_prefix(
    client: DICOMwebClient, corpus: Corpus
) -> None:
    assert client.search_for_studies(search_filters={"PatientName": "arch"}) == []


@pytest.mark.parametrize("modality", ["SEG", "SR", "US", "RTDOSE", "ECG", "SM"])
def test_search_for_series_by_modality(client: DICOMwebClient, corpus: Corpus, modality: str) -> None:
    results = client.search_for_series(search_filters={"Modality": modality})
    _check_found(
        _uids(results, "0020000E"), _grouped(corpus, "SeriesInstanceUID"), lambda ds: ds.Modality == modality
    )
    for result in results:
        assert result["00080060"]["Value"] == [modality]


def test_search_for_studies_by_modalities_in_study(client: DICOMwebClient, corpus: Corpus) -> None:
    results = client.search_for_studies(search_filters={"ModalitiesInStudy": "SEG"})
    groups = _grouped(corpus, "StudyInstanceUID")
    expected = {uid for uid, members in groups.items() if any(ds.Modality == "SEG" for ds in members)}
    assert set(_uids(results, "0020000D")) == expected
    for result in results:
        assert "SEG" in result["00080061"]["Value"]


def test_search_for_instances_of_a_series_lists_its_files(client: DICOMwebClient, corpus: Corpus) -> None:
    ct = corpus.dataset("ct/ct2_series/CT2_17106.dcm")
    results = client.search_for_instances(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    expected = {corpus.dataset(n).SOPInstanceUID for n in corpus.samples if n.startswith("ct/ct2_series/")}
    assert set(_uids(results, "00080018")) == expected
    series = client.search_for_series(ct.StudyInstanceUID)
    in_study = [
        ds for ds in map(corpus.dataset, corpus.samples) if ds.StudyInstanceUID == ct.StudyInstanceUID
    ]
    assert set(_uids(series, "0020000E")) == {ds.SeriesInstanceUID for ds in in_study}


def test_search_for_instances_includefield_returns_the_file_values(
    client: DICOMwebClient, corpus: Corpus
) -> None:
    ct = corpus.dataset("ct/ct2_series/CT2_17106.dcm")
    fields = ["ImageType", "SliceThickness", "Rows", "Columns", "InstanceNumber", "ImagePositionPatient"]
    results = client.search_for_instances(ct.StudyInstanceUID, ct.SeriesInstanceUID, fields=fields)
    by_uid = {corpus.dataset(n).SOPInstanceUID: corpus.dataset(n) for n in corpus.samples}
    assert len(results) == 4
    for result in results:
        found = Dataset.from_json(result)
        expected = by_uid[found.SOPInstanceUID]
        for keyword in fields:
            assert found[keyword].value == expected[keyword].value, keyword


def test_search_includefield_all_returns_more_than_the_defaults(
    client: DICOMwebClient, corpus: Corpus
) -> None:
    ct = corpus.dataset("ct/CT_small.dcm")
    plain = client.search_for_studies(search_filters={"StudyInstanceUID": ct.StudyInstanceUID})
    every = client.search_for_studies(
        search_filters={"StudyInstanceUID": ct.StudyInstanceUID}, fields=["all"]
    )
    assert len(plain) == len(every) == 1
    assert set(plain[0]) <= set(every[0])
    found = Dataset.from_json(every[0])
    assert str(found.PatientName) == str(ct.PatientName)
    assert found.NumberOfStudyRelatedInstances == sum(
        1 for n in corpus.samples if corpus.dataset(n).StudyInstanceUID == ct.StudyInstanceUID
    )


def test_search_pages_with_limit_and_offset_cover_every_instance_once(
    client: DICOMwebClient, corpus: Corpus
) -> None:
    expected = {corpus.dataset(n).SOPInstanceUID for n in corpus.samples}
    seen: list[str] = []
    for offset in range(0, len(expected) + 7, 7):
        page = client.search_for_instances(limit=7, offset=offset)
        assert len(page) <= 7
        seen += _uids(page, "00080018")
    assert len(seen) == len(set(seen)), "pages overlap"
    assert set(seen) >= expected
    remaining = client.search_for_instances(limit=5, get_remaining=True)
    assert set(_uids(remaining, "00080018")) == set(seen)


@pytest.mark.parametrize(
    "name",
    [s.name for s in samples.STORED if s.name.startswith("charset/")],
    ids=[s.name for s in samples.STORED if s.name.startswith("charset/")],
)
def test_search_by_a_non_ascii_patient_name_finds_its_study(
    client: DICOMwebClient, corpus: Corpus, name: str
) -> None:
    ds = corpus.dataset(name)
    groups = [g for g in str(ds.PatientName).split("=") if g]
    for group in groups:
        results = client.search_for_studies(search_filters={"PatientName": group})
        assert ds.StudyInstanceUID in _uids(results, "0020000D"), group
        (mine,) = [r for r in results if r["0020000D"]["Value"][0] == ds.StudyInstanceUID]
        assert str(Dataset.from_json(mine).PatientName) == str(ds.PatientName)


def test_search_with_an_unknown_value_finds_nothing(client: DICOMwebClient, corpus: Corpus) -> None:
    assert client.search_for_studies(search_filters={"PatientID": "no-such-patient"}) == []
    assert client.search_for_series(search_filters={"Modality": "XA"}) == []
