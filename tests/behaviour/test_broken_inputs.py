"""Broken inputs: every malformed and odd sample file, garbage bodies, bad multipart, huge values.

Nothing a client sends may cause a 500; a bad instance fails alone with a FailureReason, the good
ones beside it are stored; a failed instance is not findable nor retrievable afterwards and leaves
no file behind in the blob store; a retry of a failed store succeeds.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

import httpx
import pydicom
import pytest

from tests.behaviour import (
    DATA,
    DICOM,
    FAILED_SOP_SEQUENCE,
    FAILURE_REASON,
    REFERENCED_SOP_INSTANCE_UID,
    REFERENCED_SOP_SEQUENCE,
    Instance,
    fresh,
    multipart_body,
    sequence_items,
    value,
)
from tests.behaviour.conftest import Server, ServerPool

# Files of odd/ and malformed/ that a server should store: the data they carry is complete.
GOOD = {
    "odd/JPEG2000-embedded-sequence-delimiter.dcm",  # delimiter-like bytes inside a fragment: valid
    "odd/emri_small_jpeg_2k_lossless_too_short.dcm",  # only the sequence delimiter is missing; frames whole
}
BROKEN_FILES = sorted(
    str(path.relative_to(DATA)) for folder in ("malformed", "odd") for path in (DATA / folder).glob("*.dcm")
)


@dataclass(frozen=True)
class FileUids:
    study: str | None
    series: str | None
    sop: tuple[str, ...]  # the SOP Instance UID and the Media Storage SOP Instance UID


def _uids(name: str) -> FileUids:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(DATA / name, force=True, stop_before_pixels=True)
        except Exception:
            return FileUids(None, None, ())

        def text(dataset: Any, keyword: str) -> str | None:
            try:
                found = dataset.get(keyword)
            except Exception:
                return None
            return str(found).strip() or None if found is not None else None

        sops = {text(ds, "SOPInstanceUID"), text(getattr(ds, "file_meta", {}), "MediaStorageSOPInstanceUID")}
    return FileUids(
        text(ds, "StudyInstanceUID"), text(ds, "SeriesInstanceUID"), tuple(sorted(s for s in sops if s))
    )


def _valid(uid: str | None) -> bool:
    return (
        uid is not None
        and len(uid) <= 64
        and re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", uid) is not None
    )


def _assert_absent(server: Server, name: str) -> None:
    """A broken file is neither findable by QIDO nor retrievable, by any of the UIDs it carries."""
    uids = _uids(name)
    for sop in filter(_valid, uids.sop):
        assert server.search("/instances", {"SOPInstanceUID": sop}) == [], f"{name} is findable"
    if _valid(uids.study):
        assert server.search("/studies", {"StudyInstanceUID": uids.study}) == [], f"{name} is findable"
        assert server.get(f"/studies/{uids.study}", f'multipart/related; type="{DICOM}"').status_code == 404
        assert server.get(f"/studies/{uids.study}/metadata").status_code == 404


def _delete_stored(server: Server, response: httpx.Response) -> None:
    """Delete what a response reports as stored (so a test leaves the blob store as it found it)."""
    if not response.headers.get("content-type", "").startswith("application/dicom+json"):
        return
    for item in sequence_items(response.json(), REFERENCED_SOP_SEQUENCE):
        url = value(item, "00081190")
        assert server.delete(url).status_code in (200, 202, 204)


def _assert_failed_alone(response: httpx.Response, name: str, stored: list[Instance]) -> None:
    assert response.status_code == (202 if stored else 409), f"{name}: {response.status_code} {response.text}"
    body = response.json()
    (failed,) = sequence_items(body, FAILED_SOP_SEQUENCE)
    assert value(failed, FAILURE_REASON), f"{name}: a failure needs a FailureReason"
    referenced = [
        value(item, REFERENCED_SOP_INSTANCE_UID) for item in sequence_items(body, REFERENCED_SOP_SEQUENCE)
    ]
    assert referenced == [i.sop for i in stored]


@pytest.mark.parametrize("name", BROKEN_FILES)
def test_broken_file_alone(server: Server, name: str) -> None:
    before = server.blob_files()
    data = (DATA / name).read_bytes()
    response = server.store(data)
    assert response.status_code != 500
    if name in GOOD:
        assert response.status_code == 200, response.text
        (item,) = sequence_items(response.json(), REFERENCED_SOP_SEQUENCE)
        got = server.get(value(item, "00081190"), f"{DICOM}; transfer-syntax=*")
        assert got.status_code == 200
        assert got.content == data
    else:
        _assert_failed_alone(response, name, [])
        _assert_absent(server, name)
    _delete_stored(server, response)
    assert server.blob_files() == before, "a failed or deleted store must leave no blob behind"


@pytest.mark.parametrize("name", BROKEN_FILES)
def test_broken_file_single_part(server: Server, name: str) -> None:
    before = server.blob_files()
    response = server.post("/studies", (DATA / name).read_bytes(), DICOM)
    if name in GOOD:
        assert response.status_code == 200, response.text
    else:
        assert 400 <= response.status_code < 500, response.text
        if response.status_code == 409:
            assert value(sequence_items(response.json(), FAILED_SOP_SEQUENCE)[0], FAILURE_REASON)
        _assert_absent(server, name)
    _delete_stored(server, response)
    assert server.blob_files() == before


@pytest.mark.parametrize("name", BROKEN_FILES)
def test_broken_file_in_a_batch_with_good_files(server: Server, name: str) -> None:
    before = server.blob_files()
    good = [fresh("ct/CT_small.dcm"), fresh("nm_sc/SC_rgb_rle_2frame.dcm")]
    response = server.store(good[0], (DATA / name).read_bytes(), good[1])
    assert response.status_code != 500
    if name in GOOD:
        assert response.status_code == 200, response.text
    else:
        _assert_failed_alone(response, name, good)
        _assert_absent(server, name)
    for instance in good:
        got = server.retrieve_instance(instance)
        assert got.status_code == 200
        assert got.content == instance.data
    _delete_stored(server, response)
    assert server.blob_files() == before


# --- bodies that are not DICOM, or not multipart ---------------------------------------------------

GARBAGE = [
    ("zeros", b"\x00" * 1000),
    ("text", b"hello, this is not DICOM\r\n" * 50),
    ("json", b'{"00100010": {"vr": "PN"}}'),
    ("dicm-only", b"\x00" * 128 + b"DICM"),
    ("binary-noise", bytes(range(256)) * 64),
]


@pytest.mark.parametrize("body", [g[1] for g in GARBAGE], ids=[g[0] for g in GARBAGE])
def test_garbage_bodies_are_4xx_and_leave_nothing(server: Server, body: bytes) -> None:
    before = server.blob_files()
    single = server.post("/studies", body, DICOM)
    assert 400 <= single.status_code < 500, single.text
    content_type, multipart = multipart_body([body])
    response = server.post("/studies", multipart, content_type)
    assert response.status_code == 409, response.text
    assert value(sequence_items(response.json(), FAILED_SOP_SEQUENCE)[0], FAILURE_REASON) == 0xC000
    raw = server.post("/studies", body, 'multipart/related; type="application/dicom"; boundary=nothere')
    assert 400 <= raw.status_code < 500, raw.text
    assert server.blob_files() == before


def _truncated(instance: Instance, keep: float) -> tuple[str, bytes]:
    content_type, body = multipart_body([instance.data])
    return content_type, body[: int(len(body) * keep)]


@pytest.mark.parametrize("keep", [0.01, 0.5, 0.999], ids=["in-headers", "in-data", "before-close"])
def test_truncated_multipart_is_400_and_stores_nothing(server: Server, keep: float) -> None:
    before = server.blob_files()
    instance = fresh("ct/CT_small.dcm")
    content_type, body = _truncated(instance, keep)
    response = server.post("/studies", body, content_type)
    assert response.status_code == 400, response.text
    assert server.retrieve_instance(instance).status_code == 404
    assert server.blob_files() == before


def test_empty_bodies_are_4xx(server: Server) -> None:
    assert server.post("/studies", b"", DICOM).status_code == 400
    content_type, _ = multipart_body([b""])
    assert server.post("/studies", b"", content_type).status_code == 400
    content_type, empty_part = multipart_body([b""])
    response = server.post("/studies", empty_part, content_type)
    assert response.status_code == 409, response.text
    assert value(sequence_items(response.json(), FAILED_SOP_SEQUENCE)[0], FAILURE_REASON)


def test_huge_content_type_header_is_4xx(server: Server) -> None:
    instance = fresh("ct/CT_small.dcm")
    content_type, body = multipart_body([instance.data])
    huge = content_type + "; x-padding=" + "a" * (1024 * 1024)
    try:
        response = server.post("/studies", body, huge)
    except httpx.RemoteProtocolError:
        pass  # the server closed the connection on an oversized header: a refusal, not a crash
    else:
        assert 400 <= response.status_code < 500, response.status_code
    assert server.retrieve_instance(instance).status_code == 404
    assert server.get("/studies", "application/dicom+json", params={"limit": "1"}).status_code == 200


def test_huge_boundary_is_4xx(server: Server) -> None:
    instance = fresh("ct/CT_small.dcm")
    content_type, body = multipart_body([instance.data], boundary="b" * 200)
    response = server.post("/studies", body, content_type)
    assert 400 <= response.status_code < 500, response.text


def test_huge_part_header_is_400(server: Server) -> None:
    instance = fresh("ct/CT_small.dcm")
    content_type, body = multipart_body([instance.data], part_type=DICOM + "; x=" + "a" * 100_000)
    response = server.post("/studies", body, content_type)
    assert response.status_code == 400, response.text
    assert server.retrieve_instance(instance).status_code == 404


def test_huge_patient_name_fails_and_leaves_nothing(server: Server) -> None:
    before = server.blob_files()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that the value breaks the PN length rules
        huge = fresh("mr/MR_small_implicit.dcm", PatientName="A" * (10 * 1024 * 1024))
    good = fresh("ct/CT_small.dcm")
    response = server.store(huge, good)
    assert response.status_code == 202, response.text[:500]
    (failed,) = sequence_items(response.json(), FAILED_SOP_SEQUENCE)
    assert value(failed, REFERENCED_SOP_INSTANCE_UID) == huge.sop
    assert value(failed, FAILURE_REASON)
    assert server.retrieve_instance(huge).status_code == 404
    assert server.retrieve_instance(good).status_code == 200
    assert server.delete(f"/studies/{good.study}").status_code == 204
    assert server.blob_files() == before


# --- a failed store can be retried -------------------------------------------------------------


def test_retry_after_a_truncated_request_succeeds(server: Server) -> None:
    instance = fresh("ct/CT_small.dcm")
    content_type, body = _truncated(instance, 0.9)
    assert server.post("/studies", body, content_type).status_code == 400
    response = server.store(instance)
    assert response.status_code == 200, response.text
    assert server.retrieve_instance(instance).content == instance.data


def test_retry_after_a_rejected_store_succeeds(server: Server) -> None:
    instance = fresh("ct/CT_small.dcm")
    other_study = fresh("ct/CT_small.dcm").study
    assert server.store(instance, study=other_study).status_code == 409
    response = server.store(instance, study=instance.study)
    assert response.status_code == 200, response.text
    assert server.retrieve_instance(instance).content == instance.data


def test_retry_after_a_413_succeeds(server: Server, servers: ServerPool) -> None:
    limited = servers.get(server.backend, {"DICOMWEB_MAX_REQUEST_BYTES": "20000"})
    instance = fresh("ct/CT_small.dcm")
    assert limited.store(instance).status_code == 413
    small = fresh("ct/ct2_series/CT2_17106.dcm")
    assert limited.store(small).status_code == 200
    assert limited.retrieve_instance(small).content == small.data


def test_every_broken_sample_is_covered() -> None:
    assert len(BROKEN_FILES) >= 20
    assert set(BROKEN_FILES) >= GOOD
