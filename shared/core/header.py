"""The header of a Part 10 file, as `pydicom.dcmread(fp, stop_before_pixels=True)` reads it, faster.

STOW-RS parses the header of every instance it stores, and pydicom's reader was the largest part
of that work: about 300 µs for a 34-element header, most of it generic machinery (the file meta,
an empty command set and the data set each go through `read_dataset` and its element generator,
and five datasets are built). `read_header` reads the usual file from memory with `struct` and
builds what `dcmread` builds from it: the same `RawDataElement` tuples (tag, VR, length, value,
value position), a `FileMetaDataset`, a `FileDataset`, the same encodings, and the file left at the
same place (the Pixel Data tag, or the end). Sequences of undefined length are read by pydicom's
own `read_sequence`.

Whatever pydicom would read differently from the plain case goes to `dcmread` itself, so the
answer is always pydicom's: no `DICM` prefix, no File Meta or no Transfer Syntax UID, big endian,
deflated or private syntaxes, a command set, a data set whose first element says another VR
encoding than its syntax, a VR pydicom does not know (it would guess), an item delimiter at the
top level, an undefined-length element that is not a sequence, a truncated element, or a header
of more than `_MAX_HEADER` bytes. `tests/unit/test_header.py` compares both readers on every
sample file.
"""

from __future__ import annotations

import struct
from collections.abc import MutableSequence
from typing import Any, BinaryIO

import pydicom.uid
from pydicom import config, dcmread
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import _dictionary_vr_fast  # what pydicom's element generator asks
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR
from pydicom.values import convert_string

__all__ = ["read_header"]

_FIRST_READ = 16 * 1024  # a CT or MR header fits; more is read as needed
_MAX_HEADER = 4 * 1024 * 1024  # larger headers (big private blobs) go through pydicom
_PREFIX_END = 132  # 128-byte preamble, then "DICM"
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # where stop_before_pixels stops
_ITEM_DELIMITER = 0xFFFEE00D
_CHARSET = 0x00080005
_GROUP_LENGTH = 0x00020000
_UNDEFINED = 0xFFFFFFFF
# The VRs pydicom reads without guessing, as the str its element generator gives them.
_VRS: dict[bytes, str] = {str(vr).encode(default_encoding): str(vr) for vr in VR}
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHL")
_U32 = struct.Struct("<L")
_TAG = struct.Struct("<HH")
_new_tuple = tuple.__new__
_NOT_READABLE = frozenset(
    {
        pydicom.uid.ExplicitVRBigEndian,
        pydicom.uid.DeflatedExplicitVRLittleEndian,
    }
)


# The layout of pydicom's raw element tuple that `_elements` builds directly. Should a pydicom
# release change it, every file goes through `dcmread` (and tests/unit/test_header.py says so).
_RAW_FIELDS = (
    "tag", "VR", "length", "value", "value_tell",
    "is_implicit_VR", "is_little_endian", "is_raw", "is_buffered",
)  # fmt: skip
FAST_PATH = RawDataElement._fields == _RAW_FIELDS


class _Declined(Exception):
    """The file is not the plain case: pydicom reads it."""


def read_header(fp: BinaryIO) -> tuple[Dataset, int]:
    """`dcmread(fp, stop_before_pixels=True)` and the position it left `fp` at (also left there).

    `fp` is seekable and holds the file from its start. Raises what `dcmread` raises."""
    fp.seek(0)
    try:
        if not FAST_PATH:
            raise _Declined
        ds, position = _Reader(fp).read()
    except Exception:  # _Declined, or a sequence pydicom's reader may take differently as a whole
        fp.seek(0)
        ds = dcmread(fp, stop_before_pixels=True)
        return ds, fp.tell()
    fp.seek(position)
    return ds, position


class _Reader:
    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self._data = fp.read(_FIRST_READ)
        self._eof = len(self._data) < _FIRST_READ

    def _have(self, end: int) -> bool:
        """Whether the file's first `end` bytes are in memory (reading more if need be). Never
        past `_MAX_HEADER`: a header element claiming gigabytes is left to pydicom unread."""
        data = self._data
        if end > _MAX_HEADER:
            return len(data) >= end
        while len(data) < end:
            if self._eof:
                return False
            self._fp.seek(len(data))
            more = self._fp.read(max(len(data), end - len(data)))
            if len(more) < max(len(data), end - len(data)):
                self._eof = True
            data += more
            self._data = data
        return True

    def read(self) -> tuple[Dataset, int]:
        if not self._have(_PREFIX_END) or self._data[128:_PREFIX_END] != b"DICM":
            raise _Declined
        preamble = self._data[:128]
        meta, position = self._elements(_PREFIX_END, False, True, default_encoding)
        if not meta:
            raise _Declined
        # What follows the File Meta: not a command set (group 0000), not the end of the file.
        if not self._have(position + 8) or _TAG.unpack_from(self._data, position)[0] == 0:
            raise _Declined
        file_meta = FileMetaDataset(meta)
        file_meta.set_original_encoding(False, True, default_encoding)
        if _GROUP_LENGTH in meta:
            file_meta[_GROUP_LENGTH]  # converted in place, as pydicom's check of its value leaves it
        syntax = file_meta.get("TransferSyntaxUID")
        if syntax is None or syntax in _NOT_READABLE or syntax in pydicom.uid.PrivateTransferSyntaxes:
            raise _Declined
        implicit = syntax == pydicom.uid.ImplicitVRLittleEndian
        # pydicom checks the first element's VR bytes against the syntax and follows what it finds.
        first_vr = self._data[position + 4 : position + 6]
        if (not (0x40 < first_vr[0] < 0x5B and 0x40 < first_vr[1] < 0x5B)) != implicit:
            raise _Declined
        elements, position = self._elements(position, implicit, False, default_encoding)
        # pydicom builds a Dataset of the elements first and the FileDataset from it; the
        # FileDataset takes its elements, and its encodings are set from (0008,0005) as here.
        ds = FileDataset(self._fp, elements, preamble, file_meta, implicit, True)
        ds.set_original_encoding(implicit, True, ds._character_set)
        return ds, position

    def _elements(
        self, position: int, implicit: bool, meta: bool, encoding: str | MutableSequence[str]
    ) -> tuple[dict[BaseTag, Any], int]:
        """pydicom's `data_element_generator` over the data in memory, little endian, from `position`
        to the first element past group 0002 (`meta`) or at the pixel data, then at its tag; or to
        the end of the file."""
        elements: dict[BaseTag, Any] = {}
        data = self._data
        size = len(data)
        while True:
            if position + 12 > size:  # maybe near the end of what is in memory
                if not self._have(position + 8):
                    if self._eof and position == len(self._data):
                        return elements, position  # the end of the file, where pydicom stops too
                    raise _Declined
                self._have(position + 12)
                data = self._data
                size = len(data)
            if implicit:
                group, number, length = _IMPLICIT.unpack_from(data, position)
                vr: str | None = None
                start = position + 8
            else:
                group, number, raw_vr, length = _EXPLICIT.unpack_from(data, position)
                vr = _VRS.get(raw_vr)
                if vr is None:
                    if meta and group != 2:  # the next group, in another encoding
                        return elements, position
                    raise _Declined  # pydicom would guess: implicit VR, or an unknown one
                start = position + 8
                if vr in _LONG_VRS:
                    if position + 12 > size:
                        raise _Declined
                    length = _U32.unpack_from(data, start)[0]
                    start += 4
            tag = group << 16 | number
            if meta:
                if group != 2:
                    return elements, position
            elif tag in _PIXEL_TAGS:
                return elements, position
            if tag == _ITEM_DELIMITER:
                raise _Declined
            key = BaseTag(tag)
            if length == _UNDEFINED:
                elements[key] = self._sequence(key, vr, start, implicit, encoding)
                position = self._fp.tell()
                self._have(position + 12)
                data = self._data
                size = len(data)
                continue
            end = start + length
            if end > size:
                if not self._have(end):
                    raise _Declined  # truncated, or a header too large to read here
                data = self._data
                size = len(data)
            value: Any
            if length:
                value = data[start:end]
                if tag == _CHARSET:
                    encoding = convert_encodings(convert_string(value, True))
            else:
                value = empty_value_for_VR(vr, raw=True)
                if tag == _CHARSET:
                    encoding = convert_encodings(convert_string(b"", True))
            # RawDataElement(key, vr, length, value, start, implicit, True): is_raw, not buffered
            elements[key] = _new_tuple(
                RawDataElement, (key, vr, length, value, start, implicit, True, True, False)
            )
            position = end

    def _sequence(
        self, tag: BaseTag, vr: str | None, start: int, implicit: bool, encoding: str | MutableSequence[str]
    ) -> DataElement:
        """An undefined-length element: a sequence, read by pydicom (anything else is declined)."""
        if vr == VR.UN and config.settings.infer_sq_for_un_vr:
            vr = VR.SQ
        if vr is None or (vr == VR.UN and config.replace_un_with_known_vr):
            try:
                vr = _dictionary_vr_fast(tag)
            except KeyError:
                raise _Declined from None
        if vr != VR.SQ:
            raise _Declined
        self._fp.seek(start)
        seq = read_sequence(self._fp, implicit, True, _UNDEFINED, encoding)
        return DataElement(tag, vr, seq, start, is_undefined_length=True)
