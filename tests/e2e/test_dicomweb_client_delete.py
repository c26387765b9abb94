"""Delete (the Microsoft DICOM server's extension of PS3.18) through `dicomweb-client`.

Each test stores its own copies of sample files under new UIDs, so the shared corpus is untouched
whatever order the tests run in.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.e2e import samples

pytestmark = pytest.mark.e2e


def _copy(name: str, study: str, series: str, instance: str | None = None) -> Dataset:
    ds = samples.read(name)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = instance or generate_uid()
    return ds


def _status(call: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    with pytest.raises(requests.HTTPError) as caught:
        call(*args, **kwargs)
    return caught.value.response.status_code


def _store(client: DICOMwebClient, *datasets: Dataset) -> None:
    response = client.store_instances(list(datasets))
    assert "FailedSOPSequence" not in response
    assert len(response.ReferencedSOPSequence) == len(datasets)


@pytest.fixture
def study(client: DICOMwebClient) -> tuple[str, str, str, list[Dataset]]:
    """A new study: series A with two CT slices, series B with one CT."""
    study, a, b = generate_uid(), generate_uid(), generate_uid()
    datasets = [
        _copy("ct/ct2_series/CT2_17106.dcm", study, a),
        _copy("ct/ct2_series/CT2_17136.dcm", study, a),
        _copy("ct/CT_small.dcm", study, b),
    ]
    _store(client, *datasets)
    return study, a, b, datasets


def _sops(results: list[dict[str, dict]]) -> set[str]:
    return {r["00080018"]["Value"][0] for r in results}


def test_delete_instance_removes_only_that_instance(
    client: DICOMwebClient, study: tuple[str, str, str, list[Dataset]]
) -> None:
    uid, a, _, (first, second, third) = study
    client.delete_instance(uid, a, first.SOPInstanceUID)
    assert _sops(client.search_for_instances(uid)) == {second.SOPInstanceUID, third.SOPInstanceUID}
    assert _status(client.retrieve_instance, uid, a, first.SOPInstanceUID) == 404
    assert _status(client.retrieve_instance_metadata, uid, a, first.SOPInstanceUID) == 404
    assert _status(client.retrieve_instance_frames, uid, a, first.SOPInstanceUID, [1]) == 404
    assert client.retrieve_instance(uid, a, second.SOPInstanceUID).SOPInstanceUID == second.SOPInstanceUID
    assert _status(client.delete_instance, uid, a, first.SOPInstanceUID) == 404


def test_delete_series_removes_its_instances_and_keeps_the_other_series(
    client: DICOMwebClient, study: tuple[str, str, str, list[Dataset]]
) -> None:
    uid, a, b, (_, _, third) = study
    client.delete_series(uid, a)
    assert {r["0020000E"]["Value"][0] for r in client.search_for_series(uid)} == {b}
    assert client.search_for_instances(uid, a) == []
    assert _sops(client.search_for_instances(uid)) == {third.SOPInstanceUID}
    assert _status(client.retrieve_series, uid, a) == 404
    assert _status(client.retrieve_series_metadata, uid, a) == 404
    (study_row,) = client.search_for_studies(search_filters={"StudyInstanceUID": uid})
    assert Dataset.from_json(study_row).NumberOfStudyRelatedInstances == 1


def test_delete_study_removes_it_from_search_and_retrieve(
    client: DICOMwebClient, study: tuple[str, str, str, list[Dataset]]
) -> None:
    uid, a, _, (first, _, _) = study
    client.delete_study(uid)
    assert client.search_for_studies(search_filters={"StudyInstanceUID": uid}) == []
    assert client.search_for_instances(uid) == []
    assert _status(client.retrieve_study, uid) == 404
    assert _status(client.retrieve_study_metadata, uid) == 404
    assert _status(client.retrieve_instance, uid, a, first.SOPInstanceUID) == 404
    assert _status(client.delete_study, uid) == 404


def test_a_deleted_instance_can_be_stored_again_in_another_syntax(client: DICOMwebClient) -> None:
    study, series, instance = generate_uid(), generate_uid(), generate_uid()
    big_endian = _copy("mr/MR_small_bigendian.dcm", study, series, instance)
    rle = _copy("mr/MR_small_RLE.dcm", study, series, instance)
    _store(client, big_endian)
    assert _status(client.store_instances, [rle]) == 409
    client.delete_instance(study, series, instance)
    _store(client, rle)
    got = client.retrieve_instance(study, series, instance)
    assert got.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    with io.BytesIO() as sent:
        pydicom.dcmwrite(sent, rle)
        assert got.PixelData == pydicom.dcmread(io.BytesIO(sent.getvalue())).PixelData
    client.delete_study(study)
