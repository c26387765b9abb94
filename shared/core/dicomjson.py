"""DICOM JSON (PS3.18 Annex F) for stored metadata, with BulkDataURI for large binary values.

Metadata is written once at store time. A BulkDataURI is stored relative to its instance, behind a
placeholder, and made absolute when served (`absolutize`), so the stored JSON does not depend on the
host name a client happened to use.
"""

from __future__ import annotations

import json
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from shared.core.model import DicomJson

PIXEL_DATA = 0x7FE00010
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW", "US or SS or OW"}
_PIXEL_DATA_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
# Served as bulk data whatever their size: viewers (OHIF) fetch LUT data through its BulkDataURI.
_ALWAYS_BULK = {0x00281201, 0x00281202, 0x00281203, 0x00281221, 0x00281222, 0x00281223, 0x00283006}
BULK_PLACEHOLDER = "@@INSTANCE@@"
_PLACEHOLDER_JSON = f'"BulkDataURI": "{BULK_PLACEHOLDER}'


def tag_key(tag: int) -> str:
    return f"{tag:08X}"


def element_to_json(elem: DataElement, path: str, threshold: int) -> dict[str, Any]:
    """One element as DICOM JSON; binary values above `threshold` bytes become a BulkDataURI."""
    vr = str(elem.VR)
    if vr == "SQ":
        items = []
        for index, item in enumerate(elem.value or ()):
            items.append(dataset_to_json(item, threshold, f"{path}{tag_key(elem.tag)}/{index}/"))
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    if (
        vr in _BINARY_VRS
        and not elem.is_empty
        and (len(elem.value) > threshold or int(elem.tag) in _ALWAYS_BULK)
    ):
        return {
            "vr": vr if " " not in vr else "OW",
            "BulkDataURI": f"{BULK_PLACEHOLDER}/bulk/{path}{tag_key(elem.tag)}",
        }
    result: dict[str, Any] = elem.to_json_dict(None, 0)
    return result


def dataset_to_json(ds: Dataset, threshold: int, path: str = "") -> DicomJson:
    """Top-level or nested dataset as DICOM JSON; group 0002 and group lengths are left out."""
    out: DicomJson = {}
    for elem in ds:
        tag = int(elem.tag)
        if elem.tag.group == 0x0002 or elem.tag.element == 0x0000:
            continue
        if not path and tag in _PIXEL_DATA_TAGS:
            continue
        out[tag_key(tag)] = element_to_json(elem, path, threshold)
    return out


def pixel_data_json(vr: str) -> dict[str, Any]:
    """Pixel Data is never inlined: it is served through its BulkDataURI (and the frames resource)."""
    return {"vr": vr, "BulkDataURI": f"{BULK_PLACEHOLDER}/bulk/{tag_key(PIXEL_DATA)}"}


def dumps(doc: DicomJson) -> bytes:
    # `separators` must keep the `"BulkDataURI": "` shape that `absolutize` looks for.
    return json.dumps(doc, ensure_ascii=False, separators=(", ", ": ")).encode("utf-8")


def absolutize(stored: bytes, instance_url: str) -> bytes:
    """Replace the BulkDataURI placeholder of stored JSON with the instance's absolute URL.

    The placeholder is only found after the structural `"BulkDataURI": "` sequence, which no
    string value can produce (quotes inside values are escaped), so values are never altered.
    """
    if _PLACEHOLDER_JSON.encode() not in stored:
        return stored
    replacement = f'"BulkDataURI": "{instance_url}'.encode()
    return stored.replace(_PLACEHOLDER_JSON.encode(), replacement)


def parse_bulk_path(path: str) -> tuple[int, ...]:
    """Parse `7FE00010` or `00540016/0/00181072` into a path of (tag, item index) steps.

    Returns a tuple of tags and indexes alternating: (tag, index, tag, ..., tag).
    Raises ValueError on anything else.
    """
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) % 2 == 0:
        raise ValueError("a bulk data path is tag(/item/tag)*")
    steps: list[int] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if len(part) != 8:
                raise ValueError("tags are 8 hexadecimal digits")
            steps.append(int(Tag(int(part, 16))))
        else:
            if not part.isdigit():
                raise ValueError("item indexes are decimal numbers")
            steps.append(int(part))
    return tuple(steps)


def first_value(attrs: DicomJson, tag: str) -> Any:
    """The first value of an attribute in DICOM JSON, PN as its Alphabetic string; None if absent."""
    elem = attrs.get(tag)
    if not elem:
        return None
    values = elem.get("Value")
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict):
        return value.get("Alphabetic")
    return value
