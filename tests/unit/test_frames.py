"""Frame byte-range indexing, frame reads and frame decoding over every sample file in tests/data."""

from __future__ import annotations

import io
import struct
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames, parse_fragments
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from shared.core import transfer_syntax as tsx
from shared.core.errors import BadRequest, NotAcceptable, NotFound
from shared.core.frames import (
    FrameIndex,
    PixelDataError,
    decode_frame,
    decoded_photometric_interpretation,
    index_frames,
    read_frame,
    read_pixel_header,
)

DATA = Path(__file__).resolve().parents[1] / "data"
FILES = sorted(p.relative_to(DATA).as_posix() for p in DATA.rglob("*.dcm"))

# Files that cannot be indexed, and why: index_frames must raise PixelDataError for each.
BROKEN = {
    "malformed/made_dicm_then_garbage.dcm": "garbage after the DICM prefix",
    "malformed/made_empty.dcm": "empty file",
    "malformed/made_garbage.dcm": "not DICOM at all",
    "malformed/made_frames_mismatch.dcm": "NumberOfFrames larger than the pixel data",
    "malformed/made_truncated_pixeldata.dcm": "file cut inside Pixel Data",
    "odd/MR_truncated.dcm": "file cut inside Pixel Data",
    "odd/badVR.dcm": "NumberOfFrames is '1A'",
    "odd/meta_missing_tsyntax.dcm": "no transfer syntax and no recognisable data set",
    "odd/no_meta.dcm": "no preamble and no meta: pydicom misreads the data set",
}
# Deflated and big endian data sets have no per-frame byte ranges: their frames are decoded.
DECODE_ONLY = {"nm_sc/image_dfl.dcm", "mr/MR_small_bigendian.dcm", "us/ExplVR_BigEnd.dcm"}
# Fragments cut short of the delimiter: pydicom warns while reading them, and so may we.
TOO_SHORT = "odd/emri_small_jpeg_2k_lossless_too_short.dcm"
COMPLETE = "mr/emri_small_jpeg_2k_lossless.dcm"
# A J2K stream that pydicom's plugins all fail to decode (indexing it is fine).
UNDECODABLE = {"odd/JPEG2000-embedded-sequence-delimiter.dcm"}


def _param(name: str) -> object:
    marks = [pytest.mark.filterwarnings("ignore:End of file reached")] if name == TOO_SHORT else []
    return pytest.param(name, id=name, marks=marks)


def _reader(data: bytes):  # type: ignore[no-untyped-def]
    return lambda offset, length: data[offset : offset + length]


def _reference_frames(name: str, count: int) -> list[bytes]:
    """The stored bytes of each frame as pydicom reads them (fragments joined, or a native slice)."""
    if name == TOO_SHORT:  # pydicom drops its Pixel Data; the file is the complete one minus 8 bytes
        name = COMPLETE
    ds = dcmread(DATA / name, force=True)
    if tsx.is_encapsulated(str(ds.file_meta.TransferSyntaxUID)):
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    size = ds.Rows * ds.Columns * ds.get("SamplesPerPixel", 1) * ds.BitsAllocated // 8
    return [ds.PixelData[i * size : (i + 1) * size] for i in range(count)]


@pytest.mark.parametrize("name", [_param(n) for n in FILES if n not in BROKEN])
def test_read_frame_returns_the_frames_pydicom_reads(name: str) -> None:
    data = (DATA / name).read_bytes()
    index = index_frames(io.BytesIO(data))
    ds = dcmread(DATA / (COMPLETE if name == TOO_SHORT else name), force=True)
    if "PixelData" not in ds:
        assert index.number_of_frames == 0 and not index.direct
        return
    assert index.number_of_frames == int(ds.get("NumberOfFrames") or 1)
    assert index.direct == (name not in DECODE_ONLY)
    if not index.direct:
        assert index.frames == ()
        return
    expected = _reference_frames(name, index.number_of_frames)
    for number, frame in enumerate(expected, start=1):
        assert read_frame(_reader(data), index, number) == frame
    assert all(offset + length <= len(data) for frame in index.frames for offset, length in frame)


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in sorted(BROKEN)])
def test_index_frames_rejects_broken_files_cleanly(name: str) -> None:
    with open(DATA / name, "rb") as fp, pytest.raises(PixelDataError):
        index_frames(fp)


@pytest.mark.parametrize(
    ("name", "syntax", "frames", "media_type"),
    [
        ("ct/CT_small.dcm", "1.2.840.10008.1.2.1", 1, "application/octet-stream"),
        ("rt/rtdose.dcm", "1.2.840.10008.1.2", 15, "application/octet-stream"),
        ("rt/rtstruct.dcm", "1.2.840.10008.1.2", 0, "application/octet-stream"),
        ("us/color3d_jpeg_baseline.dcm", "1.2.840.10008.1.2.4.50", 120, "image/jpeg"),
        ("nm_sc/JPGExtended.dcm", "1.2.840.10008.1.2.4.51", 1, "image/jpeg"),
        ("nm_sc/JPEG-LL.dcm", "1.2.840.10008.1.2.4.70", 1, "image/jpeg"),
        ("sm/highdicom_sm_image_jpegls.dcm", "1.2.840.10008.1.2.4.80", 25, "image/jls"),
        ("nm_sc/JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81", 1, "image/jls"),
        ("mr/emri_small_jpeg_2k_lossless.dcm", "1.2.840.10008.1.2.4.90", 10, "image/jp2"),
        ("nm_sc/JPEG2000.dcm", "1.2.840.10008.1.2.4.91", 1, "image/jp2"),
        ("nm_sc/SC_rgb_rle_2frame.dcm", "1.2.840.10008.1.2.5", 2, "image/dicom-rle"),
        ("nm_sc/image_dfl.dcm", "1.2.840.10008.1.2.1.99", 1, "application/octet-stream"),
        ("us/ExplVR_BigEnd.dcm", "1.2.840.10008.1.2.2", 1, "application/octet-stream"),
        ("sr/test-SR.dcm", "1.2.840.10008.1.2.1", 0, "application/octet-stream"),
    ],
    ids=lambda value: str(value),
)
def test_index_reports_syntax_frame_count_and_frame_media_type(
    name: str, syntax: str, frames: int, media_type: str
) -> None:
    with open(DATA / name, "rb") as fp:
        index = index_frames(fp)
        assert read_pixel_header(fp).number_of_frames == frames
    assert (index.transfer_syntax, index.number_of_frames) == (syntax, frames)
    assert tsx.frame_media_type(index.transfer_syntax) == media_type


@pytest.mark.parametrize(
    ("uid", "media_type"),
    [
        ("1.2.840.10008.1.2.4.57", "image/jpeg"),
        ("1.2.840.10008.1.2.4.92", "image/jpx"),
        ("1.2.840.10008.1.2.4.93", "image/jpx"),
        ("1.2.840.10008.1.2.4.201", "image/jphc"),
        ("1.2.840.10008.1.2.4.203", "image/jphc"),
        ("1.2.840.10008.1.2.4.100", "video/mpeg"),
        ("1.2.840.10008.1.2.4.101.1", "video/mpeg"),
        ("1.2.840.10008.1.2.4.102", "video/mp4"),
        ("1.2.840.10008.1.2.4.106.1", "video/mp4"),
        ("1.2.840.10008.1.2.1.98", "application/octet-stream"),
        ("1.2.3.4", "application/octet-stream"),
    ],
    ids=lambda value: str(value),
)
def test_frame_media_types_follow_ps3_18_table_8_7_3_5(uid: str, media_type: str) -> None:
    assert tsx.frame_media_type(uid) == media_type


@pytest.mark.parametrize(
    ("uid", "decodable"),
    [
        (tsx.EXPLICIT_VR_BIG_ENDIAN, True),
        (tsx.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, True),
        (tsx.JPEG_BASELINE_8BIT, True),
        ("1.2.840.10008.1.2.4.80", True),
        ("1.2.840.10008.1.2.4.90", True),
        (tsx.RLE_LOSSLESS, True),
        ("1.2.840.10008.1.2.4.100", False),
        ("1.2.3.4", False),
    ],
    ids=lambda value: str(value),
)
def test_can_decode_reflects_installed_pydicom_plugins(uid: str, decodable: bool) -> None:
    assert tsx.can_decode(uid) is decodable


def _expected_decoded(name: str, number: int) -> bytes:
    """What a decoded frame must be: pydicom's array for compressed data, stored values otherwise."""
    ds = dcmread(DATA / (COMPLETE if name == TOO_SHORT else name), force=True)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if name == "mr/MR_small_bigendian.dcm":  # the same instance, stored little endian
        return dcmread(DATA / "mr/MR_small.dcm").PixelData
    if name == "us/ExplVR_BigEnd.dcm":  # planar configuration 1 stays as stored
        return np.moveaxis(ds.pixel_array, -1, 0).astype("u1").tobytes()
    if not tsx.is_encapsulated(syntax):
        return _reference_frames(name, int(ds.get("NumberOfFrames") or 1))[number - 1]
    array = ds.pixel_array
    frame = array[number - 1] if int(ds.get("NumberOfFrames") or 1) > 1 else array
    assert decoded_photometric_interpretation(syntax, ds.PhotometricInterpretation) in (
        "RGB",
        ds.PhotometricInterpretation,
    )
    return np.ascontiguousarray(frame).astype(frame.dtype.newbyteorder("<")).tobytes()


def _has_pixel_data(name: str) -> bool:
    with warnings.catch_warnings():  # collection time: the too-short file warns
        warnings.simplefilter("ignore")
        return name == TOO_SHORT or "PixelData" in dcmread(DATA / name, force=True)


DECODABLE = [n for n in FILES if n not in BROKEN and n not in UNDECODABLE and _has_pixel_data(n)]


@pytest.mark.parametrize("name", [_param(n) for n in DECODABLE])
def test_decode_frame_gives_native_little_endian_frames(name: str) -> None:
    with open(DATA / name, "rb") as fp:
        count = read_pixel_header(fp).number_of_frames
        for number in sorted({1, count}):
            assert decode_frame(fp, number) == _expected_decoded(name, number)


def test_decode_frame_of_a_stream_no_plugin_can_decode_is_a_pixel_data_error() -> None:
    with open(DATA / "odd/JPEG2000-embedded-sequence-delimiter.dcm", "rb") as fp:
        assert index_frames(fp).direct
        with pytest.raises(PixelDataError):
            decode_frame(fp, 1)


@pytest.mark.parametrize(
    ("syntax", "stored", "decoded"),
    [
        (tsx.JPEG_BASELINE_8BIT, "YBR_FULL_422", "RGB"),
        ("1.2.840.10008.1.2.4.90", "YBR_RCT", "RGB"),
        (tsx.RLE_LOSSLESS, "YBR_FULL", "RGB"),
        (tsx.EXPLICIT_VR_LITTLE_ENDIAN, "YBR_FULL", "YBR_FULL"),
        (tsx.EXPLICIT_VR_BIG_ENDIAN, "RGB", "RGB"),
        (tsx.JPEG_BASELINE_8BIT, "MONOCHROME2", "MONOCHROME2"),
    ],
    ids=lambda value: str(value),
)
def test_decoded_photometric_interpretation(syntax: str, stored: str, decoded: str) -> None:
    assert decoded_photometric_interpretation(syntax, stored) == decoded


@pytest.mark.parametrize(("number", "error"), [(0, BadRequest), (-1, BadRequest), (2, NotFound)])
def test_frame_numbers_outside_the_instance_are_rejected(number: int, error: type[Exception]) -> None:
    data = (DATA / "ct/CT_small.dcm").read_bytes()
    index = index_frames(io.BytesIO(data))
    with pytest.raises(error):
        read_frame(_reader(data), index, number)
    with pytest.raises(error):
        decode_frame(io.BytesIO(data), number)


def test_read_frame_rejects_a_short_blob_read() -> None:
    data = (DATA / "ct/CT_small.dcm").read_bytes()
    index = index_frames(io.BytesIO(data))
    with pytest.raises(PixelDataError):
        read_frame(lambda offset, length: data[offset : offset + length - 1], index, 1)


def test_read_frame_refuses_an_index_without_ranges() -> None:
    with pytest.raises(ValueError, match="decode"):
        read_frame(_reader(b""), FrameIndex(tsx.EXPLICIT_VR_BIG_ENDIAN, 1), 1)


def test_frame_index_round_trips_through_json() -> None:
    with open(DATA / "nm_sc/SC_rgb_rle_2frame.dcm", "rb") as fp:
        index = index_frames(fp)
    assert FrameIndex.from_json(index.to_json()) == index
    assert index.to_json()["frames"][1] == [list(r) for r in index.frames[1]]


@pytest.mark.parametrize(
    "document",
    [{}, {"transferSyntaxUID": "1.2", "numberOfFrames": 2, "frames": [[[0, 1]]]}, {"frames": "x"}],
    ids=["empty", "fewer-ranges-than-frames", "junk"],
)
def test_frame_index_from_json_rejects_bad_documents(document: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FrameIndex.from_json(document)


# --- encapsulated layouts the sample files do not have: built from real JPEG frames ----------------


def _jpeg_frames(count: int) -> list[bytes]:
    ds = dcmread(DATA / "us/examples_ybr_color.dcm")
    return list(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))[:count]


def _part10(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def _image(rows: int, columns: int, samples: int, bits: int, frames: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PhotometricInterpretation = "YBR_FULL_422" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.NumberOfFrames = frames
    return ds


def _encapsulated(layout: str, syntax: str = tsx.JPEG_BASELINE_8BIT) -> tuple[bytes, list[bytes]]:
    frames = _jpeg_frames(3)
    ds = _image(240, 320, 3, 8, 3)
    ds.PixelData = encapsulate(frames, fragments_per_frame=3, has_bot=layout == "bot")
    if layout == "extended":  # empty BOT; the Extended Offset Table points at each frame's first item
        count, positions = parse_fragments(ds.PixelData[8:])
        assert count == 9
        ds.ExtendedOffsetTable = struct.pack("<3Q", *(positions[i] - positions[0] for i in (0, 3, 6)))
        ds.ExtendedOffsetTableLengths = struct.pack("<3Q", *(len(frame) for frame in frames))
    ds["PixelData"].VR = "OB"
    return _part10(ds, syntax), frames


@pytest.mark.parametrize(
    ("layout", "syntax"),
    [
        ("bot", tsx.RLE_LOSSLESS),  # labelled RLE so that only the table can map the fragments
        ("extended", tsx.RLE_LOSSLESS),
        ("markers", tsx.JPEG_BASELINE_8BIT),  # no table: split where a JPEG SOI marker starts
    ],
    ids=["basic-offset-table", "extended-offset-table", "jpeg-markers"],
)
def test_fragments_are_mapped_to_frames_by_offset_table_or_markers(layout: str, syntax: str) -> None:
    data, frames = _encapsulated(layout, syntax)
    index = index_frames(io.BytesIO(data))
    assert index.direct
    assert [len(ranges) for ranges in index.frames] == [3, 3, 3]
    for number, frame in enumerate(frames, start=1):
        assert read_frame(_reader(data), index, number).rstrip(b"\0") == frame.rstrip(b"\0")


def test_fragments_that_cannot_be_mapped_leave_the_frames_to_the_decoder() -> None:
    data, _ = _encapsulated("markers", syntax=tsx.RLE_LOSSLESS)  # no markers to split RLE on
    index = index_frames(io.BytesIO(data))
    assert index.number_of_frames == 3 and not index.direct


def test_fewer_fragments_than_frames_is_a_pixel_data_error() -> None:
    ds = _image(240, 320, 3, 8, 3)
    ds.PixelData = encapsulate(_jpeg_frames(2))
    ds["PixelData"].VR = "OB"
    with pytest.raises(PixelDataError, match="fragment"):
        index_frames(io.BytesIO(_part10(ds, tsx.JPEG_BASELINE_8BIT)))


def test_decoding_needs_a_plugin() -> None:
    data, _ = _encapsulated("bot", syntax="1.2.840.10008.1.2.4.100")
    with pytest.raises(NotAcceptable):
        decode_frame(io.BytesIO(data), 1)


def test_one_bit_frames_off_byte_boundaries_are_decoded_and_repacked() -> None:
    ds = _image(3, 3, 1, 1, 2)  # 9 bits per frame: frame 2 starts inside a byte
    bits = np.array([1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1], dtype=np.uint8)
    ds.PixelData = np.packbits(bits, bitorder="little").tobytes() + b"\0"
    data = _part10(ds, ExplicitVRLittleEndian)
    index = index_frames(io.BytesIO(data))
    assert index.number_of_frames == 2 and not index.direct
    for number in (1, 2):
        expected = np.packbits(bits[(number - 1) * 9 : number * 9], bitorder="little").tobytes()
        assert decode_frame(io.BytesIO(data), number) == expected


def test_a_1_gb_native_instance_is_indexed_in_constant_memory(tmp_path: Path) -> None:
    ds = dcmread(DATA / "ct/CT_small.dcm", stop_before_pixels=True)
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = 2048
    frame = 512 * 512 * 2
    path = tmp_path / "big.dcm"
    ds.save_as(path)
    with open(path, "r+b") as fp:
        fp.seek(0, 2)
        fp.write(b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<L", 2048 * frame))
        fp.truncate(fp.tell() + 2048 * frame)  # sparse: no real gigabyte on disk
    tracemalloc.start()
    try:
        with open(path, "rb") as fp:
            index = index_frames(fp)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert index.number_of_frames == 2048 and index.frames[-1][0][1] == frame
    assert peak < 8 * 1024 * 1024


def test_encapsulated_fragments_are_walked_without_loading_them() -> None:
    tracemalloc.start()
    try:
        with open(DATA / "us/color3d_jpeg_baseline.dcm", "rb") as fp:  # 6 MB, 120 fragments
            index_frames(fp)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024
