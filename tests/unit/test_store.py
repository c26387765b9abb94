"""The two-phase store pipeline over the real embedded adapters (files + SQLite), with failures injected."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import pydicom
import pytest
from pydicom.uid import generate_uid

from shared.adapters.blob_filesystem import FileSystemBlobStore
from shared.adapters.index_sql import SqlMetadataIndex
from shared.core.attributes import Level
from shared.core.model import FailureReason, StoreStatus
from shared.core.query import parse_query
from shared.core.store import InstanceStore, StorePolicy

DATA = Path(__file__).resolve().parents[1] / "data"


class FailingBlobStore(FileSystemBlobStore):
    """A real filesystem store that fails the n-th put, as a storage outage would."""

    def __init__(self, root: Path, fail_on: int) -> None:
        super().__init__(root)
        self.fail_on = fail_on
        self.puts = 0

    def put(self, key: str, data: BinaryIO, *, overwrite: bool = False) -> int:
        self.puts += 1
        if self.puts == self.fail_on:
            raise OSError("disk full")
        return super().put(key, data, overwrite=overwrite)


def _fresh(name: str = "ct/CT_small.dcm") -> bytes:
    ds = pydicom.dcmread(DATA / name)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _store(
    tmp_path: Path, blobs: FileSystemBlobStore | None = None, overwrite: bool = False
) -> tuple[InstanceStore, SqlMetadataIndex, FileSystemBlobStore]:
    blobs = blobs or FileSystemBlobStore(tmp_path / "blobs")
    index = SqlMetadataIndex(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    return InstanceStore(blobs, index, StorePolicy(overwrite_existing=overwrite)), index, blobs


def _files(blobs: FileSystemBlobStore) -> list[str]:
    return sorted(blobs.list())


def test_store_writes_instance_metadata_and_frames_and_indexes(tmp_path: Path) -> None:
    store, index, blobs = _store(tmp_path)
    data = _fresh()
    outcome = store.store_instance(io.BytesIO(data), len(data))
    assert outcome.status is StoreStatus.STORED
    (found,) = index.find_instances(outcome.study_uid)  # type: ignore[arg-type]
    assert found.size == len(data) and found.number_of_frames == 1
    names = _files(blobs)
    assert len(names) == 2 and sum(n.endswith(".dcm") for n in names) == 1  # the instance, its sidecar
    dcm = next(n for n in names if n.endswith(".dcm"))
    with blobs.open(dcm) as fp:
        assert fp.read() == data  # stored exactly as received


@pytest.mark.parametrize("fail_on", [1, 2], ids=["instance-blob", "sidecar-blob"])
def test_a_failed_write_leaves_nothing_and_a_retry_succeeds(tmp_path: Path, fail_on: int) -> None:
    blobs = FailingBlobStore(tmp_path / "blobs", fail_on)
    store, index, _ = _store(tmp_path, blobs)
    data = _fresh()
    outcome = store.store_instance(io.BytesIO(data), len(data))
    assert outcome.status is StoreStatus.FAILED and outcome.reason is FailureReason.PROCESSING_FAILURE
    assert _files(blobs) == []
    ds = pydicom.dcmread(io.BytesIO(data))
    assert index.find_instances(ds.StudyInstanceUID) == []
    assert index.search(parse_query(Level.STUDY, [("StudyInstanceUID", ds.StudyInstanceUID)])) == []
    retry = store.store_instance(io.BytesIO(data), len(data))
    assert retry.status is StoreStatus.STORED
    assert len(index.find_instances(ds.StudyInstanceUID)) == 1


def test_a_failed_commit_removes_the_written_blobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, index, blobs = _store(tmp_path)

    def broken_commit(*_args: object) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(index, "commit_instance", broken_commit)
    data = _fresh()
    assert store.store_instance(io.BytesIO(data), len(data)).status is StoreStatus.FAILED
    assert _files(blobs) == []


def test_duplicate_fails_with_conflict_reason_and_keeps_the_original(tmp_path: Path) -> None:
    store, index, blobs = _store(tmp_path)
    data = _fresh()
    first = store.store_instance(io.BytesIO(data), len(data))
    (before,) = index.find_instances(first.study_uid)  # type: ignore[arg-type]
    again = store.store_instance(io.BytesIO(data), len(data))
    assert again.status is StoreStatus.FAILED and again.reason is FailureReason.DUPLICATE_SOP_INSTANCE
    assert index.find_instances(first.study_uid) == [before]  # type: ignore[arg-type]
    assert len(_files(blobs)) == 2


def test_replace_mode_supersedes_and_removes_the_old_version(tmp_path: Path) -> None:
    store, index, blobs = _store(tmp_path, overwrite=True)
    data = _fresh()
    first = store.store_instance(io.BytesIO(data), len(data))
    (before,) = index.find_instances(first.study_uid)  # type: ignore[arg-type]
    second = store.store_instance(io.BytesIO(data), len(data))
    assert second.status is StoreStatus.STORED
    (after,) = index.find_instances(first.study_uid)  # type: ignore[arg-type]
    assert after.version != before.version
    assert len(_files(blobs)) == 2


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("malformed/made_garbage.dcm", FailureReason.CANNOT_UNDERSTAND),
        ("malformed/made_no_preamble.dcm", FailureReason.CANNOT_UNDERSTAND),
        ("malformed/made_missing_study_uid.dcm", FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        ("malformed/made_invalid_study_uid.dcm", FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        ("malformed/made_meta_sop_mismatch.dcm", FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        ("malformed/made_truncated_pixeldata.dcm", FailureReason.CANNOT_UNDERSTAND),
        ("malformed/made_frames_mismatch.dcm", FailureReason.CANNOT_UNDERSTAND),
        ("odd/meta_missing_tsyntax.dcm", FailureReason.CANNOT_UNDERSTAND),
    ],
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_broken_files_fail_with_a_reason_and_leave_nothing(
    tmp_path: Path, name: str, reason: FailureReason
) -> None:
    store, _index, blobs = _store(tmp_path)
    data = (DATA / name).read_bytes()
    outcome = store.store_instance(io.BytesIO(data), len(data))
    assert outcome.status is StoreStatus.FAILED
    assert outcome.reason is reason
    assert outcome.message and "Traceback" not in outcome.message
    assert _files(blobs) == []


def test_study_mismatch_with_the_url_fails(tmp_path: Path) -> None:
    store, _index, blobs = _store(tmp_path)
    data = _fresh()
    outcome = store.store_instance(io.BytesIO(data), len(data), expected_study="1.2.3")
    assert outcome.reason is FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert _files(blobs) == []


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyDescription", "d" * 10241),  # LO, study level
        ("PatientName", "A" * 5000 + "^" + "B" * 5241),  # PN: its name groups together
        ("SeriesDescription", "short\\" + "s" * 10241),  # the second of two values
    ],
    ids=["study-LO", "PN", "second-value"],
)
def test_an_indexed_value_over_10240_characters_fails_that_instance(
    tmp_path: Path, keyword: str, value: str
) -> None:
    ds = pydicom.dcmread(io.BytesIO(_fresh()))
    setattr(ds, keyword, value)
    raw = io.BytesIO()
    ds.save_as(raw, enforce_file_format=True)
    store, _index, blobs = _store(tmp_path)
    outcome = store.store_instance(io.BytesIO(raw.getvalue()), len(raw.getvalue()))
    assert outcome.status is StoreStatus.FAILED
    assert outcome.reason is FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "is longer than 10240 characters" in outcome.message
    assert _files(blobs) == []


def test_the_length_check_is_skipped_only_where_no_value_can_be_too_long() -> None:
    """`_may_hold_long_values` bounds each value by its element: raw bytes, or the text of a
    converted value; numbers and sequences never count. The check itself is the test above."""
    from shared.core.header import read_header
    from shared.core.store import _may_hold_long_values

    def header(**values: object) -> pydicom.Dataset:
        ds = pydicom.dcmread(io.BytesIO(_fresh()))
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        raw = io.BytesIO()
        ds.save_as(raw, enforce_file_format=True)
        return read_header(raw)[0]

    assert not _may_hold_long_values(header())
    assert not _may_hold_long_values(header(StudyDescription="d" * 10240))
    assert _may_hold_long_values(header(StudyDescription="d" * 10241))  # raw: its length
    converted = header(StudyDescription="d" * 10240)
    converted.StudyDescription = "d" * 10241  # no longer raw: its text
    assert _may_hold_long_values(converted)
    numbers = header(ReferencedFrameNumber=list(range(1, 3000)))  # IS, 10,000+ bytes raw
    assert _may_hold_long_values(numbers)
    numbers.ReferencedFrameNumber  # converted: numbers, counted as 0 in DICOM JSON
    assert not _may_hold_long_values(numbers)


def test_an_indexed_value_of_10240_characters_is_stored(tmp_path: Path) -> None:
    ds = pydicom.dcmread(io.BytesIO(_fresh()))
    ds.StudyDescription = "d" * 10240
    raw = io.BytesIO()
    ds.save_as(raw, enforce_file_format=True)
    store, _index, _blobs = _store(tmp_path)
    outcome = store.store_instance(io.BytesIO(raw.getvalue()), len(raw.getvalue()))
    assert outcome.status is StoreStatus.STORED


def test_a_value_pydicom_cannot_convert_fails_only_that_instance(tmp_path: Path) -> None:
    """A DS with an empty value among several (1, empty, 2) makes pydicom raise while the DICOM JSON is
    built: the instance fails as unreadable (no exception escapes the store) and leaves nothing."""
    ds = pydicom.dcmread(io.BytesIO(_fresh()))
    ds.SliceThickness = "7.25"
    raw = io.BytesIO()
    ds.save_as(raw, enforce_file_format=True)
    assert raw.getvalue().count(b"7.25") == 1
    data = raw.getvalue().replace(b"7.25", b"1\\\\2", 1)  # same length: 1, backslash, backslash, 2
    store, _index, blobs = _store(tmp_path)
    outcome = store.store_instance(io.BytesIO(data), len(data))
    assert outcome.status is StoreStatus.FAILED
    assert outcome.reason is FailureReason.CANNOT_UNDERSTAND
    assert outcome.message == "an attribute value is malformed and cannot be read"
    assert _files(blobs) == []


def test_an_instance_stored_in_the_first_layout_is_read_replaced_and_deleted_after_the_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store written before the layout lost its folder per instance (16-hex versions) keeps
    working: its instance, metadata and frames are found, a replacement removes them, and a delete
    of the new version leaves no file behind."""
    from shared.core import store as store_module
    from shared.core.service import DicomwebService

    monkeypatch.setattr(store_module, "new_version", lambda: "0123456789abcdef")  # as written before
    store, index, blobs = _store(tmp_path, overwrite=True)
    data = _fresh()
    outcome = store.store_instance(io.BytesIO(data), len(data))
    assert outcome.status is StoreStatus.STORED
    assert all("/0123456789abcdef." in name for name in _files(blobs)), "written in the first layout"
    monkeypatch.undo()  # the upgrade
    service = DicomwebService(blobs, index, store, "default")
    (old,) = service.find(outcome.study_uid)  # type: ignore[arg-type]
    assert b"".join(service.instance_bytes(old, "*")) == data
    assert service.stored_metadata(old)["00080018"]["Value"] == [outcome.sop_instance_uid]
    assert service.frame_index(old).number_of_frames == 1
    replaced = store.store_instance(io.BytesIO(data), len(data))
    assert replaced.status is StoreStatus.STORED
    names = _files(blobs)
    assert len(names) == 2 and not any("0123456789abcdef" in n for n in names), "the old version is gone"
    service.delete(outcome.study_uid)  # type: ignore[arg-type]
    assert _files(blobs) == []


@pytest.mark.parametrize(
    ("vr", "value"),
    [
        ("UI", b"1.2.840.10008.5.1.4.1.1.2\x00"),
        ("UI", b"1.2.3 "),
        ("UI", b" 1.2.3"),
        ("UI", b"1.2.3\x00 \t"),
        ("UI", b"1.2.3\\1.2.4"),  # two values: pydicom's MultiValue, as text
        ("UI", b""),
        ("UI", b"1.2.\xe93"),  # not ASCII: latin-1, as pydicom decodes it
        (None, b"1.2.3\x00"),  # implicit VR
        ("LO", b"1.2.3 "),  # a wrong VR: pydicom converts it as LO
    ],
)
def test_uids_read_from_the_bytes_are_what_pydicom_converts(vr: str | None, value: bytes) -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

    from shared.core.store import _text, _uid_text

    tag = BaseTag(0x0020000D)

    def dataset() -> Dataset:
        ds = Dataset({tag: RawDataElement(tag, vr, len(value), value, 0, vr is None, True)})
        ds.set_original_encoding(vr is None, True, "iso8859")
        return ds

    assert _uid_text(dataset(), tag, "StudyInstanceUID") == _text(dataset().get("StudyInstanceUID"))
