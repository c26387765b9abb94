"""Render one frame of a stored instance as an 8-bit JPEG or PNG (WADO-RS /rendered, thumbnails).

The grey pipeline follows PS3.3 C.11 / PS3.4 N.2: stored values -> Modality LUT (Modality LUT
Sequence, or Rescale Slope/Intercept) -> VOI LUT (VOI LUT Sequence, else the first Window
Center/Width with its VOI LUT Function, else the frame's own min-max) -> 0..255, inverted for
MONOCHROME1 (or a Presentation LUT Shape of INVERSE). For enhanced multi-frame instances the
Pixel Value Transformation and Frame VOI LUT functional groups of the frame (per-frame, over
shared, over the top level) are used. Colour: PALETTE COLOR goes through its lookup tables, YBR
is converted to RGB by pydicom, and samples wider than 8 bits are scaled by Bits Stored.
"""

from __future__ import annotations

import io
import logging
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.pixels.utils import pixel_array

from shared.core import transfer_syntax as tsx
from shared.core.errors import BadRequest, NotAcceptable
from shared.core.frames import PixelDataError, check_frame_number, read_pixel_header

__all__ = ["RENDERED_MEDIA_TYPES", "render_frame"]

logger = logging.getLogger(__name__)

RENDERED_MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}
_COPIED = (
    "BitsStored",
    "BitsAllocated",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "PresentationLUTShape",
)
_GROUPS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")

Floats = NDArray[np.float64]


def render_frame(fp: BinaryIO, number: int, media_type: str, quality: int = 90) -> bytes:
    """Frame `number` (1-based) of the stored file `fp`, rendered as `media_type` (JPEG or PNG)."""
    image_format = RENDERED_MEDIA_TYPES.get(media_type.strip().lower())
    if image_format is None:
        raise NotAcceptable("rendered frames are available as image/jpeg or image/png")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise BadRequest("quality must be an integer from 1 to 100")
    header = read_pixel_header(fp)
    if header.number_of_frames == 0:
        raise NotAcceptable("the instance has no pixel data to render")
    check_frame_number(number, header.number_of_frames)
    if tsx.is_encapsulated(header.transfer_syntax) and not tsx.can_decode(header.transfer_syntax):
        raise NotAcceptable("frames in this transfer syntax cannot be rendered by this server")
    fp.seek(0)
    try:
        # pixel_array() parses a file itself, but not a deflated one: give it the inflated data set
        ts = tsx.get(header.transfer_syntax)
        source: BinaryIO | Dataset = dcmread(fp, force=True) if ts is not None and ts.deflated else fp
        frame = pixel_array(source, index=number - 1, as_rgb=True)
    except Exception as exc:
        logger.warning("decoding a frame to render failed: %s", type(exc).__name__)
        raise PixelDataError("the frame cannot be decoded") from exc
    ds = header.dataset
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    interpretation = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if samples == 3:
        pixels = _colour(frame, ds)
    elif samples != 1:
        raise NotAcceptable("frames with this number of samples per pixel cannot be rendered")
    elif interpretation == "PALETTE COLOR":
        pixels = _palette(frame, ds)
    else:
        pixels = _grey(frame, _frame_view(ds, number - 1), interpretation)
    out = io.BytesIO()
    image = Image.fromarray(pixels)
    if image_format == "JPEG":
        image.save(out, format="JPEG", quality=quality)
    else:
        image.save(out, format="PNG")
    return out.getvalue()


def _frame_view(ds: Dataset, index: int) -> Dataset:
    """The attributes that transform frame `index`: top level, then shared, then per-frame groups."""
    view = Dataset()
    for keyword in _COPIED:
        if keyword in ds:
            view.add(ds[keyword])
    groups: list[Dataset] = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for keyword in _GROUPS:
            items = group.get(keyword)
            if items:
                for elem in items[0]:
                    view.add(elem)
    return view


def _grey(frame: NDArray[Any], view: Dataset, interpretation: str) -> NDArray[np.uint8]:
    values = np.asarray(apply_modality_lut(frame, view), dtype=np.float64)
    out = _voi(values, view)
    if interpretation == "MONOCHROME1" or str(view.get("PresentationLUTShape", "")) == "INVERSE":
        out = 255.0 - out
    return np.asarray(np.clip(np.rint(out), 0, 255), dtype=np.uint8)


def _voi(values: Floats, view: Dataset) -> Floats:
    """Values of interest mapped to 0..255 (floats)."""
    luts = view.get("VOILUTSequence")
    if luts and "LUTData" in luts[0] and "LUTDescriptor" in luts[0]:
        return _lookup(values, luts[0])
    window = _first_window(view)
    if window is not None:
        return _window(values, *window, str(view.get("VOILUTFunction", "LINEAR")).strip().upper())
    return _stretch(values, float(values.min()), float(values.max()))


def _lookup(values: Floats, item: Dataset) -> Floats:
    """PS3.3 C.11.2.1.1: a VOI LUT; inputs below/above its range take the first/last entry."""
    entries, first = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
    if first >= 32768 and float(values.min(initial=0.0)) < 0:
        first -= 65536  # read as US, but signed inputs need it as SS
    data = item.LUTData
    table = np.asarray(data if not isinstance(data, bytes) else np.frombuffer(data, "<u2"), np.float64)
    table = table.reshape(-1)[:entries]
    indices = np.clip(np.rint(values) - first, 0, len(table) - 1).astype(np.int64)
    return _stretch(table[indices], float(table.min()), float(table.max()))


def _first_window(view: Dataset) -> tuple[float, float] | None:
    center, width = view.get("WindowCenter"), view.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c = float(center[0] if isinstance(center, MultiValue | list | tuple) else center)
        w = float(width[0] if isinstance(width, MultiValue | list | tuple) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (c, w) if w > 0 else None


def _window(values: Floats, center: float, width: float, function: str) -> Floats:
    """PS3.3 C.11.2.1.2 windowing onto 0..255."""
    if function == "SIGMOID":
        result: Floats = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        return result
    if function == "LINEAR_EXACT":
        return np.clip(((values - center) / width + 0.5) * 255.0, 0.0, 255.0)
    if width < 1:
        width = 1.0
    if width == 1:
        return np.where(values <= center - 0.5, 0.0, 255.0)
    return np.clip(((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0, 0.0, 255.0)


def _stretch(values: Floats, low: float, high: float) -> Floats:
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _colour(frame: NDArray[Any], ds: Dataset) -> NDArray[np.uint8]:
    """RGB samples (pydicom has converted YBR) narrowed to 8 bits by Bits Stored."""
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise NotAcceptable("this colour frame layout cannot be rendered")
    bits = int(ds.get("BitsStored", 8) or 8)
    wide = frame.astype(np.int64)
    if frame.dtype != np.uint8 and bits > 8:
        wide >>= bits - 8
    return np.asarray(np.clip(wide, 0, 255), dtype=np.uint8)


def _palette(frame: NDArray[Any], ds: Dataset) -> NDArray[np.uint8]:
    rgb = np.asarray(apply_color_lut(frame, ds))
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    bits = int(descriptor[2]) if descriptor else 8
    wide = rgb.astype(np.int64)
    if bits > 8 or int(wide.max(initial=0)) > 255:
        wide >>= 8
    return np.asarray(np.clip(wide, 0, 255), dtype=np.uint8)
