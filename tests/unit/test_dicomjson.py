"""DICOM JSON written at store time: value types, BulkDataURI placeholders and their paths."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from shared.core.dicomjson import BULK_PLACEHOLDER, absolutize, dataset_to_json, dumps, parse_bulk_path

DATA = Path(__file__).resolve().parents[1] / "data"


def test_person_names_numbers_and_no_pixel_data() -> None:
    ds = pydicom.dcmread(DATA / "ct/CT_small.dcm")
    doc = dataset_to_json(ds, 1024)
    assert doc["00100010"]["Value"] == [{"Alphabetic": "CompressedSamples^CT1"}]
    assert doc["00200013"]["Value"] == [1]  # IS as a number
    assert all(isinstance(v, float | int) for v in doc["00280030"]["Value"])  # DS as numbers
    assert "7FE00010" not in doc
    assert not any(key.startswith("0002") for key in doc)


def test_large_binary_values_become_bulk_uris_with_their_path() -> None:
    inner = Dataset()
    inner.add_new(0x00181072, "OB", b"\x01" * 4000)
    ds = Dataset()
    ds.add_new(0x00540016, "SQ", Sequence([Dataset(), inner]))
    ds.add_new(0x00660023, "OB", b"\x00" * 10)
    doc = dataset_to_json(ds, 1024)
    nested = doc["00540016"]["Value"][1]["00181072"]
    assert nested == {"vr": "OB", "BulkDataURI": f"{BULK_PLACEHOLDER}/bulk/00540016/1/00181072"}
    assert "InlineBinary" in doc["00660023"]  # small values stay inline


def test_palette_lut_data_of_enhanced_ct_is_bulk() -> None:
    ds = pydicom.dcmread(DATA / "ct/eCT_Supplemental.dcm", stop_before_pixels=True)
    doc = dataset_to_json(ds, 1024)
    assert doc["00281201"]["BulkDataURI"].endswith("/bulk/00281201")


@pytest.mark.parametrize(
    ("path", "steps"),
    [("7FE00010", (0x7FE00010,)), ("00540016/0/00181072", (0x00540016, 0, 0x00181072))],
    ids=["top", "nested"],
)
def test_parse_bulk_path(path: str, steps: tuple[int, ...]) -> None:
    assert parse_bulk_path(path) == steps


@pytest.mark.parametrize("path", ["", "7FE0001", "00540016/0", "00540016/x/00181072", "ZZZZZZZZ"])
def test_parse_bulk_path_rejects(path: str) -> None:
    with pytest.raises(ValueError):
        parse_bulk_path(path)


def test_absolutize_rewrites_only_bulk_uris() -> None:
    ds = Dataset()
    ds.StudyDescription = f'"BulkDataURI": "{BULK_PLACEHOLDER}'  # a hostile value
    ds.add_new(0x00660023, "OB", b"\x00" * 2000)
    stored = dumps(dataset_to_json(ds, 1024))
    served = json.loads(absolutize(stored, "http://h/dicomweb/studies/1/series/2/instances/3"))
    assert (
        served["00660023"]["BulkDataURI"] == "http://h/dicomweb/studies/1/series/2/instances/3/bulk/00660023"
    )
    assert served["00081030"]["Value"] == [f'"BulkDataURI": "{BULK_PLACEHOLDER}']
