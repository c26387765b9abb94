"""The transfer syntaxes the server knows, and what each means for pixel data and WADO-RS frames.

Frame media types follow PS3.18 Table 8.7.3-4 (uncompressed bulk data: `application/octet-stream`)
and Table 8.7.3-5 (compressed bulk data: `image/jpeg`, `image/jls`, `image/jp2`, `image/jpx`,
`image/dicom-rle`, `image/jphc`, `video/mpeg`, `video/mp4`). HEVC/H.265 streams are answered as
`video/H265`, the media type Table 8.7.4-1 gives H.265 video. Deflated and big endian data sets are
encoded as a whole, not per frame: their frames are always served as native little endian bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom.pixels.decoders.base import get_decoder

__all__ = [
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN",
    "ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN",
    "EXPLICIT_VR_BIG_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "JPEG_BASELINE_8BIT",
    "JPEG_LOSSLESS_SV1",
    "RLE_LOSSLESS",
    "TRANSFER_SYNTAXES",
    "TransferSyntax",
    "can_decode",
    "frame_media_type",
    "get",
    "is_encapsulated",
]

logger = logging.getLogger(__name__)

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.98"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_BASELINE_8BIT = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
JPEG_2000_MC_LOSSLESS = "1.2.840.10008.1.2.4.92"
JPEG_2000_MC = "1.2.840.10008.1.2.4.93"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class TransferSyntax:
    """One transfer syntax: how the data set and its pixel data are encoded.

    `frame_media_type` is the media type of one frame in WADO-RS (the stored bytes of an
    encapsulated frame, or native little endian bytes); `lossy` means the encoding may lose data.
    """

    uid: str
    name: str
    encapsulated: bool
    little_endian: bool = True
    explicit_vr: bool = True
    deflated: bool = False
    lossy: bool = False
    frame_media_type: str = OCTET_STREAM

    @property
    def native(self) -> bool:
        """True when the pixel data is stored uncompressed (maybe inside a deflated data set)."""
        return not self.encapsulated


def _compressed(uid: str, name: str, media_type: str, *, lossy: bool) -> TransferSyntax:
    return TransferSyntax(uid, name, encapsulated=True, lossy=lossy, frame_media_type=media_type)


def _video(uid: str, name: str, media_type: str) -> list[TransferSyntax]:
    """A video syntax and its fragmentable variant (PS3.5 Table A-1 adds `.1` to the UID)."""
    return [
        _compressed(uid, name, media_type, lossy=True),
        _compressed(f"{uid}.1", f"Fragmentable {name}", media_type, lossy=True),
    ]


_TABLE: list[TransferSyntax] = [
    TransferSyntax(IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", False, explicit_vr=False),
    TransferSyntax(EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian", False),
    TransferSyntax(
        ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN,
        "Encapsulated Uncompressed Explicit VR Little Endian",
        True,
    ),
    TransferSyntax(
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "Deflated Explicit VR Little Endian", False, deflated=True
    ),
    TransferSyntax(EXPLICIT_VR_BIG_ENDIAN, "Explicit VR Big Endian", False, little_endian=False),
    _compressed(JPEG_BASELINE_8BIT, "JPEG Baseline (Process 1)", "image/jpeg", lossy=True),
    _compressed(JPEG_EXTENDED_12BIT, "JPEG Extended (Process 2 & 4)", "image/jpeg", lossy=True),
    _compressed(JPEG_LOSSLESS, "JPEG Lossless, Non-Hierarchical (Process 14)", "image/jpeg", lossy=False),
    _compressed(
        JPEG_LOSSLESS_SV1,
        "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])",
        "image/jpeg",
        lossy=False,
    ),
    _compressed(JPEG_LS_LOSSLESS, "JPEG-LS Lossless Image Compression", "image/jls", lossy=False),
    _compressed(
        JPEG_LS_NEAR_LOSSLESS, "JPEG-LS Lossy (Near-Lossless) Image Compression", "image/jls", lossy=True
    ),
    _compressed(JPEG_2000_LOSSLESS, "JPEG 2000 Image Compression (Lossless Only)", "image/jp2", lossy=False),
    _compressed(JPEG_2000, "JPEG 2000 Image Compression", "image/jp2", lossy=True),
    _compressed(
        JPEG_2000_MC_LOSSLESS,
        "JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only)",
        "image/jpx",
        lossy=False,
    ),
    _compressed(JPEG_2000_MC, "JPEG 2000 Part 2 Multi-component Image Compression", "image/jpx", lossy=True),
    _compressed(RLE_LOSSLESS, "RLE Lossless", "image/dicom-rle", lossy=False),
    _compressed(HTJ2K_LOSSLESS, "High-Throughput JPEG 2000 (Lossless Only)", "image/jphc", lossy=False),
    _compressed(
        HTJ2K_LOSSLESS_RPCL,
        "High-Throughput JPEG 2000 with RPCL Options (Lossless Only)",
        "image/jphc",
        lossy=False,
    ),
    _compressed(HTJ2K, "High-Throughput JPEG 2000 Image Compression", "image/jphc", lossy=True),
    *_video("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile / Main Level", "video/mpeg"),
    *_video("1.2.840.10008.1.2.4.101", "MPEG2 Main Profile / High Level", "video/mpeg"),
    *_video("1.2.840.10008.1.2.4.102", "MPEG-4 AVC/H.264 High Profile / Level 4.1", "video/mp4"),
    *_video(
        "1.2.840.10008.1.2.4.103", "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1", "video/mp4"
    ),
    *_video("1.2.840.10008.1.2.4.104", "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video", "video/mp4"),
    *_video("1.2.840.10008.1.2.4.105", "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video", "video/mp4"),
    *_video("1.2.840.10008.1.2.4.106", "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2", "video/mp4"),
    _compressed("1.2.840.10008.1.2.4.107", "HEVC/H.265 Main Profile / Level 5.1", "video/H265", lossy=True),
    _compressed(
        "1.2.840.10008.1.2.4.108", "HEVC/H.265 Main 10 Profile / Level 5.1", "video/H265", lossy=True
    ),
]

TRANSFER_SYNTAXES: dict[str, TransferSyntax] = {ts.uid: ts for ts in _TABLE}


def get(uid: str) -> TransferSyntax | None:
    """The known transfer syntax with this UID, or None."""
    return TRANSFER_SYNTAXES.get(uid.strip().rstrip("\0"))


def is_encapsulated(uid: str) -> bool:
    """True for transfer syntaxes whose pixel data is encapsulated (fragments, one or more per frame)."""
    ts = get(uid)
    return ts is not None and ts.encapsulated


def frame_media_type(uid: str) -> str:
    """The media type of a frame stored in this syntax; native and unknown syntaxes are octet streams."""
    ts = get(uid)
    return ts.frame_media_type if ts is not None else OCTET_STREAM


def can_decode(uid: str) -> bool:
    """True when an installed pydicom decoder plugin can decode pixel data in this transfer syntax."""
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return False
    available = bool(decoder.is_available)
    if not available:
        logger.debug("no decoder plugin installed for transfer syntax %s", uid)
    return available
