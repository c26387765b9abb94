"""DICOM JSON (PS3.18 Annex F) for stored metadata, with BulkDataURI for large binary values.

Metadata is written once at store time. A BulkDataURI is stored relative to its instance, behind a
placeholder, and made absolute when served (`absolutize`), so the stored JSON does not depend on the
host name a client happened to use.

Elements that `dcmread` left raw are converted from their bytes here when the result is certain to
be what pydicom's conversion (`Dataset.__getitem__` then `DataElement.to_json_dict`) would give;
pydicom's per-element conversion was a third of a STOW's CPU. Anything else still goes through
pydicom, element by element (`_dataset_to_json_pydicom` is that path alone, the reference).
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Callable
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.hooks import hooks, raw_element_value, raw_element_vr
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
    return _element_to_json(elem, path, threshold, dataset_to_json)


def _element_to_json(
    elem: DataElement, path: str, threshold: int, items_to_json: Callable[[Dataset, int, str], DicomJson]
) -> dict[str, Any]:
    vr = str(elem.VR)
    if vr == "SQ":
        items = []
        for index, item in enumerate(elem.value or ()):
            items.append(items_to_json(item, threshold, f"{path}{tag_key(elem.tag)}/{index}/"))
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
    if not _raw_conversion_is_pydicoms():
        return _dataset_to_json_pydicom(ds, threshold, path)
    text_encoding = _text_encoding(ds)
    elements = {int(tag): elem for tag, elem in ds.items()}  # as stored: raw until first accessed
    out: DicomJson = {}
    for tag in sorted(elements):
        if tag >> 16 == 0x0002 or not tag & 0xFFFF or (not path and tag in _PIXEL_DATA_TAGS):
            continue
        key = f"{tag:08X}"
        elem = elements[tag]
        if isinstance(elem, RawDataElement):
            converted = _raw_to_json(elem, text_encoding, threshold, path + key)
            if converted is not None:
                out[key] = converted
                continue
        out[key] = _element_to_json(ds[tag], path, threshold, dataset_to_json)
    return out


def _dataset_to_json_pydicom(ds: Dataset, threshold: int, path: str = "") -> DicomJson:
    """`dataset_to_json` through pydicom's element conversion only: the reference of the raw path."""
    out: DicomJson = {}
    for elem in ds:
        tag = int(elem.tag)
        if elem.tag.group == 0x0002 or elem.tag.element == 0x0000:
            continue
        if not path and tag in _PIXEL_DATA_TAGS:
            continue
        out[tag_key(tag)] = _element_to_json(elem, path, threshold, _dataset_to_json_pydicom)
    return out


# --- Raw elements straight to DICOM JSON -------------------------------------------------------
#
# Each converter mirrors pydicom 3's `values.convert_value` for its VR followed by
# `DataElement.to_json_dict` (empty values, VM, `jsonrep.convert_to_python_number`), and answers
# None wherever pydicom would warn, retry other VRs, raise, or correct the value, so that element
# goes through pydicom instead. Big endian, deferred, undefined-length, UN, SQ and ambiguous-VR
# elements always do.

# Text VRs whose characters depend on (0008,0005): decoded here only for one of these encodings
# (pydicom's Python names for no value / ISO_IR 6, ISO_IR 100 and ISO_IR 192) and no escape byte.
_PLAIN_ENCODINGS = frozenset({"iso8859", "latin_1", "UTF8"})
_ESC = b"\x1b"
# Values pydicom changes after conversion (hooks.raw_element_value: first value made unsigned).
_LUT_DESCRIPTORS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})
# An IS that Python's int() and float() read alike (15 digits stay exact as a float).
_PLAIN_IS = re.compile(r" *[+-]?[0-9]{1,15} *")
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "SV": "q", "UV": "Q", "FL": "f", "FD": "d"}
_NUMBER_SIZES = {vr: struct.calcsize("<" + code) for vr, code in _NUMBERS.items()}
_RAW_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})


def _raw_conversion_is_pydicoms() -> bool:
    """Whether pydicom's raw conversion runs with the defaults the raw path mirrors.

    Only under `reading_validation_mode = IGNORE` (shared.bootstrap.configure_pydicom), where
    pydicom neither warns about nor rejects values, and without conversion hooks or options that
    change value types.
    """
    return (
        config.settings.reading_validation_mode == config.IGNORE
        and config.data_element_callback is None
        and hooks.raw_element_vr is raw_element_vr
        and hooks.raw_element_value is raw_element_value
        and not hooks.raw_element_kwargs
        and not config.use_DS_decimal
        and not config.use_DS_numpy
        and not config.use_IS_numpy
        and not config.datetime_conversion
        and not config.use_none_as_empty_text_VR_value
    )


def _text_encoding(ds: Dataset) -> str | None:
    """The Python encoding pydicom decodes this dataset's SH/LO/ST/LT/UC/UT/PN with, if plain."""
    encodings = ds.original_character_set  # set by dcmread on every dataset and sequence item
    if isinstance(encodings, str):
        encodings = [encodings]
    if encodings and len(encodings) == 1 and encodings[0] in _PLAIN_ENCODINGS:
        return encodings[0]
    return None


def _raw_to_json(
    raw: RawDataElement, text_encoding: str | None, threshold: int, bulk_path: str
) -> dict[str, Any] | None:
    """The DICOM JSON of a raw element, or None to leave it to pydicom."""
    if not raw.is_little_endian or raw.length == 0xFFFFFFFF:
        return None
    vr = raw.VR
    if vr is None:  # implicit VR: pydicom takes the dictionary's VR (ambiguous ones are not handled)
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            return None
    if raw.length == 0:  # pydicom's empty value for the VR: no "Value"
        return {"vr": vr} if vr in _CONVERTERS or vr in _RAW_BINARY_VRS else None
    value = raw.value
    if value is None:  # deferred read
        return None
    if vr in _RAW_BINARY_VRS:
        if len(value) > threshold or raw.tag in _ALWAYS_BULK:
            return {"vr": vr, "BulkDataURI": f"{BULK_PLACEHOLDER}/bulk/{bulk_path}"}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("utf-8")}
    convert = _CONVERTERS.get(vr)
    if convert is None or raw.tag in _LUT_DESCRIPTORS:
        return None
    values = convert(value, text_encoding, vr)
    if values is None:
        return None
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _one_or_many(items: list[str]) -> list[str]:
    # A single empty string is an empty element; several values are kept, empty ones included.
    return items if len(items) > 1 or items[0] else []


def _decode(value: bytes, encoding: str | None) -> str | None:
    if encoding is None or _ESC in value:
        return None
    try:
        return value.decode(encoding)
    except UnicodeDecodeError:  # pydicom warns and decodes with replacement characters
        return None


def _string(value: bytes, encoding: str | None, vr: str) -> list[Any] | None:
    # AS, CS, DA, DT, TM (values.convert_string, multi_string)
    return _one_or_many(value.decode("latin-1").rstrip(" \x00").split("\\"))


def _ae(value: bytes, encoding: str | None, vr: str) -> list[Any] | None:
    return _one_or_many([item.strip() for item in value.decode("latin-1").split("\\")])


def _ui(value: bytes, encoding: str | None, vr: str) -> list[Any] | None:
    # convert_UI then UID(), which strips each value
    return _one_or_many([item.strip() for item in value.decode("latin-1").rstrip(" \x00").split("\\")])


def _ur(value: bytes, encoding: str | None, vr: str) -> list[Any] | None:
    text = value.decode("latin-1").rstrip()
    return [text] if text else []


def _text(value: bytes, encoding: str | None, vr: str) -> list[Any] | None:
    # SH, LO, UC (values.convert_text)
    text = _decode(value, encoding)
    if text is None:
        return None
    return _one_or_many([item.rstrip("\0 ") for item in text.split("\\")])


def _single_text(value: bytes, encoding: str | None, vr: str) -> list[Any] | None:
    # ST, LT, UT (values.convert_single_string): backslashes are part of the text
    text = _decode(value, encoding)
    if text is None:
        return None
    text = text.rstrip("\0 ")
    return [text] if text else []


def _pn(value: bytes, encoding: str | None, vr: str) -> list[Any] | None:
    # values.convert_PN, PersonName components (trailing empty groups dropped), to_json_dict
    text = _decode(value.rstrip(b"\x00 "), encoding)
    if text is None:
        return None
    names = text.split("\\")
    out = []
    for name in names:
        groups = name.split("=")
        while groups and not groups[-1]:
            groups.pop()
        if not groups:
            if len(names) > 1:
                return None  # pydicom fails on an empty name among several
            return []
        person = {"Alphabetic": groups[0]}
        if len(groups) > 1:
            person["Ideographic"] = groups[1]
        if len(groups) > 2:
            person["Phonetic"] = groups[2]
        out.append(person)
    return out


def _ds(value: bytes, encoding: str | None, vr: str) -> list[Any] | None:
    # convert_DS_string: DSfloat per value ("" when blank), then float() in to_json_dict
    items = value.decode("latin-1").strip().rstrip(" \x00").split("\\")
    if len(items) == 1 and not items[0]:
        return []
    numbers = []
    for item in items:
        if not item.strip():
            return None  # pydicom fails on float("")
        try:
            numbers.append(float(item))
        except ValueError:  # pydicom retries other VRs
            return None
    return numbers


def _is(value: bytes, encoding: str | None, vr: str) -> list[Any] | None:
    # convert_IS_string: IS per value ("" when blank; ISfloat for "1.5"), then int() in to_json_dict
    items = value.decode("latin-1").rstrip(" \x00").split("\\")
    if len(items) == 1 and not items[0]:
        return []
    if not all(_PLAIN_IS.fullmatch(item) for item in items):
        return None
    return [int(item) for item in items]


def _at(value: bytes, encoding: str | None, vr: str) -> list[Any] | None:
    if len(value) % 4:
        return None  # pydicom logs and truncates
    words = struct.unpack(f"<{len(value) // 2}H", value)
    return [f"{words[i] << 16 | words[i + 1]:08X}" for i in range(0, len(words), 2)]


def _numbers(value: bytes, encoding: str | None, vr: str) -> list[Any] | None:
    size = _NUMBER_SIZES[vr]
    if len(value) % size:
        return None  # pydicom raises BytesLengthException
    return list(struct.unpack(f"<{len(value) // size}{_NUMBERS[vr]}", value))


_Converter = Callable[[bytes, str | None, str], list[Any] | None]
_CONVERTERS: dict[str, _Converter] = {
    **dict.fromkeys(("AS", "CS", "DA", "DT", "TM"), _string),
    "AE": _ae,
    "UI": _ui,
    "UR": _ur,
    **dict.fromkeys(("SH", "LO", "UC"), _text),
    **dict.fromkeys(("ST", "LT", "UT"), _single_text),
    "PN": _pn,
    "DS": _ds,
    "IS": _is,
    "AT": _at,
    **dict.fromkeys(_NUMBERS, _numbers),
}


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
