"""One image in every transfer syntax: the MR_small and emri_small families, each file stored as a
copy under new UIDs (the originals share UIDs, so only one of each is in the shared corpus).

All are lossless encodings of the same pixels, so whatever the server hands out - the instance as
stored, the instance in Explicit VR Little Endian, or its frames decoded - must decode to the pixels
of the Explicit VR Little Endian original. 16-bit big endian (MR_small_bigendian) is the case
where a server has to swap bytes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.e2e import samples
from tests.e2e.conftest import DevHost
from tests.e2e.wire import ACCEPT_AS_STORED, instance_url, raw_parts

pytestmark = pytest.mark.e2e

FAMILIES = {
    "mr/MR_small.dcm": [
        "mr/MR_small_implicit.dcm",
        "mr/MR_small_bigendian.dcm",
        "mr/MR_small_RLE.dcm",
        "mr/MR_small_jp2klossless.dcm",
        "mr/MR_small_jpeg_ls_lossless.dcm",
    ],
    "mr/emri_small.dcm": ["mr/emri_small_RLE.dcm", "mr/emri_small_jpeg_2k_lossless.dcm"],
}
VARIANTS = {variant: reference for reference, variants in FAMILIES.items() for variant in variants}


@dataclass(frozen=True, slots=True)
class Copy:
    ds: Dataset  # as the server received it
    sent: bytes
    pixels: np.ndarray  # the reference (Explicit VR Little Endian) file's pixels


@pytest.fixture(scope="module")
def copies(client: DICOMwebClient) -> Iterator[dict[str, Copy]]:
    study = generate_uid()
    stored: dict[str, Copy] = {}
    datasets = []
    for name, reference in VARIANTS.items():
        ds = samples.read(name)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        with io.BytesIO() as buffer:
            pydicom.dcmwrite(buffer, ds)
            sent = buffer.getvalue()
        datasets.append(ds)
        stored[name] = Copy(pydicom.dcmread(io.BytesIO(sent)), sent, samples.read(reference).pixel_array)
    response = client.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == len(datasets)
    yield stored
    client.delete_study(study)


NAMES = list(VARIANTS)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_every_syntax_is_stored_as_sent_and_decodes_to_the_reference_pixels(
    client: DICOMwebClient, dev_host: DevHost, copies: dict[str, Copy], name: str
) -> None:
    copy = copies[name]
    _, parts = raw_parts(client, instance_url(dev_host.url, copy.ds), ACCEPT_AS_STORED)
    assert parts == [copy.sent]
    assert np.array_equal(copy.ds.pixel_array, copy.pixels)  # the samples themselves agree


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_every_syntax_transcodes_to_explicit_vr_little_endian_with_the_reference_pixels(
    client: DICOMwebClient, copies: dict[str, Copy], name: str
) -> None:
    ds = copies[name].ds
    got = client.retrieve_instance(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        media_types=(("application/dicom", ExplicitVRLittleEndian),),
    )
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(got.pixel_array, copies[name].pixels)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_every_frame_of_every_syntax_decodes_to_the_reference_pixels(
    client: DICOMwebClient, copies: dict[str, Copy], name: str
) -> None:
    ds, pixels = copies[name].ds, copies[name].pixels
    count = int(ds.get("NumberOfFrames", 1) or 1)
    numbers = list(range(count, 0, -1))  # last first: the order asked is the order answered
    frames = client.retrieve_instance_frames(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        numbers,
        media_types=(("application/octet-stream", ExplicitVRLittleEndian),),
    )
    assert len(frames) == count
    for number, data in zip(numbers, frames, strict=True):
        expected = pixels[number - 1] if count > 1 else pixels
        got = np.frombuffer(data, expected.dtype.newbyteorder("<")).reshape(expected.shape)
        assert np.array_equal(got, expected), f"frame {number}"


@pytest.mark.parametrize("name", [n for n in NAMES if "RLE" in n or "jp" in n], ids=lambda n: n)
def test_compressed_frames_as_stored_are_the_fragments(
    client: DICOMwebClient, copies: dict[str, Copy], name: str
) -> None:
    ds = copies[name].ds
    count = int(ds.get("NumberOfFrames", 1) or 1)
    frames = client.retrieve_instance_frames(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        list(range(1, count + 1)),
        media_types=(("application/octet-stream", "*"),),
    )
    assert frames == list(generate_frames(ds.PixelData, number_of_frames=count))
