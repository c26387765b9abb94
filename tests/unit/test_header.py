"""`read_header` gives what `dcmread(fp, stop_before_pixels=True)` gives, on every sample file.

The fast reader builds pydicom's objects itself for the plain file and hands everything else to
pydicom; these tests compare the two readers' results field by field (elements as raw tuples,
file meta, encodings, preamble, the position the file is left at) and check which files take
which path, so a fast path that silently declined everything would fail too.
"""

from __future__ import annotations

import io
import struct
import tempfile
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from shared.bootstrap import configure_pydicom
from shared.core import header
from shared.core.header import read_header

DATA = Path(__file__).resolve().parents[1] / "data"
SAMPLES = sorted(p for p in DATA.rglob("*.dcm") if p.is_file())

# Files pydicom reads in a way the fast reader leaves to it.
DECLINED = {
    "mr/MR_small_bigendian.dcm": "big endian",
    "us/ExplVR_BigEnd.dcm": "big endian",
    "nm_sc/image_dfl.dcm": "deflated",
    "odd/meta_missing_tsyntax.dcm": "no Transfer Syntax UID",
    "odd/rtplan_truncated.dcm": "an element runs past the end of the file",
    "malformed/made_truncated_header.dcm": "an element runs past the end of the file",
    "malformed/made_dicm_then_garbage.dcm": "no File Meta after the prefix",
}


@pytest.fixture(autouse=True, scope="module")
def _pydicom_as_served() -> None:
    configure_pydicom()


def _pydicom(data: bytes) -> tuple[Any, int]:
    fp = io.BytesIO(data)
    ds = pydicom.dcmread(fp, stop_before_pixels=True)
    return ds, fp.tell()


def _assert_same(ours: Dataset, theirs: Dataset) -> None:
    assert type(ours) is type(theirs)
    assert ours.preamble == theirs.preamble
    assert ours.file_meta._dict == theirs.file_meta._dict
    assert ours.file_meta.original_encoding == theirs.file_meta.original_encoding
    assert ours._dict.keys() == theirs._dict.keys()
    for tag, elem in ours._dict.items():
        assert type(elem) is type(theirs._dict[tag]), tag
        assert elem == theirs._dict[tag], tag
    assert ours.original_encoding == theirs.original_encoding
    assert ours.original_character_set == theirs.original_character_set
    assert ours.is_implicit_VR == theirs.is_implicit_VR
    assert ours.is_little_endian == theirs.is_little_endian


def _compare(data: bytes) -> None:
    """Both readers agree: the same data set and position, or the same kind of error."""
    try:
        theirs, their_position = _pydicom(data)
    except Exception as exc:
        with pytest.raises(type(exc)):
            read_header(io.BytesIO(data))
        return
    fp = io.BytesIO(data)
    ours, position = read_header(fp)
    _assert_same(ours, theirs)
    assert position == their_position == fp.tell()


def _fast(data: bytes) -> bool:
    try:
        header._Reader(io.BytesIO(data)).read()
    except header._Declined:
        return False
    return True


def test_the_samples_are_there() -> None:
    assert len(SAMPLES) > 60


def test_the_fast_path_is_on_with_this_pydicom() -> None:
    # Off when pydicom's RawDataElement changes its fields: then every file goes through dcmread.
    assert header.FAST_PATH, "pydicom's RawDataElement changed: review shared/core/header.py"


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.relative_to(DATA).as_posix())
def test_every_sample_reads_as_pydicom_reads_it(path: Path) -> None:
    _compare(path.read_bytes())


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.relative_to(DATA).as_posix())
def test_plain_files_take_the_fast_path_and_the_others_pydicom(path: Path) -> None:
    data = path.read_bytes()
    try:
        _pydicom(data)
    except Exception:
        assert not _fast(data)  # what pydicom cannot read, the fast reader does not read either
        return
    name = path.relative_to(DATA).as_posix()
    assert _fast(data) == (name not in DECLINED), DECLINED.get(name, "a plain file")


def test_the_fast_path_answers_without_pydicom_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("dcmread called")

    monkeypatch.setattr(header, "dcmread", refuse)
    ds, _ = read_header(io.BytesIO((DATA / "ct" / "CT_small.dcm").read_bytes()))
    assert ds.Modality == "CT"


def test_undefined_length_sequences_are_read_by_pydicom_in_place() -> None:
    data = (DATA / "ct" / "ct_brain_jpeg.dcm").read_bytes()
    assert _fast(data)
    ds, _ = read_header(io.BytesIO(data))
    undefined = [e for e in ds._dict.values() if isinstance(e, DataElement) and e.is_undefined_length]
    assert len(undefined) == 8
    _compare(data)


@pytest.mark.parametrize("cut", [0, 100, 131, 132, 140, 200, 300, 400, 500, 700, 900, 1200])
def test_truncated_files_read_as_pydicom_reads_them(cut: int) -> None:
    data = (DATA / "mr" / "MR_small.dcm").read_bytes()[:cut]
    _compare(data)


@pytest.mark.parametrize("cut", [150, 400, 1000, 2000, 3000, 4000, 5000])
def test_files_truncated_inside_a_sequence_read_as_pydicom_reads_them(cut: int) -> None:
    data = (DATA / "ct" / "ct_brain_jpeg.dcm").read_bytes()[:cut]
    _compare(data)


def _with_private_blob(size: int) -> bytes:
    """CT_small with an OB element of `size` bytes in a private group before the pixel data."""
    ds = pydicom.dcmread(DATA / "ct" / "CT_small.dcm")
    block = ds.private_block(0x0029, "TEST BLOB", create=True)
    block.add_new(0x10, "OB", b"\x01" * size)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("size", [10, 40_000, 300_000])
def test_headers_beyond_the_first_read_are_read_whole(size: int) -> None:
    data = _with_private_blob(size)
    assert _fast(data)
    _compare(data)


def test_headers_over_the_limit_go_to_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _with_private_blob(300_000)
    monkeypatch.setattr(header, "_MAX_HEADER", 64 * 1024)
    assert not _fast(data)
    _compare(data)


def test_a_file_spool_reads_like_a_memory_one() -> None:
    data = (DATA / "ct" / "CT_small.dcm").read_bytes()
    with tempfile.TemporaryFile() as fp:
        fp.write(data)
        fp.seek(1000)  # anywhere: the file is read from its start
        ds, position = read_header(fp)  # type: ignore[arg-type]
        assert fp.tell() == position
    theirs, their_position = _pydicom(data)
    _assert_same(ds, theirs)
    assert position == their_position


def test_a_command_set_after_the_file_meta_goes_to_pydicom() -> None:
    data = (DATA / "ct" / "CT_small.dcm").read_bytes()
    meta_end = 132 + 12 + struct.unpack_from("<L", data, 132 + 8)[0]
    command = struct.pack("<HHL", 0x0000, 0x0100, 2) + b"\x01\x00"  # (0000,0100) implicit VR, 2 bytes
    spliced = data[:meta_end] + command + data[meta_end:]
    assert not _fast(spliced)
    _compare(spliced)


def test_no_preamble_is_pydicoms_error() -> None:
    with pytest.raises(pydicom.errors.InvalidDicomError):
        read_header(io.BytesIO(b"not dicom at all" * 20))


def test_with_the_fast_path_off_every_file_goes_to_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(header, "FAST_PATH", False)
    calls: list[object] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return pydicom.dcmread(*args, **kwargs)

    monkeypatch.setattr(header, "dcmread", counting)
    data = (DATA / "ct" / "CT_small.dcm").read_bytes()
    _compare(data)
    assert len(calls) == 1


def test_an_element_claiming_gigabytes_is_not_read_by_the_fast_reader() -> None:
    data = bytearray((DATA / "ct" / "CT_small.dcm").read_bytes())
    ds, _ = _pydicom(bytes(data))
    # The data set's first element with a 4-byte length (explicit VR: 12-byte header) now claims 3 GB.
    first_long = next(e for e in ds._dict.values() if e.VR in ("OB", "UN", "UT", "SQ", "OW"))
    header_at = first_long.value_tell - 12
    struct.pack_into("<L", data, header_at + 8, 3 * 1024**3)

    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            Counting.read_bytes += len(chunk)
            return chunk

    padded = bytes(data) + b"\0" * (12 * 1024 * 1024)  # a big file behind the broken element
    with pytest.raises(header._Declined):
        header._Reader(Counting(padded)).read()
    assert Counting.read_bytes <= 2 * header._MAX_HEADER
