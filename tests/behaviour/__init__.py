"""Behaviour suite: the DICOMweb server through real HTTP against the dev host, over every backend.

Helpers shared by the test modules live here (fixtures live in conftest.py): building test
instances from the sample files with fresh UIDs, multipart bodies as clients send them, and an
independent multipart reader for responses (the suite never uses the server's own code).
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

DATA = Path(__file__).resolve().parent.parent / "data"
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"

# Store response tags (PS3.18 10.5.3)
RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"


@dataclass(frozen=True)
class Instance:
    """One test instance: its bytes as sent and the UIDs that locate it."""

    data: bytes
    study: str
    series: str
    sop: str
    sop_class: str
    transfer_syntax: str

    @property
    def path(self) -> str:
        return f"/studies/{self.study}/series/{self.series}/instances/{self.sop}"

    def dataset(self) -> Dataset:
        return pydicom.dcmread(io.BytesIO(self.data))


def unique(prefix: str = "T") -> str:
    """A short unique text for attributes that scope a test's searches (PatientID, ...)."""
    return f"{prefix}{uuid.uuid4().hex[:12].upper()}"


def fresh(
    source: str | Path | Dataset,
    *,
    study: str | None = None,
    series: str | None = None,
    **attributes: Any,
) -> Instance:
    """A copy of a sample file (path relative to tests/data) with new UIDs and `attributes` set.

    The transfer syntax and the pixel data are kept as they are; `study`/`series` put the copy
    into an existing study or series.
    """
    ds = source if isinstance(source, Dataset) else pydicom.dcmread(DATA / source)
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return Instance(
        data=buffer.getvalue(),
        study=str(ds.StudyInstanceUID),
        series=str(ds.SeriesInstanceUID),
        sop=str(ds.SOPInstanceUID),
        sop_class=str(ds.SOPClassUID),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
    )


def same_uids(original: Instance, **attributes: Any) -> Instance:
    """Other bytes with the UIDs of `original` (a duplicate, or a replacement)."""
    ds = original.dataset()
    for keyword, text in attributes.items():
        setattr(ds, keyword, text)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return Instance(
        buffer.getvalue(),
        original.study,
        original.series,
        original.sop,
        original.sop_class,
        original.transfer_syntax,
    )


def multipart_body(
    parts: Sequence[bytes],
    *,
    type_param: str | None = '"application/dicom"',
    part_type: str | None = DICOM,
    boundary: str | None = None,
    close: bool = True,
) -> tuple[str, bytes]:
    """(Content-Type, body) of a multipart/related request.

    `type_param` is written as given (quoted, unquoted) or left out (None); `part_type` is each
    part's Content-Type (None: no part headers); `close=False` leaves out the closing delimiter.
    """
    boundary = boundary or f"b-{uuid.uuid4().hex}"
    content_type = "multipart/related"
    if type_param is not None:
        content_type += f"; type={type_param}"
    content_type += f"; boundary={boundary}"
    out = io.BytesIO()
    for part in parts:
        out.write(f"--{boundary}\r\n".encode())
        if part_type is not None:
            out.write(f"Content-Type: {part_type}\r\n".encode())
        out.write(b"\r\n")
        out.write(part)
        out.write(b"\r\n")
    if close:
        out.write(f"--{boundary}--\r\n".encode())
    return content_type, out.getvalue()


def _param(content_type: str, name: str) -> str | None:
    match = re.search(rf'(?:^|;)\s*{name}\s*=\s*("([^"]*)"|[^;\s]+)', content_type, re.IGNORECASE)
    if match is None:
        return None
    return match.group(2) if match.group(2) is not None else match.group(1)


@dataclass(frozen=True)
class Part:
    headers: dict[str, str]  # lower-case names
    data: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def transfer_syntax(self) -> str | None:
        return _param(self.content_type, "transfer-syntax")


def parse_multipart(content_type: str, body: bytes) -> list[Part]:
    """The parts of a multipart/related response (a reader independent of the server's)."""
    assert content_type.lower().startswith("multipart/related"), content_type
    boundary = _param(content_type, "boundary")
    assert boundary, f"no boundary in {content_type!r}"
    delimiter = b"--" + boundary.encode()
    assert body.startswith(delimiter) or (b"\r\n" + delimiter) in body, "no first delimiter"
    start = body.index(delimiter)
    pieces = body[start + len(delimiter) :].split(b"\r\n" + delimiter)
    assert pieces[-1].startswith(b"--"), "no closing delimiter"
    parts: list[Part] = []
    for piece in pieces[:-1]:
        assert piece.startswith(b"\r\n"), "a delimiter must end its line"
        head, sep, data = piece[2:].partition(b"\r\n\r\n")
        if not sep and head == b"":
            data = b""
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        parts.append(Part(headers, data))
    return parts


def param(content_type: str, name: str) -> str | None:
    return _param(content_type, name)


def sequence_items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(body.get(tag, {}).get("Value", []))


def value(attrs: dict[str, Any], tag: str) -> Any:
    """The first value of a DICOM JSON attribute (None when absent or empty)."""
    values = attrs.get(tag, {}).get("Value") or [None]
    return values[0]


def values(results: Iterable[dict[str, Any]], tag: str) -> list[Any]:
    return [value(result, tag) for result in results]


def expected_frames(ds: Dataset) -> list[bytes]:
    """Each frame as a client should receive it in the stored syntax: encapsulated frames as
    pydicom splits them, native frames as slices of Pixel Data in little endian."""
    count = int(ds.get("NumberOfFrames") or 1)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    samples = int(ds.get("SamplesPerPixel", 1))
    itemsize = int(ds.BitsAllocated) // 8
    size = int(ds.Rows) * int(ds.Columns) * samples * itemsize
    frames = [bytes(ds.PixelData[i * size : (i + 1) * size]) for i in range(count)]
    if not ds.file_meta.TransferSyntaxUID.is_little_endian and itemsize > 1:
        frames = [np.frombuffer(f, dtype=f">u{itemsize}").astype(f"<u{itemsize}").tobytes() for f in frames]
    return frames
