"""The scale benchmark's archive generator, bulk loader and expected counts."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import create_engine, select

from bench.scale import index_search
from bench.scale_archive import FIRST_DATE, MODALITIES, Archive, instance_elements, to_dataset, to_json
from bench.scale_load import load_sql
from bench.scale_queries import KINDS, Truth, build_queries
from shared.adapters.blob_filesystem import FileSystemBlobStore
from shared.adapters.index_sql import SqlMetadataIndex
from shared.adapters.index_sql_schema import instances, name_words, series, studies
from shared.core.attributes import Level
from shared.core.dicomjson import dataset_to_json
from shared.core.levels import split_levels
from shared.core.model import StoreStatus
from shared.core.query import matches, parse_query
from shared.core.store import InstanceStore, StorePolicy


@pytest.fixture(scope="module")
def archive() -> Archive:
    return Archive(seed=7, target=3000)


def _file_bytes(archive: Archive, study_index: int, series_index: int, index: int) -> bytes:
    study = archive.studies[study_index]
    one = study.series[series_index]
    elements = (study.elements, one.elements, instance_elements(study, one, index, archive.uids))
    ds = to_dataset(*elements, transfer_syntax=one.transfer_syntax)
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def test_the_archive_is_the_same_for_the_same_seed_and_differs_for_another() -> None:
    first, again, other = Archive(3, 2000), Archive(3, 2000), Archive(4, 2000)
    assert [s.uid for s in first.studies] == [s.uid for s in again.studies]
    assert [s.patient.name for s in first.studies] == [s.patient.name for s in again.studies]
    assert {s.uid for s in first.studies}.isdisjoint(s.uid for s in other.studies)


def test_the_archive_has_the_shape_the_issue_asks_for() -> None:
    archive = Archive(seed=11, target=60_000)
    all_series = [one for study in archive.studies for one in study.series]
    per_patient: dict[str, int] = {}
    for study in archive.studies:
        per_patient[study.patient.id] = per_patient.get(study.patient.id, 0) + 1
    assert archive.instances >= 60_000
    assert set(per_patient.values()) <= {1, 2, 3, 4, 5} and max(per_patient.values()) == 5
    assert {len(s.series) for s in archive.studies} <= set(range(1, 7))
    assert {one.instances for one in all_series} <= set(range(1, 51))
    assert 8 <= archive.instances / len(all_series) <= 12
    assert {one.modality for one in all_series} == {m[0] for m in MODALITIES}
    years = {s.date[:4] for s in archive.studies}
    assert min(years) == str(FIRST_DATE.year) and len(years) == 10
    names = {s.patient.name for s in archive.studies}
    assert any(n.startswith("Müller-Lüdenscheidt^") for n in names)
    assert any(" " in n.split("^")[0] for n in names)  # multi-word family names
    assert 0.005 < sum(n.startswith("DOE^") for n in names) / len(names) < 0.05
    uids = [s.uid for s in archive.studies] + [one.uid for one in all_series]
    assert len(set(uids)) == len(uids) and all(len(u) <= 64 for u in uids)


def test_the_fast_dicom_json_equals_the_store_pipelines_split_levels(archive: Archive) -> None:
    for study_index in range(0, len(archive.studies), 7):
        study = archive.studies[study_index]
        one = study.series[-1]
        parsed = pydicom.dcmread(io.BytesIO(_file_bytes(archive, study_index, len(study.series) - 1, 0)))
        expected = split_levels(dataset_to_json(parsed, 1024))
        fast = (to_json(study.elements), to_json(one.elements))
        fast += (to_json(instance_elements(study, one, 0, archive.uids)),)
        assert fast == expected


def _table_rows(url: str) -> dict[str, Any]:
    """Each table's rows without generated keys, times, versions and sizes, keyed by UIDs."""
    engine = create_engine(url)
    with engine.connect() as conn:
        study_uid = dict(conn.execute(select(studies.c.id, studies.c.study_uid)).all())
        series_uid = dict(conn.execute(select(series.c.id, series.c.series_uid)).all())
        skip = {"id", "updated_at", "version", "size", "number_of_frames", "study_pk", "series_pk"}

        def rows(table: Any) -> list[str]:
            out = []
            for row in conn.execute(select(table)).mappings():
                kept = {k: v for k, v in row.items() if k not in skip}
                kept["study"] = study_uid.get(row.get("study_pk"))
                kept["series"] = series_uid.get(row.get("series_pk"))
                out.append(json.dumps(kept, sort_keys=True, default=str))
            return sorted(out)

        result = {t.name: rows(t) for t in (studies, series, name_words, instances)}
    engine.dispose()
    return result


def test_the_bulk_loader_writes_the_rows_the_store_pipeline_writes(tmp_path: Path) -> None:
    small = Archive(seed=5, target=150)
    bulk_url = f"sqlite:///{tmp_path / 'bulk.db'}"
    engine, stats = load_sql(small, bulk_url)
    engine.dispose()
    assert stats.instances == small.instances and stats.studies == len(small.studies)

    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    index = SqlMetadataIndex(store_url)
    pipeline = InstanceStore(FileSystemBlobStore(tmp_path / "blobs"), index, StorePolicy())
    for s, study in enumerate(small.studies):
        for r, one in enumerate(study.series):
            for i in range(one.instances):
                data = _file_bytes(small, s, r, i)
                outcome = pipeline.store_instance(io.BytesIO(data), len(data))
                assert outcome.status is StoreStatus.STORED, outcome.message
    assert _table_rows(bulk_url) == _table_rows(store_url)


def _truth_count(archive: Archive, query: Any) -> int:
    """The number of studies the reference matcher accepts (before paging)."""
    values = {
        "PatientID": lambda s: s.patient.id,
        "PatientName": lambda s: s.patient.name,
        "AccessionNumber": lambda s: s.accession,
        "StudyDate": lambda s: s.date,
        "StudyInstanceUID": lambda s: s.uid,
        "ModalitiesInStudy": lambda s: s.modalities,
    }
    return sum(
        all(matches(c, values[c.keyword](s)) for c in query.conditions if c.keyword in values)
        for s in archive.studies
    )


@pytest.mark.parametrize("kind", [k for k in KINDS if KINDS[k].level is Level.STUDY], ids=str)
def test_expected_study_counts_agree_with_the_reference_matcher(archive: Archive, kind: str) -> None:
    for planned in build_queries(archive, kind, count=12, seed=1):
        query = parse_query(Level.STUDY, planned.params)
        total = _truth_count(archive, query)
        assert planned.expected == max(0, min(query.limit, total - query.offset))


def test_the_table_bulk_loader_leaves_an_index_that_answers_every_query_kind() -> None:
    from bench.scale_table import load_table
    from shared.adapters.index_table import TableMetadataIndex
    from tests import services

    small = Archive(seed=9, target=400)
    index = TableMetadataIndex.from_connection_string(services.azurite(), prefix=f"t{small.uids.uid(0)[-8:]}")
    try:
        stats = load_table(small, index)
        assert stats.instances == small.instances
        truth = Truth(small)
        for kind in KINDS:
            for planned in build_queries(small, kind, count=4, seed=2, truth=truth):
                found = index_search(index, planned)
                assert len(found) == planned.expected, (kind, planned.params)
        study = small.studies[0]
        assert len(index.find_instances(study.uid)) == study.instance_count
    finally:
        index.close()
