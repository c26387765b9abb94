"""Transcode a stored instance to Explicit VR Little Endian (for clients that ask for 1.2.840.10008.1.2.1).

- Implicit VR and deflated data sets are re-encoded; the pixel data is unchanged.
- Big endian data sets are re-encoded after byte-swapping every binary value pydicom keeps raw
  (VR OW, OF, OL, OD, OV; Pixel Data by its Bits Allocated), as pydicom does not do that itself.
- Encapsulated pixel data is decoded by pydicom (`Dataset.decompress`): YBR_FULL, YBR_FULL_422,
  YBR_ICT and YBR_RCT become RGB, Planar Configuration becomes 0, Pixel Data becomes OB/OW, and
  the SOP Instance UID is kept (the instance is the same; only its encoding changes). Lossy
  sources keep (or gain) Lossy Image Compression "01".

The whole instance is decoded in memory; the caller bounds the instance size.
"""

from __future__ import annotations

import logging
from typing import BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID

from shared.core import transfer_syntax as tsx
from shared.core.errors import NotAcceptable
from shared.core.frames import PixelDataError

__all__ = ["transcode_to_explicit_le"]

logger = logging.getLogger(__name__)

_SWAP_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)


def transcode_to_explicit_le(src: BinaryIO, dst: BinaryIO) -> None:
    """Write `src` (a stored Part 10 file) to `dst` as a Part 10 file in Explicit VR Little Endian."""
    src.seek(0)
    try:
        ds = dcmread(src, force=True)
    except Exception as exc:
        raise PixelDataError("the file cannot be parsed as a DICOM data set") from exc
    uid = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    implicit, little = ds.original_encoding
    if not uid:
        if implicit is None:
            raise PixelDataError("the file cannot be parsed as a DICOM data set")
        uid = tsx.IMPLICIT_VR_LITTLE_ENDIAN if implicit else tsx.EXPLICIT_VR_LITTLE_ENDIAN
        uid = uid if little else tsx.EXPLICIT_VR_BIG_ENDIAN
    ts = tsx.get(uid)
    if ts is None:
        raise NotAcceptable("instances in this transfer syntax cannot be transcoded by this server")
    if ts.encapsulated:
        _decompress(ds, ts)
    elif not ts.little_endian:
        _swap_binary_values(ds)
    ds.file_meta.TransferSyntaxUID = UID(tsx.EXPLICIT_VR_LITTLE_ENDIAN)
    try:
        dcmwrite(dst, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    except (ValueError, AttributeError, TypeError) as exc:
        raise NotAcceptable("this instance cannot be written in Explicit VR Little Endian") from exc


def _decompress(ds: Dataset, ts: tsx.TransferSyntax) -> None:
    if not any(tag in ds for tag in _PIXEL_TAGS):
        return  # nothing to decode: only the encoding of the other attributes changes
    if not tsx.can_decode(ts.uid):
        raise NotAcceptable("instances in this transfer syntax cannot be decoded by this server")
    try:
        ds.decompress(as_rgb=True, generate_instance_uid=False)
    except Exception as exc:
        logger.warning("decompressing an instance failed: %s", type(exc).__name__)
        raise PixelDataError("the pixel data cannot be decoded") from exc
    if ts.lossy and ds.get("LossyImageCompression") != "01":
        ds.LossyImageCompression = "01"


def _swap_binary_values(ds: Dataset) -> None:
    """Byte-swap the raw binary values of a big endian data set, in place, nested items included."""
    bits = int(ds.get("BitsAllocated", 8) or 8)

    def swap(dataset: Dataset, elem: DataElement) -> None:
        size = _SWAP_SIZES.get(str(elem.VR))
        if size is None or not isinstance(elem.value, bytes | bytearray) or not elem.value:
            return
        if dataset is ds and elem.tag == 0x7FE00010 and bits >= 16:
            size = bits // 8
        value = bytes(elem.value)
        usable = len(value) - len(value) % size
        swapped = np.frombuffer(value[:usable], dtype=f">u{size}").astype(f"<u{size}").tobytes()
        elem.value = swapped + value[usable:]

    ds.walk(swap)
