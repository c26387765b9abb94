"""STOW-RS (PS3.18 10.5) through HTTP: request forms, the store response, duplicates, errors, limits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.behaviour import (
    DICOM,
    DICOM_JSON,
    FAILED_SOP_SEQUENCE,
    FAILURE_REASON,
    REFERENCED_SOP_CLASS_UID,
    REFERENCED_SOP_INSTANCE_UID,
    REFERENCED_SOP_SEQUENCE,
    RETRIEVE_URL,
    Instance,
    fresh,
    multipart_body,
    parse_multipart,
    same_uids,
    sequence_items,
    value,
)
from tests.behaviour.conftest import Server, ServerPool

DUPLICATE = 0x0111

# (id, type parameter of the request, Content-Type of each part)
MULTIPART_FORMS = [
    ("type-quoted", '"application/dicom"', DICOM),
    ("type-unquoted", "application/dicom", DICOM),
    ("type-missing-part-type-given", None, DICOM),
    ("type-quoted-no-part-headers", '"application/dicom"', None),
    ("part-type-with-parameters", '"application/dicom"', "application/dicom; transfer-syntax=*"),
]


def _check_stored(server: Server, response_body: dict[str, object], instances: list[Instance]) -> None:
    referenced = sequence_items(response_body, REFERENCED_SOP_SEQUENCE)
    assert [value(item, REFERENCED_SOP_INSTANCE_UID) for item in referenced] == [i.sop for i in instances]
    assert [value(item, REFERENCED_SOP_CLASS_UID) for item in referenced] == [i.sop_class for i in instances]
    for item, instance in zip(referenced, instances, strict=True):
        url = value(item, RETRIEVE_URL)
        assert url == server.root + instance.path, "RetrieveURL must be absolute and locate the instance"
        got = server.get(url, f'multipart/related; type="{DICOM}"; transfer-syntax=*')
        assert got.status_code == 200, got.text
        (part,) = parse_multipart(got.headers["content-type"], got.content)
        assert part.data == instance.data


@pytest.mark.parametrize(
    ("type_param", "part_type"), [f[1:] for f in MULTIPART_FORMS], ids=[f[0] for f in MULTIPART_FORMS]
)
def test_multipart_forms_are_stored(server: Server, type_param: str | None, part_type: str | None) -> None:
    instances = [fresh("ct/CT_small.dcm"), fresh("mr/MR_small_RLE.dcm")]
    content_type, body = multipart_body(
        [i.data for i in instances], type_param=type_param, part_type=part_type
    )
    response = server.post("/studies", body, content_type, Accept=DICOM_JSON)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(DICOM_JSON)
    assert FAILED_SOP_SEQUENCE not in response.json()
    _check_stored(server, response.json(), instances)


def test_single_part_application_dicom_is_stored(server: Server) -> None:
    instance = fresh("nm_sc/JPEG-LL.dcm")
    response = server.post("/studies", instance.data, DICOM)
    assert response.status_code == 200, response.text
    _check_stored(server, response.json(), [instance])


def test_accept_lists_with_json_are_answered(server: Server) -> None:
    instance = fresh("ct/CT_small.dcm")
    content_type, body = multipart_body([instance.data])
    response = server.post("/studies", body, content_type, Accept="application/json;q=0.5, */*;q=0.1")
    assert response.status_code == 200, response.text


def test_store_into_study_adds_study_url_and_fails_other_studies_alone(server: Server) -> None:
    first = fresh("ct/CT_small.dcm")
    same_study = fresh("ct/CT_small.dcm", study=first.study)
    other_study = fresh("ct/CT_small.dcm")
    response = server.store(first, other_study, same_study, study=first.study)
    assert response.status_code == 202, response.text
    body = response.json()
    assert value(body, RETRIEVE_URL) == f"{server.root}/studies/{first.study}"
    _check_stored(server, body, [first, same_study])
    (failed,) = sequence_items(body, FAILED_SOP_SEQUENCE)
    assert value(failed, REFERENCED_SOP_INSTANCE_UID) == other_study.sop
    assert value(failed, REFERENCED_SOP_CLASS_UID) == other_study.sop_class
    assert value(failed, FAILURE_REASON)
    assert "warning" in response.headers
    assert server.retrieve_instance(other_study).status_code == 404


def test_store_into_study_all_matching_is_200_with_study_url(server: Server) -> None:
    first = fresh("ct/CT_small.dcm")
    response = server.store(first, study=first.study)
    assert response.status_code == 200, response.text
    assert value(response.json(), RETRIEVE_URL) == f"{server.root}/studies/{first.study}"


def test_store_into_study_none_matching_is_409(server: Server) -> None:
    instance = fresh("ct/CT_small.dcm")
    response = server.store(instance, study=fresh("ct/CT_small.dcm").study)
    assert response.status_code == 409, response.text
    (failed,) = sequence_items(response.json(), FAILED_SOP_SEQUENCE)
    assert value(failed, REFERENCED_SOP_INSTANCE_UID) == instance.sop


def test_duplicate_is_409_and_keeps_the_original(server: Server) -> None:
    original = fresh("ct/CT_small.dcm", PatientName="Original^Name")
    server.stored(original)
    duplicate = same_uids(original, PatientName="Changed^Name")
    assert duplicate.data != original.data
    response = server.store(duplicate)
    assert response.status_code == 409, response.text
    (failed,) = sequence_items(response.json(), FAILED_SOP_SEQUENCE)
    assert value(failed, FAILURE_REASON) == DUPLICATE
    assert value(failed, REFERENCED_SOP_INSTANCE_UID) == original.sop
    got = server.retrieve_instance(original)
    assert got.status_code == 200
    assert got.content == original.data


def test_duplicate_in_a_batch_fails_alone(server: Server) -> None:
    original = fresh("ct/CT_small.dcm")
    server.stored(original)
    newcomer = fresh("ct/CT_small.dcm")
    response = server.store(original, newcomer)
    assert response.status_code == 202, response.text
    (failed,) = sequence_items(response.json(), FAILED_SOP_SEQUENCE)
    assert value(failed, FAILURE_REASON) == DUPLICATE
    assert server.retrieve_instance(newcomer).content == newcomer.data


def test_duplicate_with_overwrite_setting_replaces(server: Server, servers: ServerPool) -> None:
    overwriting = servers.get(server.backend, {"DICOMWEB_OVERWRITE_EXISTING": "true"})
    original = fresh("ct/CT_small.dcm", PatientID="OVERWRITE-1")
    overwriting.stored(original)
    replacement = same_uids(original, PatientID="OVERWRITE-2")
    assert replacement.data != original.data
    response = overwriting.store(replacement)
    assert response.status_code == 200, response.text
    assert overwriting.retrieve_instance(original).content == replacement.data
    found = overwriting.search("/studies", {"StudyInstanceUID": original.study})
    assert [value(r, "00100020") for r in found] == ["OVERWRITE-2"]
    assert len(overwriting.search(f"/studies/{original.study}/instances")) == 1


UNSUPPORTED_CONTENT_TYPES = [
    ("text-plain", "text/plain"),
    ("dicom-xml-parts", 'multipart/related; type="application/dicom+xml"; boundary=xyz'),
    ("dicom-json", "application/dicom+json"),
    ("form-data", "multipart/form-data; boundary=xyz"),
    ("missing", None),
]


@pytest.mark.parametrize(
    "content_type", [c[1] for c in UNSUPPORTED_CONTENT_TYPES], ids=[c[0] for c in UNSUPPORTED_CONTENT_TYPES]
)
def test_unsupported_content_type_is_415(server: Server, content_type: str | None) -> None:
    instance = fresh("ct/CT_small.dcm")
    response = server.post("/studies", instance.data, content_type)
    assert response.status_code == 415, response.text
    assert server.retrieve_instance(instance).status_code == 404


@pytest.mark.parametrize("accept", ["application/xml", "application/dicom+xml", "image/png"])
def test_unacceptable_accept_is_406(server: Server, accept: str) -> None:
    instance = fresh("ct/CT_small.dcm")
    content_type, body = multipart_body([instance.data])
    response = server.post("/studies", body, content_type, Accept=accept)
    assert response.status_code == 406, response.text
    assert server.retrieve_instance(instance).status_code == 404


def test_multipart_without_closing_delimiter_is_400(server: Server) -> None:
    instance = fresh("ct/CT_small.dcm")
    content_type, body = multipart_body([instance.data], close=False)
    response = server.post("/studies", body, content_type)
    assert response.status_code == 400, response.text


def test_multipart_without_boundary_is_4xx(server: Server) -> None:
    response = server.post(
        "/studies", b"--x\r\n\r\nabc\r\n--x--\r\n", 'multipart/related; type="application/dicom"'
    )
    assert 400 <= response.status_code < 500, response.text


def test_part_of_another_type_fails_alone(server: Server) -> None:
    good = fresh("ct/CT_small.dcm")
    boundary = "mixed-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + good.data
        + f"\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n".encode()
    )
    response = server.post("/studies", body, f"multipart/related; boundary={boundary}")
    assert response.status_code == 202, response.text
    assert len(sequence_items(response.json(), FAILED_SOP_SEQUENCE)) == 1
    assert server.retrieve_instance(good).content == good.data


# --- limits: a second server with small settings -------------------------------------------------

SMALL = "ct/ct2_series/CT2_17106.dcm"  # 3.8 kB


def _not_stored(server: Server, *instances: Instance) -> None:
    for instance in instances:
        assert server.retrieve_instance(instance).status_code == 404


def test_request_over_max_request_bytes_is_413(server: Server, servers: ServerPool) -> None:
    limited = servers.get(server.backend, {"DICOMWEB_MAX_REQUEST_BYTES": "20000"})
    small = fresh(SMALL)
    assert limited.store(small).status_code == 200
    big = fresh("ct/CT_small.dcm")  # 39 kB
    response = limited.store(big)
    assert response.status_code == 413, response.text
    _not_stored(limited, big)


def test_streamed_request_over_max_request_bytes_is_413(server: Server, servers: ServerPool) -> None:
    limited = servers.get(server.backend, {"DICOMWEB_MAX_REQUEST_BYTES": "20000"})
    big = fresh("ct/CT_small.dcm")
    content_type, body = multipart_body([big.data])

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = limited.client.post("/studies", content=chunks(), headers={"Content-Type": content_type})
    assert response.status_code == 413, response.text
    _not_stored(limited, big)


def test_instance_over_max_instance_bytes_is_413(server: Server, servers: ServerPool) -> None:
    limited = servers.get(server.backend, {"DICOMWEB_MAX_INSTANCE_BYTES": "20000"})
    assert limited.store(fresh(SMALL)).status_code == 200
    big = fresh("ct/CT_small.dcm")
    response = limited.store(big)
    assert response.status_code == 413, response.text
    _not_stored(limited, big)
    single = limited.post("/studies", big.data, DICOM)
    assert single.status_code == 413, single.text
    _not_stored(limited, big)


def test_parts_over_max_parts_fail_and_the_others_are_stored(server: Server, servers: ServerPool) -> None:
    limited = servers.get(server.backend, {"DICOMWEB_MAX_PARTS": "2"})
    two = [fresh(SMALL), fresh(SMALL)]
    assert limited.store(*two).status_code == 200
    three = [fresh(SMALL), fresh(SMALL), fresh(SMALL)]
    response = limited.store(*three)
    assert response.status_code == 202, response.text
    (failed,) = sequence_items(response.json(), FAILED_SOP_SEQUENCE)
    assert value(failed, FAILURE_REASON) == 0xA700
    assert "parts" in response.headers["warning"]
    for instance in three[:2]:
        assert limited.retrieve_instance(instance).content == instance.data
    _not_stored(limited, three[2])


@pytest.mark.parametrize(
    "overrides",
    [{"DICOMWEB_MAX_PARTS": "2"}, {"DICOMWEB_MAX_INSTANCE_BYTES": "20000"}],
    ids=["parts", "instance"],
)
def test_a_limit_hit_while_streaming_fails_only_the_parts_over_it(
    server: Server, servers: ServerPool, overrides: dict[str, str]
) -> None:
    """Nothing is lost: the response lists the stored parts and the refused one (0xA700)."""
    limited = servers.get(server.backend, overrides)
    batch = [fresh(SMALL), fresh(SMALL), fresh("ct/CT_small.dcm")]
    response = limited.store(*batch)
    assert response.status_code == 202, response.text
    assert len(sequence_items(response.json(), REFERENCED_SOP_SEQUENCE)) == 2
    (failed,) = sequence_items(response.json(), FAILED_SOP_SEQUENCE)
    assert value(failed, FAILURE_REASON) == 0xA700
    for instance in batch[:2]:
        assert limited.retrieve_instance(instance).content == instance.data
    _not_stored(limited, batch[2])


def test_streamed_request_over_the_size_limit_reports_what_was_stored(
    server: Server, servers: ServerPool
) -> None:
    limited = servers.get(server.backend, {"DICOMWEB_MAX_REQUEST_BYTES": "30000"})
    first, big = fresh(SMALL), fresh("ct/CT_small.dcm")
    content_type, body = multipart_body([first.data, big.data])

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = limited.client.post("/studies", content=chunks(), headers={"Content-Type": content_type})
    assert response.status_code == 413, response.text
    (stored,) = sequence_items(response.json(), REFERENCED_SOP_SEQUENCE)
    assert value(stored, REFERENCED_SOP_INSTANCE_UID) == first.sop
    assert limited.retrieve_instance(first).content == first.data
    _not_stored(limited, big)
