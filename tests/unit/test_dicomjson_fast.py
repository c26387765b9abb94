"""DICOM JSON from raw elements: exactly what pydicom's element conversion gives, only faster.

`dataset_to_json` converts the elements `dcmread` left raw straight from their bytes and leaves the
rest to pydicom; `_dataset_to_json_pydicom` is pydicom's conversion alone. Both are run here on
datasets read the way the store reads them (`dcmread(fp, stop_before_pixels=True)`), each on its
own fresh read, and must give the same JSON text (same keys and order, ints vs floats, strings vs
null) or fail the same way, with the same warnings.
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom import config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from shared.core.dicomjson import BULK_PLACEHOLDER, _dataset_to_json_pydicom, dataset_to_json

DATA = Path(__file__).resolve().parents[1] / "data"
THRESHOLDS = (0, 1024, 2**31)


def _readable_samples() -> list[tuple[Path, bool]]:
    """Every sample pydicom reads as the store does, plus those without file meta read with `force`."""
    found = []
    for path in sorted(DATA.rglob("*.dcm")):
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
            found.append((path, False))
        except InvalidDicomError:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if "SOPClassUID" in ds:  # a dataset without meta, not garbage
                found.append((path, True))
    return found


SAMPLES = _readable_samples()


def _outcome(data: bytes, convert: object, threshold: int, force: bool = False) -> tuple[str, list[str]]:
    """JSON text of the conversion (or the exception type) and the warnings it gave."""
    assert callable(convert)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=force)
        try:
            result = json.dumps(convert(ds, threshold))
        except Exception as exc:
            result = f"raised {type(exc).__name__}"
    return result, [str(w.message) for w in caught]


def _both(
    data: bytes, threshold: int, force: bool = False
) -> tuple[tuple[str, list[str]], tuple[str, list[str]]]:
    return (
        _outcome(data, dataset_to_json, threshold, force),
        _outcome(data, _dataset_to_json_pydicom, threshold, force),
    )


def test_every_readable_sample_is_in_the_comparison() -> None:
    assert len(SAMPLES) >= 75  # the samples folder holds ~80 DICOM files, a few made unreadable
    assert sum(force for _, force in SAMPLES) == 3  # made_no_preamble, ExplVR_BigEndNoMeta, rtstruct


@pytest.mark.parametrize(("sample", "force"), SAMPLES, ids=[str(p.relative_to(DATA)) for p, _ in SAMPLES])
def test_sample_json_is_pydicoms(sample: Path, force: bool) -> None:
    data = sample.read_bytes()
    for threshold in THRESHOLDS:
        fast, reference = _both(data, threshold, force)
        assert fast == reference, f"threshold {threshold}"


def test_converted_elements_stay_raw_in_the_dataset() -> None:
    # The proof that the raw path ran: pydicom converts (and keeps) every element it touches.
    ds = pydicom.dcmread(DATA / "ct/CT_small.dcm", stop_before_pixels=True)
    doc = dataset_to_json(ds, 1024)
    assert doc["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}
    assert isinstance(ds.get_item(0x00100010, keep_deferred=True), RawDataElement)
    assert isinstance(ds.get_item(0x00280030, keep_deferred=True), RawDataElement)


def test_other_validation_modes_go_through_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under WARN or RAISE pydicom validates values on conversion; only IGNORE is mirrored.
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    ds = pydicom.dcmread(io.BytesIO(_part10([(0x00200013, "IS", b"7 ")])), stop_before_pixels=True)
    assert dataset_to_json(ds, 1024) == {"00200013": {"vr": "IS", "Value": [7]}}
    assert not isinstance(ds.get_item(0x00200013, keep_deferred=True), RawDataElement)


# --- Hand-made elements ---------------------------------------------------------------------------

_LONG_LENGTH_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
_UTF8 = (0x00080005, "CS", b"ISO_IR 192")


def _element(tag: int, vr: str, value: bytes, *, implicit: bool = False) -> bytes:
    """One little endian element holding exactly these value bytes (no padding, no checks)."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<L", len(value)) + value
    if vr in _LONG_LENGTH_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack("<L", len(value)) + value
    return head + vr.encode() + struct.pack("<H", len(value)) + value


def _part10(elements: list[tuple[int, str, bytes]], *, implicit: bool = False) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    fp = io.BytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta)
    fp.write(b"".join(_element(*elem, implicit=implicit) for elem in elements))
    return fp.getvalue()


def _item(*elements: tuple[int, str, bytes]) -> bytes:
    body = b"".join(_element(*elem) for elem in elements)
    return b"\xfe\xff\x00\xe0" + struct.pack("<L", len(body)) + body


_BLOB = bytes(range(256)) * 8  # 2048 bytes
_CASES: list[tuple[str, list[tuple[int, str, bytes]], int, dict[str, object] | None]] = [
    # (id, elements, threshold, expected JSON of the last element or None = "whatever pydicom says")
    ("DS 1.50", [(0x00180050, "DS", b"1.50")], 1024, {"vr": "DS", "Value": [1.5]}),
    ("DS minus zero", [(0x00180050, "DS", b"  -0 ")], 1024, {"vr": "DS", "Value": [-0.0]}),
    ("DS multi", [(0x00280030, "DS", b"0.5\\ 1e2 ")], 1024, {"vr": "DS", "Value": [0.5, 100.0]}),
    ("DS blank", [(0x00180050, "DS", b"  ")], 1024, {"vr": "DS"}),
    ("DS empty among several", [(0x00280030, "DS", b"1\\\\2")], 1024, None),
    ("DS not a number", [(0x00180050, "DS", b"1,5")], 1024, None),
    ("DS with NUL inside", [(0x00280030, "DS", b"1\0\\2")], 1024, None),
    ("IS with spaces", [(0x00200013, "IS", b" 12 \\-3 ")], 1024, {"vr": "IS", "Value": [12, -3]}),
    ("IS decimal", [(0x00200013, "IS", b"1.5 ")], 1024, {"vr": "IS", "Value": [1]}),
    ("IS huge", [(0x00200013, "IS", b"12345678901234567891")], 1024, None),
    ("IS empty among several", [(0x00200013, "IS", b"1\\\\2")], 1024, None),
    ("CS empty values", [(0x00080008, "CS", b"A\\\\B ")], 1024, {"vr": "CS", "Value": ["A", "", "B"]}),
    ("CS only separators", [(0x00080008, "CS", b"\\")], 1024, {"vr": "CS", "Value": ["", ""]}),
    ("CS leading space kept", [(0x00080060, "CS", b" CT ")], 1024, {"vr": "CS", "Value": [" CT"]}),
    ("AE stripped", [(0x00080054, "AE", b" AE1 \\ AE2")], 1024, {"vr": "AE", "Value": ["AE1", "AE2"]}),
    ("UI trailing null", [(0x00080018, "UI", b"1.2.3\0")], 1024, {"vr": "UI", "Value": ["1.2.3"]}),
    ("UR", [(0x00081190, "UR", b"http://h/x ")], 1024, {"vr": "UR", "Value": ["http://h/x"]}),
    ("LO values", [(0x00081030, "LO", b"a \0\\b\\")], 1024, {"vr": "LO", "Value": ["a", "b", ""]}),
    (
        "LO escape sequence",
        [(0x00080005, "CS", b"ISO_IR 100"), (0x00081030, "LO", b"a\x1b(Bb")],
        1024,
        {"vr": "LO", "Value": ["ab"]},
    ),
    ("LT keeps backslashes", [(0x00204000, "LT", b"a\\b \0")], 1024, {"vr": "LT", "Value": ["a\\b"]}),
    (
        "PN three groups",
        [_UTF8, (0x00100010, "PN", "Yamada^Tarou=山田^太郎=やまだ^たろう".encode())],
        1024,
        {
            "vr": "PN",
            "Value": [
                {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
            ],
        },
    ),
    ("PN only separators", [(0x00100010, "PN", b"==")], 1024, {"vr": "PN"}),
    (
        "PN two names",
        [(0x00081070, "PN", b"A^B\\=C ")],
        1024,
        {"vr": "PN", "Value": [{"Alphabetic": "A^B"}, {"Alphabetic": "", "Ideographic": "C"}]},
    ),
    ("PN empty among several", [(0x00081070, "PN", b"A\\\\B")], 1024, None),
    (
        "PN latin-1",
        [(0x00080005, "CS", b"ISO_IR 100"), (0x00100010, "PN", b"M\xfcller^J")],
        1024,
        {"vr": "PN", "Value": [{"Alphabetic": "Müller^J"}]},
    ),
    ("PN invalid UTF-8", [_UTF8, (0x00100010, "PN", b"M\xfcller")], 1024, None),
    (
        "PN escape sequence",
        [(0x00080005, "CS", b"\\ISO 2022 IR 87"), (0x00100010, "PN", b"\x1b$B;3ED\x1b(B")],
        1024,
        None,
    ),
    (
        "AT",
        [(0x00209165, "AT", b"\x18\x00\x10\x00\x20\x00\x13\x00")],
        1024,
        {"vr": "AT", "Value": ["00180010", "00200013"]},
    ),
    ("AT short", [(0x00209165, "AT", b"\x18\x00\x10\x00\x20\x00")], 1024, None),
    ("US multi", [(0x00280010, "US", b"\x00\x02\x01\x00")], 1024, {"vr": "US", "Value": [512, 1]}),
    ("US odd length", [(0x00280010, "US", b"\x00\x02\x01")], 1024, None),
    (
        "SS LUT descriptor",
        [(0x00283002, "SS", b"\x00\x80\x00\x00\x10\x00")],
        1024,
        {"vr": "SS", "Value": [32768, 0, 16]},
    ),
    ("FD", [(0x00189087, "FD", struct.pack("<d", 1.5))], 1024, {"vr": "FD", "Value": [1.5]}),
    ("FL", [(0x00189087, "FL", struct.pack("<2f", 0.25, -2))], 1024, {"vr": "FL", "Value": [0.25, -2.0]}),
    (
        "SV UV",
        [(0x00189087, "SV", struct.pack("<q", -(2**40))), (0x0018908A, "UV", struct.pack("<Q", 2**63))],
        1024,
        {"vr": "UV", "Value": [2**63]},
    ),
    (
        "OB inline",
        [(0x00091010, "OB", _BLOB)],
        4096,
        {"vr": "OB", "InlineBinary": base64.b64encode(_BLOB).decode()},
    ),
    (
        "OB bulk",
        [(0x00091010, "OB", _BLOB)],
        1024,
        {"vr": "OB", "BulkDataURI": f"{BULK_PLACEHOLDER}/bulk/00091010"},
    ),
    ("OB empty", [(0x00091010, "OB", b"")], 0, {"vr": "OB"}),
    (
        "OW always bulk",
        [(0x00281201, "OW", b"\x00\x01" * 4)],
        2**31,
        {"vr": "OW", "BulkDataURI": f"{BULK_PLACEHOLDER}/bulk/00281201"},
    ),
    ("UN public", [(0x00280010, "UN", b"\x00\x02")], 1024, {"vr": "US", "Value": [512]}),
    ("UN private", [(0x00091001, "UN", b"\x01\x02\x03\x04")], 1024, {"vr": "UN", "InlineBinary": "AQIDBA=="}),
    ("SQ with an empty item", [(0x00081115, "SQ", _item())], 1024, {"vr": "SQ", "Value": [{}]}),
    ("SQ empty", [(0x00081115, "SQ", b"")], 1024, {"vr": "SQ"}),
    (
        "SQ item values",
        [(0x00081115, "SQ", _item((0x00081150, "UI", b"1.2\0"), (0x00091010, "OB", b"\x01\x02")))],
        0,
        {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": ["1.2"]},
                    "00091010": {"vr": "OB", "BulkDataURI": f"{BULK_PLACEHOLDER}/bulk/00081115/0/00091010"},
                }
            ],
        },
    ),
    (
        "text VRs empty",
        [(0x00080020, "DA", b""), (0x00100010, "PN", b""), (0x00200013, "IS", b"")],
        1024,
        {"vr": "IS"},
    ),
]


@pytest.mark.parametrize(
    ("elements", "threshold", "expected"), [c[1:] for c in _CASES], ids=[c[0] for c in _CASES]
)
def test_hand_made_element(
    elements: list[tuple[int, str, bytes]], threshold: int, expected: dict[str, object] | None
) -> None:
    data = _part10(elements)
    fast, reference = _both(data, threshold)
    assert fast == reference
    if expected is not None:
        doc = dataset_to_json(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True), threshold)
        assert doc[f"{elements[-1][0]:08X}"] == expected


@pytest.mark.parametrize(
    ("tag", "value"),
    [(0x00280010, b"\x00\x02"), (0x00280106, b"\x00\x00"), (0x00100010, b"A^B=C"), (0x00091001, b"ab")],
    ids=["US", "US or SS", "PN", "private"],
)
def test_implicit_vr_element(tag: int, value: bytes) -> None:
    fast, reference = _both(_part10([(0x00280103, "US", b"\x01\x00"), (tag, "", value)], implicit=True), 1024)
    assert fast == reference


# Random values over the characters that matter to each conversion, for every VR the raw path reads.
_TEXT_ALPHABET = [bytes([c]) for c in b"170.-+e \\\0\t=^A\xe9\xc3"] + [b"\x1b(B"]
_TEXT_VRS = [
    "AE",
    "AS",
    "CS",
    "DA",
    "DS",
    "DT",
    "IS",
    "LO",
    "LT",
    "PN",
    "SH",
    "ST",
    "TM",
    "UC",
    "UI",
    "UR",
    "UT",
]
_BINARY_VRS = ["AT", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "OB", "OW"]


def _random_cases(seed: int, count: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        vr = rng.choice(_TEXT_VRS + _BINARY_VRS)
        if vr in _TEXT_VRS:
            value = b"".join(rng.choice(_TEXT_ALPHABET) for _ in range(rng.randint(0, 10)))
        else:
            value = bytes(rng.randrange(256) for _ in range(rng.choice((0, 2, 4, 6, 8, 16, 3))))
        cases.append((vr, value))
    return cases


@pytest.mark.parametrize(
    ("charset", "seed"),
    [(None, 1), (b"ISO_IR 100", 2), (b"ISO_IR 192", 3)],
    ids=["default", "latin-1", "utf-8"],
)
def test_random_values_convert_as_pydicom_does(charset: bytes | None, seed: int) -> None:
    mismatches = []
    for vr, value in _random_cases(seed, count=400):
        elements = [(0x00080005, "CS", charset)] if charset else []
        data = _part10([*elements, (0x00091010, vr, value)])
        fast, reference = _both(data, 4)
        if fast != reference:
            mismatches.append((vr, value, fast, reference))
    assert not mismatches
