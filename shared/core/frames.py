"""Frames of stored instances: a byte-range index computed at store time, and decoding on demand.

`index_frames` reads the header of a stored Part 10 file with pydicom, then walks the Pixel Data
element itself: for native data it computes each frame's (offset, length) from the value offset
and the frame size, for encapsulated data it walks the fragment items (seeking past their bytes)
and maps fragments to frames. Offsets are absolute positions in the stored file, so WADO-RS can
answer `/frames/{n}` with byte-range reads of the blob (`read_frame`).

The index is EMPTY (`direct` is False) when frames cannot be served from byte ranges: deflated
or big endian data sets, 1-bit data whose frames do not start on a byte boundary, or fragments
that cannot be mapped to frames. Those frames go through `decode_frame`.

Decoded frames (`decode_frame`) are native little endian bytes. For native syntaxes they are the
stored values (big endian data is byte-swapped, nothing else changes: Photometric Interpretation,
Planar Configuration and unused high bits stay as stored). For encapsulated syntaxes pydicom
decodes them colour-by-pixel (Planar Configuration 0) and, as `Dataset.decompress()` does,
converts YBR_FULL, YBR_FULL_422, YBR_ICT and YBR_RCT to RGB: `decoded_photometric_interpretation`
says which interpretation the bytes are in. 1-bit frames are packed from the first bit of a byte.
So a decoded frame equals the frame of the instance transcoded to Explicit VR Little Endian by
`shared.core.transcode`.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array

from shared.core import transfer_syntax as tsx
from shared.core.errors import BadRequest, NotAcceptable, NotFound

__all__ = [
    "FrameIndex",
    "PixelDataError",
    "PixelHeader",
    "check_frame_number",
    "decode_frame",
    "decoded_photometric_interpretation",
    "index_frames",
    "read_frame",
    "read_pixel_header",
]

logger = logging.getLogger(__name__)

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
_PIXEL_TAGS = {PIXEL_DATA: 0, FLOAT_PIXEL_DATA: 32, DOUBLE_FLOAT_PIXEL_DATA: 64}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"}
_ITEM, _SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_BOT_BYTES = 64 * 1024 * 1024
_YBR_TO_RGB = {"YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"}
_JPEG_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57"}
_JPEG_SYNTAXES |= {"1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
_J2K_SYNTAXES = {f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 92, 93, 201, 202, 203)}
_SOI: tuple[bytes, ...] = (b"\xff\xd8",)
_J2K_START: tuple[bytes, ...] = (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")

Range = tuple[int, int]


class PixelDataError(ValueError):
    """The pixel data of an instance is missing, truncated or inconsistent with its attributes."""


@dataclass(frozen=True, slots=True)
class FrameIndex:
    """Where each frame lies in the stored file: per frame, (offset, length) ranges to concatenate.

    `frames` is empty when the frames must be decoded instead of read (see the module docstring).
    """

    transfer_syntax: str
    number_of_frames: int
    frames: tuple[tuple[Range, ...], ...] = ()

    @property
    def direct(self) -> bool:
        """True when every frame can be answered from byte ranges of the stored file."""
        return self.number_of_frames > 0 and len(self.frames) == self.number_of_frames

    def to_json(self) -> dict[str, Any]:
        return {
            "transferSyntaxUID": self.transfer_syntax,
            "numberOfFrames": self.number_of_frames,
            "frames": [[[offset, length] for offset, length in frame] for frame in self.frames],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FrameIndex:
        try:
            frames = tuple(
                tuple((int(offset), int(length)) for offset, length in frame) for frame in data["frames"]
            )
            index = cls(str(data["transferSyntaxUID"]), int(data["numberOfFrames"]), frames)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError("not a frame index document") from exc
        if index.number_of_frames < 0 or (index.frames and not index.direct):
            raise ValueError("frame index does not match its number of frames")
        return index


@dataclass(frozen=True, slots=True)
class PixelHeader:
    """The attributes stored before the pixel data, and how many frames the instance holds."""

    dataset: Dataset
    transfer_syntax: str
    number_of_frames: int  # 0 when the instance has no pixel data


@dataclass(frozen=True, slots=True)
class _Header:
    dataset: Dataset
    transfer_syntax: str
    implicit_vr: bool
    little_endian: bool
    number_of_frames: int
    pixel_position: int  # where the pixel data element starts (or the end of the file)


@dataclass(frozen=True, slots=True)
class _Value:
    tag: int
    vr: bytes
    offset: int
    length: int


def index_frames(fp: BinaryIO, parsed: tuple[Dataset, int] | None = None) -> FrameIndex:
    """Index the frames of a stored Part 10 file (seekable, positioned anywhere).

    `parsed` is the header the caller already read with `dcmread(fp, stop_before_pixels=True)` and
    the position it stopped at, so the header is parsed once per store.
    """
    header = _read_header(fp, parsed)
    ts = tsx.get(header.transfer_syntax)
    if ts is not None and ts.deflated:
        return _index_deflated(fp, header)
    value = _pixel_value(fp, header)
    if value is None:
        return FrameIndex(header.transfer_syntax, 0)
    size = fp.seek(0, 2)
    if value.length == _UNDEFINED:
        return _index_encapsulated(fp, header, value, size)
    if ts is not None and ts.encapsulated:
        raise PixelDataError("Pixel Data of a compressed transfer syntax is not encapsulated")
    available = min(value.length, size - value.offset)
    frame_bits = _frame_bits(header.dataset, value.tag)
    if header.number_of_frames * frame_bits > available * 8:
        raise PixelDataError(
            f"Pixel Data holds {available} bytes, fewer than {header.number_of_frames} frame(s) need"
        )
    if not header.little_endian or frame_bits % 8:
        return FrameIndex(header.transfer_syntax, header.number_of_frames)
    step = frame_bits // 8
    frames = tuple(((value.offset + i * step, step),) for i in range(header.number_of_frames))
    return FrameIndex(header.transfer_syntax, header.number_of_frames, frames)


def read_pixel_header(fp: BinaryIO) -> PixelHeader:
    """Read the attributes before the pixel data (not the pixel data itself) and count the frames."""
    header = _read_header(fp)
    ts = tsx.get(header.transfer_syntax)
    if ts is not None and ts.deflated:
        frames = _index_deflated(fp, header).number_of_frames
    else:
        frames = header.number_of_frames if _pixel_value(fp, header) is not None else 0
    return PixelHeader(header.dataset, header.transfer_syntax, frames)


def check_frame_number(number: int, count: int) -> None:
    """BadRequest for frame numbers below 1, NotFound past the last frame."""
    if number < 1:
        raise BadRequest("frame numbers start at 1")
    if number > count:
        raise NotFound(f"frame {number} does not exist: the instance has {count} frame(s)")


def read_frame(read_range: Callable[[int, int], bytes], index: FrameIndex, number: int) -> bytes:
    """The stored bytes of frame `number` (1-based), read with `read_range(offset, length)`."""
    check_frame_number(number, index.number_of_frames)
    if not index.direct:
        raise ValueError("this instance's frames have no byte ranges: decode them instead")
    parts = []
    for offset, length in index.frames[number - 1]:
        data = read_range(offset, length)
        if len(data) != length:
            raise PixelDataError("the stored instance is shorter than its frame index")
        parts.append(data)
    return b"".join(parts)


def decode_frame(fp: BinaryIO, number: int) -> bytes:
    """Native little endian bytes of frame `number` (1-based) for any syntax that can be decoded."""
    header = _read_header(fp)
    check_frame_number(number, read_pixel_header(fp).number_of_frames)
    ts = tsx.get(header.transfer_syntax)
    if ts is None or ts.encapsulated:
        return _decode_encapsulated(fp, header, number)
    ds = header.dataset
    if ts.deflated:
        fp.seek(0)
        ds = dcmread(fp, force=True)
        tag = next((t for t in _PIXEL_TAGS if t in ds), PIXEL_DATA)
        value = bytes(ds[tag].value)
        vr = str(ds[tag].VR).encode()
    else:
        found = _pixel_value(fp, header)
        assert found is not None  # the header counted frames, so Pixel Data is there
        tag, vr = found.tag, found.vr
        fp.seek(found.offset)
        value = fp.read(found.length)
    if not header.little_endian:
        value = _byteswap(value, _word_size(ds, vr))
    frame_bits = _frame_bits(ds, tag)
    start, end = (number - 1) * frame_bits, number * frame_bits
    if end > len(value) * 8:
        raise PixelDataError("Pixel Data is shorter than its frames")
    if frame_bits % 8 == 0:
        return value[start // 8 : end // 8]
    bits = np.unpackbits(np.frombuffer(value, dtype=np.uint8), bitorder="little")[start:end]
    return bytes(np.packbits(bits, bitorder="little").tobytes())


def decoded_photometric_interpretation(transfer_syntax: str, stored: str) -> str:
    """The Photometric Interpretation of frames returned by `decode_frame` for this stored one."""
    if tsx.is_encapsulated(transfer_syntax) and stored in _YBR_TO_RGB:
        return "RGB"
    return stored


def _decode_encapsulated(fp: BinaryIO, header: _Header, number: int) -> bytes:
    if not tsx.can_decode(header.transfer_syntax):
        raise NotAcceptable("frames in this transfer syntax cannot be decoded by this server")
    fp.seek(0)
    try:
        array = pixel_array(fp, index=number - 1, as_rgb=True)
    except Exception as exc:
        logger.warning("decoding a frame failed: %s", type(exc).__name__)
        raise PixelDataError("the frame cannot be decoded") from exc
    bits = _int(header.dataset, 0x00280100) or 8
    if bits == 1:
        flat = np.asarray(array, dtype=np.uint8).reshape(-1)
        return bytes(np.packbits(flat, bitorder="little").tobytes())
    kind = "i" if array.dtype.kind == "i" else ("f" if array.dtype.kind == "f" else "u")
    dtype = np.dtype(f"<{kind}{max(bits // 8, 1)}")
    return bytes(np.ascontiguousarray(array, dtype=dtype).tobytes())


def _read_header(fp: BinaryIO, parsed: tuple[Dataset, int] | None = None) -> _Header:
    """Read everything before the pixel data; fp is left at the Pixel Data tag (or at the end)."""
    if parsed is not None:
        ds, position = parsed
        fp.seek(position)
    else:
        fp.seek(0)
        try:
            ds = dcmread(fp, stop_before_pixels=True, force=True)
        except Exception as exc:  # pydicom raises many kinds of errors on broken files
            raise PixelDataError("the file cannot be parsed as a DICOM data set") from exc
    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        raise PixelDataError("the file cannot be parsed as a DICOM data set")
    if uid is None:
        # No File Meta: only accept what pydicom recognised as a data set with a standard element.
        first = next(iter(ds.keys()), None)
        if first is None or not dictionary_has_tag(first):
            raise PixelDataError("the file cannot be parsed as a DICOM data set")
        uid = (
            tsx.IMPLICIT_VR_LITTLE_ENDIAN
            if implicit
            else (tsx.EXPLICIT_VR_LITTLE_ENDIAN if little else tsx.EXPLICIT_VR_BIG_ENDIAN)
        )
    frames = 1
    if ds.get_item(0x00280008) is not None:
        try:
            frames = _int(ds, 0x00280008, strict=True) or 1
        except ValueError as exc:
            raise PixelDataError("Number of Frames is not a valid number") from exc
    if frames < 1:
        raise PixelDataError("Number of Frames must be at least 1")
    ts = tsx.get(str(uid))
    if ts is not None:  # trust the declared syntax over pydicom's guess
        implicit, little = not ts.explicit_vr, ts.little_endian
    return _Header(ds, str(uid), bool(implicit), bool(little), frames, fp.tell())


def _pixel_value(fp: BinaryIO, header: _Header) -> _Value | None:
    """The pixel data element where `_read_header` stopped (pydicom rewinds to its tag), or None."""
    start = fp.seek(header.pixel_position)
    raw = fp.read(8)
    if len(raw) < 8:
        return None
    endian = "<" if header.little_endian else ">"
    group, element = struct.unpack(f"{endian}HH", raw[:4])
    tag = (group << 16) | element
    if tag not in _PIXEL_TAGS:
        return None
    if header.implicit_vr:
        return _Value(tag, b"", start + 8, struct.unpack(f"{endian}L", raw[4:8])[0])
    vr = raw[4:6]
    if vr in _LONG_VRS:
        more = fp.read(4)
        if len(more) < 4:
            raise PixelDataError("the file ends inside the Pixel Data header")
        return _Value(tag, vr, start + 12, struct.unpack(f"{endian}L", more)[0])
    return _Value(tag, vr, start + 8, struct.unpack(f"{endian}H", raw[6:8])[0])


def _index_deflated(fp: BinaryIO, header: _Header) -> FrameIndex:
    fp.seek(0)
    try:
        ds = dcmread(fp, force=True)
    except Exception as exc:
        raise PixelDataError("the deflated data set cannot be inflated") from exc
    tag = next((t for t in _PIXEL_TAGS if t in ds), None)
    if tag is None:
        return FrameIndex(header.transfer_syntax, 0)
    if header.number_of_frames * _frame_bits(ds, tag) > len(ds[tag].value) * 8:
        raise PixelDataError("Pixel Data holds fewer bytes than its frames need")
    return FrameIndex(header.transfer_syntax, header.number_of_frames)


def _index_encapsulated(fp: BinaryIO, header: _Header, value: _Value, size: int) -> FrameIndex:
    if not header.little_endian:
        raise PixelDataError("encapsulated Pixel Data must be little endian")
    fp.seek(value.offset)
    offsets = _read_items(fp, size, first=True)
    if not offsets:
        raise PixelDataError("encapsulated Pixel Data has no Basic Offset Table item")
    bot_offset, bot_length = offsets[0]
    fragments = offsets[1:]
    n = header.number_of_frames
    if not fragments:
        raise PixelDataError("encapsulated Pixel Data has no fragments")
    if len(fragments) < n:
        raise PixelDataError(f"encapsulated Pixel Data has {len(fragments)} fragment(s) for {n} frames")
    starts = [offset - fragments[0][0] for offset, _ in fragments]  # item tags, from the first one
    mapped = _map_fragments(fp, header, fragments, starts, bot_offset, bot_length)
    if mapped is None:
        logger.info("fragments cannot be mapped to %d frames; frames will be decoded", n)
        return FrameIndex(header.transfer_syntax, n)
    return FrameIndex(header.transfer_syntax, n, mapped)


def _read_items(fp: BinaryIO, size: int, *, first: bool) -> list[Range]:
    """(value offset, length) of each item up to the sequence delimiter, seeking past the values."""
    items: list[Range] = []
    position = fp.tell()
    while True:
        if position == size:
            logger.info("encapsulated Pixel Data ends without a sequence delimiter")
            return items
        raw = fp.read(8)
        if len(raw) < 8:
            raise PixelDataError("the file ends inside encapsulated Pixel Data")
        group, element, length = struct.unpack("<HHL", raw)
        tag = (group << 16) | element
        if tag == _SEQUENCE_DELIMITER:
            return items
        if tag != _ITEM or length == _UNDEFINED:
            raise PixelDataError("encapsulated Pixel Data holds something other than items")
        if position + 8 + length > size:
            raise PixelDataError("the file ends inside a Pixel Data fragment")
        items.append((position + 8, length))
        position = fp.seek(position + 8 + length)


def _map_fragments(
    fp: BinaryIO,
    header: _Header,
    fragments: Sequence[Range],
    starts: Sequence[int],
    bot_offset: int,
    bot_length: int,
) -> tuple[tuple[Range, ...], ...] | None:
    n = header.number_of_frames
    if len(fragments) == n:
        return tuple((fragment,) for fragment in fragments)
    if n == 1:
        return (tuple(fragments),)
    ds = header.dataset
    eot = ds.get("ExtendedOffsetTable")
    if eot is not None and len(eot) == 8 * n:
        table = [int(x) for x in np.frombuffer(eot, dtype="<u8")]
        by_table = _split_at(fragments, starts, table)
        if by_table is not None:
            return by_table
    if bot_length == 4 * n and bot_length <= _MAX_BOT_BYTES:
        fp.seek(bot_offset)
        table = [int(x) for x in np.frombuffer(fp.read(bot_length), dtype="<u4")]
        by_table = _split_at(fragments, starts, table)
        if by_table is not None:
            return by_table
    if header.transfer_syntax in _JPEG_SYNTAXES:
        markers = _SOI
    elif header.transfer_syntax in _J2K_SYNTAXES:
        markers = _J2K_START
    else:
        return None
    firsts = []
    for i, (offset, length) in enumerate(fragments):
        fp.seek(offset)
        if fp.read(min(length, 8)).startswith(markers):
            firsts.append(i)
    if len(firsts) != n or firsts[0] != 0:
        return None
    bounds = [*firsts, len(fragments)]
    return tuple(tuple(fragments[bounds[i] : bounds[i + 1]]) for i in range(n))


def _split_at(
    fragments: Sequence[Range], starts: Sequence[int], table: Sequence[int]
) -> tuple[tuple[Range, ...], ...] | None:
    """Group fragments by an offset table (offsets of each frame's first item tag)."""
    position = {start: i for i, start in enumerate(starts)}
    if not table or table[0] != 0 or any(b <= a for a, b in pairwise(table)):
        return None
    if any(offset not in position for offset in table):
        return None
    bounds = [position[offset] for offset in table] + [len(fragments)]
    return tuple(tuple(fragments[bounds[i] : bounds[i + 1]]) for i in range(len(table)))


def _frame_bits(ds: Dataset, tag: int) -> int:
    rows, columns = _int(ds, 0x00280010), _int(ds, 0x00280011)
    samples = _int(ds, 0x00280002) or 1
    bits = _PIXEL_TAGS[tag] or _int(ds, 0x00280100)
    if not rows or not columns or not bits or rows < 0 or columns < 0 or samples < 0:
        raise PixelDataError("Rows, Columns or Bits Allocated are missing or invalid")
    if bits != 1 and bits % 8:
        raise PixelDataError("Bits Allocated must be 1 or a multiple of 8")
    return rows * columns * samples * bits


def _word_size(ds: Dataset, vr: bytes) -> int:
    bits = _int(ds, 0x00280100) or 8
    if bits >= 16:
        return bits // 8
    return 2 if vr == b"OW" else 1


def _byteswap(value: bytes, size: int) -> bytes:
    if size == 1:
        return value
    usable = len(value) - len(value) % size
    swapped = np.frombuffer(value[:usable], dtype=f">u{size}").astype(f"<u{size}").tobytes()
    return bytes(swapped) + value[usable:]


def _int(ds: Dataset, tag: int, *, strict: bool = False) -> int | None:
    """An integer attribute read from the raw element, so bad values never warn; None if absent."""
    elem = ds.get_item(tag)
    if elem is None:
        return None
    if not isinstance(elem, RawDataElement):
        value = elem.value
        value = value[0] if isinstance(value, list | tuple) and value else value
        return int(value) if value not in (None, "") else None
    raw = elem.value or b""
    vr = str(elem.VR) if elem.VR else dictionary_VR(tag)
    try:
        if vr in ("US", "SS"):
            endian = "<" if elem.is_little_endian else ">"
            code = "h" if vr == "SS" else "H"
            return int(struct.unpack(f"{endian}{code}", raw[:2])[0]) if len(raw) >= 2 else None
        text = raw.decode("ascii").split("\\")[0].strip(" \0")
        return int(text) if text else None
    except (ValueError, UnicodeDecodeError):
        if strict:
            raise ValueError("not an integer") from None
        return None
