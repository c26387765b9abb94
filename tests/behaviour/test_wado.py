"""WADO-RS (PS3.18 10.4) through HTTP: study, series and instance retrieval, transcoding, errors."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.behaviour import DICOM, Instance, fresh, param, parse_multipart
from tests.behaviour.conftest import Server

EXPLICIT_LE = "1.2.840.10008.1.2.1"
AS_STORED = f'multipart/related; type="{DICOM}"; transfer-syntax=*'


@pytest.fixture
def study(server: Server) -> list[Instance]:
    """One study: two instances in one series (native CT, JPEG lossless), one in another (J2K)."""
    first = fresh("ct/CT_small.dcm")
    second = fresh("nm_sc/JPEG-LL.dcm", study=first.study, series=first.series)
    other = fresh("us/US1_J2KR.dcm", study=first.study)
    server.stored(first, second, other)
    return [first, second, other]


def _parts(server: Server, path: str, accept: str) -> list[tuple[str, bytes]]:
    response = server.get(path, accept)
    assert response.status_code == 200, response.text
    return [
        (p.content_type, p.data) for p in parse_multipart(response.headers["content-type"], response.content)
    ]


def test_study_retrieval_as_stored_is_byte_identical(server: Server, study: list[Instance]) -> None:
    parts = _parts(server, f"/studies/{study[0].study}", AS_STORED)
    assert Counter(data for _, data in parts) == Counter(i.data for i in study)
    by_data = {i.data: i for i in study}
    for content_type, data in parts:
        assert content_type.split(";")[0].strip() == DICOM
        assert param(content_type, "transfer-syntax") == by_data[data].transfer_syntax


def test_series_retrieval_as_stored_is_byte_identical(server: Server, study: list[Instance]) -> None:
    first, second, other = study
    parts = _parts(server, f"/studies/{first.study}/series/{first.series}", AS_STORED)
    assert Counter(data for _, data in parts) == Counter([first.data, second.data])
    parts = _parts(server, f"/studies/{other.study}/series/{other.series}", AS_STORED)
    assert [data for _, data in parts] == [other.data]


@pytest.mark.parametrize(
    "accept",
    [
        AS_STORED,
        f"multipart/related; type={DICOM}; transfer-syntax=*",
        f'multipart/related; type="{DICOM}"; transfer-syntax=*; q=0.9, */*; q=0.1',
    ],
    ids=["quoted", "unquoted", "q-list"],
)
def test_instance_retrieval_as_stored_is_byte_identical(
    server: Server, study: list[Instance], accept: str
) -> None:
    for instance in study:
        assert [data for _, data in _parts(server, instance.path, accept)] == [instance.data]


@pytest.mark.parametrize(
    "accept", [f"{DICOM}; transfer-syntax=*", f'{DICOM}; transfer-syntax="*"'], ids=["plain", "quoted"]
)
def test_single_part_instance_as_stored(server: Server, study: list[Instance], accept: str) -> None:
    for instance in study:
        response = server.get(instance.path, accept)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].split(";")[0] == DICOM
        assert response.content == instance.data


def test_single_part_default_is_explicit_vr_little_endian(server: Server) -> None:
    native = fresh("ct/CT_small.dcm")
    server.stored(native)
    response = server.get(native.path, DICOM)
    assert response.status_code == 200
    assert response.content == native.data  # already Explicit VR Little Endian


@pytest.mark.parametrize(
    "source",
    ["nm_sc/JPEG-LL.dcm", "us/US1_J2KR.dcm", "mr/MR_small_jp2klossless.dcm", "nm_sc/SC_rgb_rle_2frame.dcm"],
    ids=["jpeg-lossless", "j2k-rct-colour", "j2k-lossless-mr", "rle-2-frames"],
)
def test_default_multipart_decompresses_to_explicit_vr_little_endian(server: Server, source: str) -> None:
    instance = fresh(source)
    server.stored(instance)
    response = server.get(instance.path, f'multipart/related; type="{DICOM}"')
    assert response.status_code == 200, response.text
    (part,) = parse_multipart(response.headers["content-type"], response.content)
    assert part.transfer_syntax() == EXPLICIT_LE
    got = pydicom.dcmread(io.BytesIO(part.data))
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert got.SOPInstanceUID == instance.sop
    np.testing.assert_array_equal(got.pixel_array, instance.dataset().pixel_array)


def test_explicit_transfer_syntax_on_a_study_of_mixed_syntaxes(server: Server, study: list[Instance]) -> None:
    accept = f'multipart/related; type="{DICOM}"; transfer-syntax={EXPLICIT_LE}'
    parts = _parts(server, f"/studies/{study[0].study}", accept)
    assert len(parts) == len(study)
    for content_type, data in parts:
        assert param(content_type, "transfer-syntax") == EXPLICIT_LE
        assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == EXPLICIT_LE


@pytest.mark.parametrize(
    "accept",
    [
        "application/xml",
        "image/png",
        f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.50",
        "multipart/related; type=text/plain",
    ],
    ids=["xml", "png", "jpeg-baseline-from-native", "multipart-text"],
)
def test_unproducible_representation_is_406(server: Server, accept: str) -> None:
    instance = fresh("ct/CT_small.dcm")
    server.stored(instance)
    response = server.get(instance.path, accept)
    assert response.status_code == 406, response.text


UNKNOWN = [
    ("study", "/studies/{u}"),
    ("series", "/studies/{study}/series/{u}"),
    ("instance", "/studies/{study}/series/{series}/instances/{u}"),
    ("study-metadata", "/studies/{u}/metadata"),
    ("instance-metadata", "/studies/{study}/series/{series}/instances/{u}/metadata"),
    ("frames", "/studies/{study}/series/{series}/instances/{u}/frames/1"),
    ("rendered", "/studies/{study}/series/{series}/instances/{u}/rendered"),
]


@pytest.mark.parametrize("template", [u[1] for u in UNKNOWN], ids=[u[0] for u in UNKNOWN])
def test_unknown_uids_are_404(server: Server, template: str) -> None:
    known = fresh("ct/CT_small.dcm")
    server.stored(known)
    path = template.format(u=generate_uid(), study=known.study, series=known.series)
    response = server.get(path, "*/*")
    assert response.status_code == 404, response.text


BAD_UIDS = [
    ("letters", "1.2.abc"),
    ("leading-zero", "1.02.3"),
    ("empty-component", "1..2"),
    ("too-long", "1." + "2" * 63),
    ("trailing-dot", "1.2."),
]


@pytest.mark.parametrize("bad", [b[1] for b in BAD_UIDS], ids=[b[0] for b in BAD_UIDS])
@pytest.mark.parametrize(
    "template",
    [
        "/studies/{bad}",
        "/studies/{study}/series/{bad}",
        "/studies/{study}/series/{series}/instances/{bad}",
        "/studies/{bad}/metadata",
        "/studies/{study}/series/{series}/instances/{bad}/frames/1",
    ],
    ids=["study", "series", "instance", "metadata", "frames"],
)
def test_malformed_uid_in_path_is_400(server: Server, template: str, bad: str) -> None:
    path = template.format(bad=bad, study=generate_uid(), series=generate_uid())
    response = server.get(path, "*/*")
    assert response.status_code == 400, response.text


def _length(response: object) -> int | None:
    headers = response.headers  # type: ignore[attr-defined]
    return int(headers["content-length"]) if "content-length" in headers else None


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_stored_bytes_are_sent_with_their_length(server: Server, study: list[Instance], level: str) -> None:
    first = study[0]
    path = {
        "study": f"/studies/{first.study}",
        "series": f"/studies/{first.study}/series/{first.series}",
        "instance": first.path,
    }[level]
    response = server.get(path, AS_STORED)
    assert response.status_code == 200
    assert _length(response) == len(response.content)  # the whole body, framing included
    assert "transfer-encoding" not in response.headers
    parts = parse_multipart(response.headers["content-type"], response.content)
    assert len(parts) == {"study": 3, "series": 2, "instance": 1}[level]
    single = server.get(first.path, f"{DICOM}; transfer-syntax=*")
    assert _length(single) == len(first.data) and single.content == first.data


def test_a_study_asked_in_its_one_stored_syntax_is_sent_with_its_length(server: Server) -> None:
    native = fresh("ct/CT_small.dcm")
    server.stored(native)
    response = server.get(native.path, f'multipart/related; type="{DICOM}"; transfer-syntax={EXPLICIT_LE}')
    assert response.status_code == 200
    assert _length(response) == len(response.content)


def test_transcoded_instances_are_sent_without_a_length(server: Server) -> None:
    instance = fresh("nm_sc/JPEG-LL.dcm")
    server.stored(instance)
    response = server.get(instance.path, f'multipart/related; type="{DICOM}"')  # decompressed
    assert response.status_code == 200
    assert _length(response) is None  # its size is known only once it is transcoded
    (part,) = parse_multipart(response.headers["content-type"], response.content)
    assert part.transfer_syntax() == EXPLICIT_LE
