"""Delete (study, series, instance) through HTTP: files, metadata and index rows go; repeat is 404."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from tests.behaviour import DICOM, Instance, fresh, value, values
from tests.behaviour.conftest import Server


def _gone(server: Server, instance: Instance) -> None:
    assert server.retrieve_instance(instance).status_code == 404
    assert server.get(f"{instance.path}/metadata").status_code == 404
    assert (
        server.get(
            f"{instance.path}/frames/1", "multipart/related; type=application/octet-stream"
        ).status_code
        == 404
    )
    assert server.search("/instances", {"SOPInstanceUID": instance.sop}) == []


def _present(server: Server, instance: Instance) -> None:
    response = server.retrieve_instance(instance)
    assert response.status_code == 200
    assert response.content == instance.data
    assert values(server.search("/instances", {"SOPInstanceUID": instance.sop}), "00080018") == [instance.sop]


@pytest.fixture
def study(server: Server) -> list[Instance]:
    """Two series: a1, a2 (CT) and b1 (MR)."""
    a1 = fresh("ct/CT_small.dcm")
    a2 = fresh("ct/CT_small.dcm", study=a1.study, series=a1.series)
    b1 = fresh("mr/MR_small.dcm", study=a1.study)
    return [a1, a2, b1]


def test_delete_study(server: Server, study: list[Instance]) -> None:
    before = server.blob_files()
    server.stored(*study)
    assert len(server.blob_files()) > len(before)
    response = server.delete(f"/studies/{study[0].study}")
    assert response.status_code == 204, response.text
    for instance in study:
        _gone(server, instance)
    assert server.get(f"/studies/{study[0].study}", f'multipart/related; type="{DICOM}"').status_code == 404
    assert server.get(f"/studies/{study[0].study}/metadata").status_code == 404
    assert server.search("/studies", {"StudyInstanceUID": study[0].study}) == []
    assert server.search(f"/studies/{study[0].study}/series") == []
    assert server.blob_files() == before, "the study's files must be removed from disk"
    assert server.delete(f"/studies/{study[0].study}").status_code == 404


def test_delete_series_keeps_the_other_series(server: Server, study: list[Instance]) -> None:
    a1, a2, b1 = study
    server.stored(*study)
    before_b = server.blob_files()
    response = server.delete(f"/studies/{a1.study}/series/{a1.series}")
    assert response.status_code == 204, response.text
    _gone(server, a1)
    _gone(server, a2)
    _present(server, b1)
    assert len(server.blob_files()) < len(before_b)
    (result,) = server.search("/studies", {"StudyInstanceUID": a1.study})
    assert value(result, "00201206") == 1
    assert value(result, "00201208") == 1
    assert result["00080061"]["Value"] == ["MR"]
    assert values(server.search(f"/studies/{a1.study}/series"), "0020000E") == [b1.series]
    assert server.delete(f"/studies/{a1.study}/series/{a1.series}").status_code == 404


def test_delete_instance_keeps_the_others(server: Server, study: list[Instance]) -> None:
    a1, a2, b1 = study
    server.stored(*study)
    assert server.delete(a1.path).status_code == 204
    _gone(server, a1)
    _present(server, a2)
    _present(server, b1)
    (series,) = server.search(f"/studies/{a1.study}/series", {"SeriesInstanceUID": a1.series})
    assert value(series, "00201209") == 1
    assert server.delete(a1.path).status_code == 404


def test_deleting_the_last_instance_removes_series_and_study(server: Server) -> None:
    before = server.blob_files()
    only = fresh("ct/CT_small.dcm")
    server.stored(only)
    assert server.delete(only.path).status_code == 204
    assert server.search("/studies", {"StudyInstanceUID": only.study}) == []
    assert server.get(f"/studies/{only.study}", f'multipart/related; type="{DICOM}"').status_code == 404
    assert server.blob_files() == before


def test_deleted_instance_can_be_stored_again(server: Server) -> None:
    instance = fresh("ct/CT_small.dcm")
    server.stored(instance)
    assert server.delete(f"/studies/{instance.study}").status_code == 204
    server.stored(instance)
    _present(server, instance)


@pytest.mark.parametrize(
    "template",
    ["/studies/{u}", "/studies/{u}/series/{u}", "/studies/{u}/series/{u}/instances/{u}"],
    ids=["study", "series", "instance"],
)
def test_delete_unknown_is_404(server: Server, template: str) -> None:
    assert server.delete(template.format(u=generate_uid())).status_code == 404


@pytest.mark.parametrize(
    "path",
    ["/studies/1.2.abc", "/studies/1.2/series/01.2", "/studies/1.2/series/1.3/instances/x"],
    ids=["study", "series", "instance"],
)
def test_delete_malformed_uid_is_400(server: Server, path: str) -> None:
    assert server.delete(path).status_code == 400
