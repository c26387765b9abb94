"""WADO-RS metadata (PS3.18 F) and bulk data through HTTP: DICOM JSON at every level, BulkDataURIs
that resolve to the element's bytes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.behaviour import DICOM_JSON, Instance, fresh, parse_multipart, value
from tests.behaviour.conftest import Server

BULK_ACCEPT = 'multipart/related; type="application/octet-stream"'


def _metadata(server: Server, path: str, accept: str = DICOM_JSON) -> list[dict[str, Any]]:
    response = server.get(f"{path}/metadata", accept)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(DICOM_JSON)
    body = response.json()
    assert isinstance(body, list)
    return body


def _bulk_uris(doc: dict[str, Any], path: str = "") -> Iterator[tuple[str, str]]:
    for tag, elem in doc.items():
        if "BulkDataURI" in elem:
            yield path + tag, elem["BulkDataURI"]
        for index, item in enumerate(elem.get("Value", [])):
            if isinstance(item, dict) and elem.get("vr") == "SQ":
                yield from _bulk_uris(item, f"{path}{tag}/{index}/")


def _bulk(server: Server, uri: str) -> bytes:
    response = server.get(uri, BULK_ACCEPT)
    assert response.status_code == 200, f"{uri}: {response.text}"
    (part,) = parse_multipart(response.headers["content-type"], response.content)
    return part.data


def test_study_series_instance_metadata(server: Server) -> None:
    first = fresh("ct/CT_small.dcm")
    second = fresh("ct/CT_small.dcm", study=first.study, series=first.series)
    other = fresh("mr/MR_small.dcm", study=first.study)
    server.stored(first, second, other)
    study = _metadata(server, f"/studies/{first.study}")
    assert sorted(value(d, "00080018") for d in study) == sorted([first.sop, second.sop, other.sop])
    series = _metadata(server, f"/studies/{first.study}/series/{first.series}")
    assert sorted(value(d, "00080018") for d in series) == sorted([first.sop, second.sop])
    (instance,) = _metadata(server, first.path)
    assert value(instance, "0020000D") == first.study
    assert value(instance, "0020000E") == first.series
    assert value(instance, "00080016") == first.sop_class


@pytest.mark.parametrize(
    "accept", [DICOM_JSON, "application/json", "*/*", f"{DICOM_JSON}, application/xml;q=0.5"]
)
def test_metadata_accept_forms(server: Server, accept: str) -> None:
    instance = fresh("ct/CT_small.dcm")
    server.stored(instance)
    assert len(_metadata(server, instance.path, accept)) == 1


def test_metadata_in_xml_is_406(server: Server) -> None:
    instance = fresh("ct/CT_small.dcm")
    server.stored(instance)
    assert server.get(f"{instance.path}/metadata", "application/dicom+xml").status_code == 406


def test_value_representations_in_json(server: Server) -> None:
    instance = fresh("ct/CT_small.dcm", PatientName="Doe^Jane^^Dr", InstanceNumber="7", SliceThickness="2.5")
    server.stored(instance)
    (doc,) = _metadata(server, instance.path)
    assert doc["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane^^Dr"}]}
    assert doc["00200013"]["vr"] == "IS"
    assert doc["00200013"]["Value"] == [7]
    assert doc["00180050"]["vr"] == "DS"
    assert doc["00180050"]["Value"] == [2.5]
    assert doc["00280010"] == {"vr": "US", "Value": [128]}
    assert all(not tag.startswith("0002") for tag in doc), "file meta is not part of the metadata"


def test_pixel_data_is_a_bulk_data_uri_that_resolves(server: Server) -> None:
    instance = fresh("ct/CT_small.dcm")
    server.stored(instance)
    (doc,) = _metadata(server, instance.path)
    uri = doc["7FE00010"]["BulkDataURI"]
    assert "Value" not in doc["7FE00010"] and "InlineBinary" not in doc["7FE00010"]
    assert uri.startswith(server.root + instance.path)
    assert _bulk(server, uri) == instance.dataset().PixelData


def _element(ds: Any, path: str) -> bytes:
    steps = path.split("/")
    current = ds
    for position, step in enumerate(steps):
        current = current[int(step, 16)].value if position % 2 == 0 else current[int(step)]
    return bytes(current)


@pytest.mark.parametrize(
    ("source", "required"),
    [
        ("ct/eCT_Supplemental.dcm", ["00281201", "00281202", "00281203"]),
        ("other/waveform_ecg.dcm", ["54000100/0/54001010"]),
        ("nm_sc/mlut_18.dcm", []),  # its LUT Data is explicit VR US: inline numbers are valid JSON
    ],
    ids=["palette-lut", "ecg-waveform", "modality-lut"],
)
def test_large_binary_elements_resolve_to_their_bytes(
    server: Server, source: str, required: list[str]
) -> None:
    instance = fresh(source)
    server.stored(instance)
    (doc,) = _metadata(server, instance.path)
    uris = dict(_bulk_uris(doc))
    assert set(required) <= set(uris)
    ds = instance.dataset()
    for path, uri in uris.items():
        if path == "7FE00010":
            continue
        assert uri.startswith(server.root + instance.path), uri
        assert _bulk(server, uri) == _element(ds, path), path


def test_bulk_data_as_single_part_octet_stream(server: Server) -> None:
    instance = fresh("ct/eCT_Supplemental.dcm")
    server.stored(instance)
    (doc,) = _metadata(server, instance.path)
    response = server.get(doc["00281201"]["BulkDataURI"], "application/octet-stream")
    assert response.status_code == 200
    assert response.content == instance.dataset()[0x00281201].value


@pytest.mark.parametrize(
    "path",
    ["00100010", "7FE00011", "zz", "54000100/9/54001010"],
    ids=["not-bulk", "absent", "bad", "bad-item"],
)
def test_unknown_bulk_data_is_404(server: Server, path: str) -> None:
    instance: Instance = fresh("other/waveform_ecg.dcm")
    server.stored(instance)
    response = server.get(f"{instance.path}/bulk/{path}", BULK_ACCEPT)
    assert response.status_code in (400, 404), response.text
